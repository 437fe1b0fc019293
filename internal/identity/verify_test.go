package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"io"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		URIs:      []*url.URL{td.ID().URL()},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key}
}

// goodLeaf is a conforming X.509-SVID template.
func goodLeaf(id string) *x509.Certificate {
	u, _ := url.Parse(id)
	return &x509.Certificate{
		SerialNumber: big.NewInt(2), URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
}

func (ca *testCA) issue(t *testing.T, tmpl *x509.Certificate) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

// TestVerifyX509SVIDRules: one conforming SVID passes; each violation of an
// X509-SVID rule is rejected with a message naming it.
func TestVerifyX509SVIDRules(t *testing.T) {
	ca := newTestCA(t)
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.cert})
	good, _ := ca.issue(t, goodLeaf("spiffe://example.org/w"))
	if id, err := VerifyX509SVID([]*x509.Certificate{good}, bundle, time.Now(), x509.ExtKeyUsageClientAuth); err != nil || id.String() != "spiffe://example.org/w" {
		t.Fatalf("conforming SVID rejected: %v", err)
	}
	other := newTestCA(t)
	for _, tc := range []struct {
		name   string
		mutate func(*x509.Certificate)
		signer *testCA
		at     time.Time
		usage  x509.ExtKeyUsage
		want   string
	}{
		{name: "no URI SAN", mutate: func(c *x509.Certificate) { c.URIs = nil }, want: "no URI SAN"},
		{name: "two URI SANs", mutate: func(c *x509.Certificate) {
			u, _ := url.Parse("spiffe://example.org/other")
			c.URIs = append(c.URIs, u)
		}, want: "more than one URI SAN"},
		{name: "not a SPIFFE URI", mutate: func(c *x509.Certificate) { c.URIs[0], _ = url.Parse("https://example.org/w") }, want: "scheme"},
		{name: "root path", mutate: func(c *x509.Certificate) { c.URIs[0], _ = url.Parse("spiffe://example.org") }, want: "no path"},
		{name: "CA flag", mutate: func(c *x509.Certificate) { c.IsCA = true }, want: "CA flag"},
		{name: "keyCertSign", mutate: func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }, want: "KeyCertSign"},
		{name: "cRLSign", mutate: func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCRLSign }, want: "KeyCrlSign"},
		{name: "no digitalSignature", mutate: func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment }, want: "digitalSignature"},
		{name: "non-critical key usage", mutate: func(c *x509.Certificate) {
			// digitalSignature (bit 0), as Go would encode it, but not critical.
			ku, _ := asn1.Marshal(asn1.BitString{Bytes: []byte{0x80}, BitLength: 1})
			c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: false, Value: ku})
		}, want: "not marked critical"},
		{name: "EKU without clientAuth", mutate: func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }, want: "client authentication"},
		{name: "EKU without serverAuth", mutate: func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} },
			usage: x509.ExtKeyUsageServerAuth, want: "server authentication"},
		{name: "untrusted CA", signer: other, want: "unknown authority"},
		{name: "foreign trust domain", mutate: func(c *x509.Certificate) { c.URIs[0], _ = url.Parse("spiffe://other.org/w") }, want: "no X.509 bundle"},
		{name: "expired", at: time.Now().Add(2 * time.Hour), want: "expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := goodLeaf("spiffe://example.org/w")
			if tc.mutate != nil {
				tc.mutate(tmpl)
			}
			signer := ca
			if tc.signer != nil {
				signer = tc.signer
			}
			leaf, _ := signer.issue(t, tmpl)
			at := time.Now()
			if !tc.at.IsZero() {
				at = tc.at
			}
			usage := x509.ExtKeyUsageClientAuth
			if tc.usage != 0 {
				usage = tc.usage
			}
			_, err := VerifyX509SVID([]*x509.Certificate{leaf}, bundle, at, usage)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want mention of %q", err, tc.want)
			}
		})
	}
	if _, err := VerifyX509SVID(nil, bundle, time.Now(), x509.ExtKeyUsageClientAuth); err == nil {
		t.Fatal("empty chain accepted")
	}
}

// TestTLSConfigs runs real TLS handshakes over loopback: TLS 1.3 only, the
// server ID is pinned, client SVIDs are verified when presented.
func TestTLSConfigs(t *testing.T) {
	ca := newTestCA(t)
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.cert})
	serverID := spiffeid.RequireFromString("spiffe://example.org/trustmesh/server")
	srvCert, srvKey := ca.issue(t, goodLeaf(serverID.String()))
	srvTLS, _ := TLSCertificate([][]byte{srvCert.Raw}, srvKey)
	cliCert, cliKey := ca.issue(t, goodLeaf("spiffe://example.org/client"))
	cliTLS, _ := TLSCertificate([][]byte{cliCert.Raw}, cliKey)
	rogue := newTestCA(t)
	rogueCert, rogueKey := rogue.issue(t, goodLeaf("spiffe://example.org/client"))
	rogueTLS, _ := TLSCertificate([][]byte{rogueCert.Raw}, rogueKey)

	ln, err := tls.Listen("tcp", "127.0.0.1:0", ServerTLSConfig(func() (*tls.Certificate, error) { return srvTLS, nil }, bundle, time.Now, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peers := make(chan string, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					peers <- "handshake failed"
					return
				}
				cs := tc.ConnectionState()
				if id, ok := PeerID(&cs); ok {
					peers <- id.String()
				} else {
					peers <- "anonymous"
				}
				io.WriteString(c, "ok")
			}(c)
		}
	}()
	dial := func(cfg *tls.Config) error {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = io.ReadAll(c)
		if c.ConnectionState().Version != tls.VersionTLS13 {
			return errors.New("not TLS 1.3")
		}
		return err
	}
	certFn := func(c *tls.Certificate) func() (*tls.Certificate, error) {
		return func() (*tls.Certificate, error) { return c, nil }
	}

	if err := dial(ClientTLSConfig(certFn(cliTLS), bundle, serverID)); err != nil {
		t.Fatalf("mTLS: %v", err)
	}
	if got := <-peers; got != "spiffe://example.org/client" {
		t.Fatalf("server saw %q", got)
	}
	if err := dial(ClientTLSConfig(nil, bundle, serverID)); err != nil {
		t.Fatalf("server-auth only: %v", err)
	}
	if got := <-peers; got != "anonymous" {
		t.Fatalf("server saw %q", got)
	}
	// A client certificate from another CA fails the handshake.
	_ = dial(ClientTLSConfig(certFn(rogueTLS), bundle, serverID))
	if got := <-peers; got != "handshake failed" {
		t.Fatalf("rogue client: server saw %q", got)
	}
	// The client refuses a server with the wrong ID.
	if err := dial(ClientTLSConfig(nil, bundle, spiffeid.RequireFromString("spiffe://example.org/elsewhere"))); err == nil || !strings.Contains(err.Error(), "want") {
		t.Fatalf("wrong server ID accepted: %v", err)
	}
	<-peers
	// TLS 1.2 is refused.
	old := ClientTLSConfig(nil, bundle, serverID)
	old.MaxVersion = tls.VersionTLS12
	if err := dial(old); err == nil {
		t.Fatal("TLS 1.2 accepted")
	}
}
