package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustmesh/trustmesh/internal/ca/keymanager"
)

func TestThresholds(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(24 * time.Hour)
	if got := PreparationTime(nb, na); !got.Equal(nb.Add(12 * time.Hour)) {
		t.Errorf("preparation at %s, want half-life", got)
	}
	if got := ActivationTime(nb, na); !got.Equal(nb.Add(20 * time.Hour)) {
		t.Errorf("activation at %s, want 5/6 of life", got)
	}
	long := nb.Add(365 * 24 * time.Hour)
	if got := PreparationTime(nb, long); !got.Equal(long.Add(-30 * 24 * time.Hour)) {
		t.Errorf("preparation cap: %s", got)
	}
	if got := ActivationTime(nb, long); !got.Equal(long.Add(-7 * 24 * time.Hour)) {
		t.Errorf("activation cap: %s", got)
	}
}

func serialOf(f *fixture) string { return f.ca.X509Authority().Cert.SerialNumber.Text(16) }

func bundleSerials(t *testing.T, f *fixture) []string {
	var out []string
	for _, c := range f.bundle(t).X509Authorities() {
		out = append(out, c.SerialNumber.Text(16))
	}
	return out
}

// TestRotationSchedule walks a CA through its life with a fake clock: the
// successor is published at half-life but signs nothing until 5/6, and the
// predecessor stays in the bundle until it (and so every SVID it signed)
// has expired.
func TestRotationSchedule(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	start := f.clock.Now()
	first := serialOf(f)
	firstKid := f.ca.JWTKey().KeyID
	if got := bundleSerials(t, f); len(got) != 1 || got[0] != first {
		t.Fatalf("initial bundle = %v", got)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/w")
	issueUnder := func() *x509.Certificate {
		t.Helper()
		issued, err := f.ca.SignX509SVID(X509SVIDParams{SPIFFEID: id, PublicKey: newKey(t).Public(), TTL: 8 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(issued.Chain[0])
		return c
	}

	step := func(at time.Duration) {
		t.Helper()
		f.clock.Set(start.Add(at))
		if err := f.mgr.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
	}

	step(12*time.Hour - time.Minute) // nothing due yet
	if len(bundleSerials(t, f)) != 1 {
		t.Fatal("successor prepared before half-life")
	}

	step(12*time.Hour + 10*time.Second) // half-life (the CA is backdated 10s)
	bs := bundleSerials(t, f)
	if len(bs) != 2 {
		t.Fatalf("at half-life bundle = %v, want current + prepared", bs)
	}
	if serialOf(f) != first {
		t.Fatal("successor activated at preparation")
	}
	second := bs[1]
	if bs[0] != first {
		second = bs[0]
	}
	if len(f.bundle(t).JWTAuthorities()) != 2 || f.ca.JWTKey().KeyID != firstKid {
		t.Fatal("JWT key not prepared/kept alongside")
	}
	lastOfFirst := issueUnder()

	step(20*time.Hour + 10*time.Second) // five sixths
	if serialOf(f) != second {
		t.Fatalf("active CA = %s, want successor %s", serialOf(f), second)
	}
	if f.ca.JWTKey().KeyID == firstKid {
		t.Fatal("JWT key not rotated")
	}
	if got := bundleSerials(t, f); len(got) != 2 {
		t.Fatalf("old CA left the bundle before expiry: %v", got)
	}
	// An SVID signed by the old CA still verifies against the bundle.
	if _, _, err := x509svid.Verify([]*x509.Certificate{lastOfFirst}, f.bundle(t), x509svid.WithTime(f.clock.Now())); err != nil {
		t.Fatalf("SVID from the retired CA no longer verifies: %v", err)
	}
	if !lastOfFirst.NotAfter.Before(start.Add(24*time.Hour)) && !lastOfFirst.NotAfter.Equal(start.Add(24*time.Hour)) {
		t.Fatal("SVID outlives its CA")
	}

	step(24*time.Hour + time.Minute) // the first CA has expired
	// The first CA is gone; the second is active, and (its own half-life
	// having passed) the third is already published.
	got := bundleSerials(t, f)
	if slices.Contains(got, first) || !slices.Contains(got, second) || len(got) != 2 {
		t.Fatalf("after expiry bundle = %v, want %s and its successor, not %s", got, second, first)
	}
	if _, ok := f.bundle(t).FindJWTAuthority(firstKid); ok {
		t.Fatal("expired JWT key not pruned")
	}

	st := f.mgr.Status()
	if len(st.X509) != 2 || len(st.JWT) != 2 {
		t.Fatalf("status = %+v", st)
	}
}

// TestRestartKeepsCA: a server restarted on the same data dir resumes the
// same CA and JWT key; the bundle does not change.
func TestRestartKeepsCA(t *testing.T) {
	f := newFixture(t, nil)
	before, kid := serialOf(f), f.ca.JWTKey().KeyID
	for _, name := range []string{"x509-CA-A.key.pem", "JWT-Signer-A.key.pem"} {
		fi, err := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(f.journal)), "keys", name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v", name, fi.Mode().Perm())
		}
	}
	ca2 := New(Config{TrustDomain: td, Clock: f.clock.Now})
	km2, _ := keymanager.NewDisk(filepath.Join(filepath.Dir(filepath.Dir(f.journal)), "keys"))
	m2, err := NewManager(ManagerConfig{CA: ca2, TrustDomain: td, KeyManager: km2, Publisher: f.store, JournalPath: f.journal, Clock: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Initialize(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := ca2.X509Authority().Cert.SerialNumber.Text(16); got != before {
		t.Fatalf("restart changed the CA: %s -> %s", before, got)
	}
	if ca2.JWTKey().KeyID != kid {
		t.Fatal("restart changed the JWT key")
	}
	if n := len(bundleSerials(t, f)); n != 1 {
		t.Fatalf("bundle has %d CAs after restart", n)
	}
}

// TestJournalKeyMismatchRecovers: a journal whose key no longer matches
// (rotation interrupted between key write and journal write) is discarded
// and a fresh CA is activated instead of serving a broken one.
func TestJournalKeyMismatchRecovers(t *testing.T) {
	f := newFixture(t, nil)
	before := serialOf(f)
	if _, err := f.km.GenerateKey(context.Background(), "x509-CA-A", keymanager.ECP256); err != nil {
		t.Fatal(err)
	}
	ca2 := New(Config{TrustDomain: td, Clock: f.clock.Now})
	m2, _ := NewManager(ManagerConfig{CA: ca2, TrustDomain: td, KeyManager: f.km, Publisher: f.store, JournalPath: f.journal, Clock: f.clock.Now})
	if err := m2.Initialize(context.Background()); err != nil {
		t.Fatal(err)
	}
	a := ca2.X509Authority()
	if a.Cert.SerialNumber.Text(16) == before {
		t.Fatal("kept a CA whose key was replaced")
	}
	if !a.Signer.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(a.Cert.PublicKey) {
		t.Fatal("active CA key does not match its certificate")
	}
}

func TestCorruptJournalIsAnError(t *testing.T) {
	f := newFixture(t, nil)
	if err := os.WriteFile(f.journal, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	m2, _ := NewManager(ManagerConfig{CA: New(Config{TrustDomain: td}), TrustDomain: td, KeyManager: f.km, Publisher: f.store, JournalPath: f.journal})
	if err := m2.Initialize(context.Background()); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt journal: err = %v", err)
	}
}

// writeUpstream creates an upstream root CA on disk and returns the paths.
func writeUpstream(t *testing.T, notAfter time.Time) (certFile, keyFile string, root *x509.Certificate) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(42),
		Subject:               pkix.Name{CommonName: "Corp Root CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ = x509.ParseCertificate(der)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certFile, keyFile, root
}

func TestUpstreamCA(t *testing.T) {
	upNotAfter := time.Now().Add(6 * time.Hour).Truncate(time.Second)
	certFile, keyFile, root := writeUpstream(t, upNotAfter)
	up, err := LoadUpstream(certFile, keyFile, "")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(c *ManagerConfig) { c.Upstream = up })
	inter := f.ca.X509Authority().Cert
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Fatalf("intermediate not signed by upstream: %v", err)
	}
	if !inter.NotAfter.Equal(upNotAfter) {
		t.Fatalf("intermediate expires %s, beyond upstream %s", inter.NotAfter, upNotAfter)
	}
	if !inter.MaxPathLenZero {
		t.Fatal("intermediate may sign CAs")
	}
	// The bundle publishes the upstream root, not the intermediate.
	if got := f.bundle(t).X509Authorities(); len(got) != 1 || !got[0].Equal(root) {
		t.Fatalf("bundle = %d certs, want the upstream root", len(got))
	}
	key := newKey(t)
	issued, err := f.ca.SignX509SVID(X509SVIDParams{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/w"), PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	if len(issued.Chain) != 2 {
		t.Fatalf("chain has %d certs, want leaf + intermediate", len(issued.Chain))
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	svid, err := x509svid.ParseRaw(concat(issued.Chain), keyDER)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, f.bundle(t), x509svid.WithTime(f.clock.Now())); err != nil {
		t.Fatalf("SVID does not verify to the upstream root: %v", err)
	}
}

func TestLoadUpstreamErrors(t *testing.T) {
	certFile, keyFile, _ := writeUpstream(t, time.Now().Add(time.Hour))
	_, otherKey, _ := writeUpstream(t, time.Now().Add(time.Hour))
	if _, err := LoadUpstream(certFile, otherKey, ""); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched key: %v", err)
	}
	if _, err := LoadUpstream(certFile, filepath.Join(t.TempDir(), "none"), ""); err == nil {
		t.Error("missing key file accepted")
	}
	if _, err := LoadUpstream(keyFile, keyFile, ""); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("key as cert: %v", err)
	}
	// A key others may read is refused, like ssh does; 0600 and 0400 pass.
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644} {
		os.Chmod(keyFile, mode)
		if _, err := LoadUpstream(certFile, keyFile, ""); err == nil || !strings.Contains(err.Error(), "accessible by group or others") {
			t.Errorf("key mode %04o: %v", mode, err)
		}
	}
	for _, mode := range []os.FileMode{0o400, 0o600} {
		os.Chmod(keyFile, mode)
		if _, err := LoadUpstream(certFile, keyFile, ""); err != nil {
			t.Errorf("key mode %04o: %v", mode, err)
		}
	}
	_, _, otherRoot := writeUpstream(t, time.Now().Add(time.Hour))
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	os.WriteFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: otherRoot.Raw}), 0o600)
	if _, err := LoadUpstream(certFile, keyFile, bundle); err == nil || !strings.Contains(err.Error(), "does not chain") {
		t.Errorf("foreign bundle: %v", err)
	}
}

// TestSwitchingToUpstreamReplacesCA: a self-signed CA from the journal is
// not reused once an upstream CA is configured.
func TestSwitchingToUpstreamReplacesCA(t *testing.T) {
	f := newFixture(t, nil)
	certFile, keyFile, root := writeUpstream(t, time.Now().Add(48*time.Hour))
	up, err := LoadUpstream(certFile, keyFile, "")
	if err != nil {
		t.Fatal(err)
	}
	ca2 := New(Config{TrustDomain: td, Clock: f.clock.Now})
	m2, _ := NewManager(ManagerConfig{CA: ca2, TrustDomain: td, KeyManager: f.km, Publisher: f.store, JournalPath: f.journal, Clock: f.clock.Now, Upstream: up})
	if err := m2.Initialize(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := ca2.X509Authority().Cert.CheckSignatureFrom(root); err != nil {
		t.Fatal("still signing with the self-signed CA")
	}
}

// TestUpstreamIntermediate: the upstream CA is itself an intermediate under
// a root given in bundle_file; SVID chains must carry it.
func TestUpstreamIntermediate(t *testing.T) {
	dir := t.TempDir()
	// Build root and intermediate here so we hold both keys.
	rootKey := newKey(t)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Corp Root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	rootDER, _ := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	root, _ := x509.ParseCertificate(rootDER)
	interKey := newKey(t)
	interTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Corp Issuing CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	interDER, _ := x509.CreateCertificate(rand.Reader, interTmpl, root, interKey.Public(), rootKey)
	interKeyDER, _ := x509.MarshalPKCS8PrivateKey(interKey)
	certFile, keyFile, bundleFile := filepath.Join(dir, "inter.pem"), filepath.Join(dir, "inter.key"), filepath.Join(dir, "root.pem")
	os.WriteFile(certFile, EncodeCertificatesPEM(interDER), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: interKeyDER}), 0o600)
	os.WriteFile(bundleFile, EncodeCertificatesPEM(rootDER), 0o600)

	up, err := LoadUpstream(certFile, keyFile, bundleFile)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(c *ManagerConfig) { c.Upstream = up })
	if got := f.bundle(t).X509Authorities(); len(got) != 1 || !got[0].Equal(root) {
		t.Fatal("bundle must hold the root only")
	}
	key := newKey(t)
	issued, err := f.ca.SignX509SVID(X509SVIDParams{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/w"), PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	if len(issued.Chain) != 3 {
		t.Fatalf("chain has %d certificates, want leaf, our CA and the upstream intermediate", len(issued.Chain))
	}
	certs := parseChain(t, issued.Chain)
	if _, _, err := x509svid.Verify(certs, f.bundle(t), x509svid.WithTime(f.clock.Now())); err != nil {
		t.Fatalf("SVID does not verify to the root through the upstream intermediate: %v", err)
	}
}

// TestSuccessorPublishedBeforeActivation: after downtime past the
// activation point with no successor prepared, the successor is published
// in one step and only activated in the next.
func TestSuccessorPublishedBeforeActivation(t *testing.T) {
	f := newFixture(t, nil)
	first := serialOf(f)
	start := f.clock.Now()
	f.clock.Set(start.Add(22 * time.Hour)) // past 5/6 of 24h, nothing prepared
	if err := f.mgr.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if serialOf(f) != first {
		t.Fatal("successor activated in the step that prepared it")
	}
	if n := len(bundleSerials(t, f)); n != 2 {
		t.Fatalf("successor not published: bundle has %d CAs", n)
	}
	f.clock.Set(start.Add(22*time.Hour + 10*time.Second))
	if err := f.mgr.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if serialOf(f) == first {
		t.Fatal("successor not activated on the next step")
	}
}

// TestJournalWriteRetried: a failed journal write is retried on the next
// step instead of being forgotten.
func TestJournalWriteRetried(t *testing.T) {
	f := newFixture(t, nil)
	good := f.mgr.cfg.JournalPath
	blocker := filepath.Join(t.TempDir(), "file")
	os.WriteFile(blocker, nil, 0o600)
	f.mgr.cfg.JournalPath = filepath.Join(blocker, "journal.json") // parent is a file: writes fail
	f.clock.Set(f.clock.Now().Add(13 * time.Hour))
	if err := f.mgr.Rotate(context.Background()); err == nil {
		t.Fatal("journal write failure not reported")
	}
	f.mgr.cfg.JournalPath = good
	if err := f.mgr.Rotate(context.Background()); err != nil { // nothing new is due; the save is
		t.Fatal(err)
	}
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), `"slot"`); n != 4 {
		t.Fatalf("journal records %d slots, want 4 (2 X.509 + 2 JWT)", n)
	}
}
