package attest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newCA(t *testing.T) *testCA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "node CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{c, key}
}

func (ca *testCA) issue(t *testing.T, key crypto.Signer, cn string, isCA bool) *x509.Certificate {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(77), Subject: pkix.Name{CommonName: cn, Organization: []string{"Acme"}},
		DNSNames: []string{cn + ".nodes.example"}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: isCA}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// tlsPair returns the binding as seen by each end of fresh TLS 1.3
// connections over loopback.
func tlsPair(t *testing.T) (client, server []byte) {
	t.Helper()
	ca := newCA(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert := ca.issue(t, key, "srv", false)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if tc.Handshake() != nil {
			got <- nil
			return
		}
		cs := tc.ConnectionState()
		b, _ := X509PoPBinding(&cs)
		got <- b
		io.Copy(io.Discard, c)
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cs := conn.ConnectionState()
	client, err = X509PoPBinding(&cs)
	if err != nil {
		t.Fatal(err)
	}
	return client, <-got
}

func TestX509PoP(t *testing.T) {
	ca := newCA(t)
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	cliBinding, srvBinding := tlsPair(t)
	if string(cliBinding) != string(srvBinding) || len(cliBinding) != 32 {
		t.Fatal("the two ends of one connection derive different bindings")
	}
	otherCli, _ := tlsPair(t)
	if string(otherCli) == string(cliBinding) {
		t.Fatal("two connections share a binding")
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for name, key := range map[string]crypto.Signer{"ecdsa": ecKey, "rsa": rsaKey, "ed25519": edKey} {
		t.Run(name, func(t *testing.T) {
			leaf := ca.issue(t, key, "node-1", false)
			sig, err := SignX509PoP(key, cliBinding)
			if err != nil {
				t.Fatal(err)
			}
			res, err := VerifyX509PoP([][]byte{leaf.Raw}, sig, srvBinding, roots, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			fp := sha256.Sum256(leaf.Raw)
			if res.Fingerprint != hex.EncodeToString(fp[:]) {
				t.Fatal("fingerprint is not the leaf's SHA-256")
			}
			caFP := sha256.Sum256(ca.cert.Raw)
			for _, want := range []string{"x509pop:subject:cn:node-1", "x509pop:subject:o:Acme", "x509pop:san:dns:node-1.nodes.example",
				"x509pop:serialnumber:4d", "x509pop:ca:fingerprint:" + hex.EncodeToString(caFP[:])} {
				if !slices.Contains(res.Selectors, want) {
					t.Errorf("selectors %v lack %s", res.Selectors, want)
				}
			}
			// Replayed on another connection: refused.
			if _, err := VerifyX509PoP([][]byte{leaf.Raw}, sig, otherCli, roots, time.Now()); err == nil {
				t.Fatal("signature accepted for another connection's binding")
			}
		})
	}
	leaf := ca.issue(t, ecKey, "node-2", false)
	sig, _ := SignX509PoP(ecKey, cliBinding)
	wrongKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	wrongSig, _ := SignX509PoP(wrongKey, cliBinding)
	foreign := newCA(t).issue(t, ecKey, "node-3", false)
	caLeaf := ca.issue(t, ecKey, "node-4", true)
	for name, tc := range map[string]struct {
		chain [][]byte
		sig   []byte
		roots *x509.CertPool
		at    time.Time
		want  string
	}{
		"wrong key":      {[][]byte{leaf.Raw}, wrongSig, roots, time.Now(), "does not verify"},
		"untrusted CA":   {[][]byte{foreign.Raw}, sig, roots, time.Now(), "does not chain"},
		"expired":        {[][]byte{leaf.Raw}, sig, roots, time.Now().Add(3 * time.Hour), "does not chain"},
		"leaf is a CA":   {[][]byte{caLeaf.Raw}, sig, roots, time.Now(), "is a CA"},
		"no certificate": {nil, sig, roots, time.Now(), "want 1 to"},
		"garbage":        {[][]byte{[]byte("junk")}, sig, roots, time.Now(), "certificate 0"},
		"not enabled":    {[][]byte{leaf.Raw}, sig, nil, time.Now(), "not enabled"},
	} {
		if _, err := VerifyX509PoP(tc.chain, tc.sig, srvBinding, tc.roots, tc.at); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.want)
		}
	}
}

func TestUnixAttestsSelf(t *testing.T) {
	u := NewUnix()
	sels, err := u.Attest(context.Background(), PeerInfo{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())})
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	data, _ := os.ReadFile(exe)
	sum := sha256.Sum256(data)
	for _, want := range []string{
		"unix:uid:" + strconv.Itoa(os.Getuid()), "unix:gid:" + strconv.Itoa(os.Getgid()),
		"unix:path:" + exe, "unix:sha256:" + hex.EncodeToString(sum[:]),
	} {
		if !slices.Contains(sels, want) {
			t.Errorf("selectors %v lack %s", sels, want)
		}
	}
	if os.Getuid() == 0 && !slices.Contains(sels, "unix:user:root") {
		t.Errorf("selectors %v lack unix:user:root", sels)
	}
	// Cached: a second attestation hashes nothing new but answers the same.
	again, err := u.Attest(context.Background(), PeerInfo{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())})
	if err != nil || !slices.Equal(again, sels) {
		t.Fatalf("second attestation differs: %v %v", again, err)
	}
}

func TestUnixInvisiblePeerGetsCredentialsOnly(t *testing.T) {
	u := NewUnix()
	for _, pid := range []int32{0, 1 << 30} {
		sels, err := u.Attest(context.Background(), PeerInfo{PID: pid, UID: 4242, GID: 4343})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(sels, []string{"unix:uid:4242", "unix:gid:4343"}) {
			t.Fatalf("pid %d: %v", pid, sels)
		}
	}
}

func TestProcessStartTimeParsesOddNames(t *testing.T) {
	dir := t.TempDir()
	// A command name with spaces and a closing parenthesis.
	stat := "1234 (we (ird) name) S 1 1234 1234 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10"
	os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o600)
	got, err := processStartTime(dir)
	if err != nil || got != "987654" {
		t.Fatalf("start time = %q, %v", got, err)
	}
	os.WriteFile(filepath.Join(dir, "stat"), []byte("garbage"), 0o600)
	if _, err := processStartTime(dir); err == nil {
		t.Fatal("garbage stat accepted")
	}
}
