package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustmesh/trustmesh/internal/ca/keymanager"
	"github.com/trustmesh/trustmesh/internal/store"
	"github.com/trustmesh/trustmesh/internal/store/sqlstore"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// fakeClock is a settable clock for rotation tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Now().Truncate(time.Second)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

type fixture struct {
	ca      *CA
	mgr     *Manager
	store   store.Store
	clock   *fakeClock
	km      keymanager.KeyManager
	journal string
}

func newFixture(t testing.TB, mutate func(*ManagerConfig)) *fixture {
	t.Helper()
	dir := t.TempDir()
	s, err := sqlstore.Open(context.Background(), "sqlite://"+filepath.Join(dir, "ds.sqlite3"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	km, err := keymanager.NewDisk(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{store: s, clock: newFakeClock(), km: km, journal: filepath.Join(dir, "ca", "journal.json")}
	f.ca = New(Config{TrustDomain: td, Clock: f.clock.Now})
	cfg := ManagerConfig{CA: f.ca, TrustDomain: td, KeyManager: km, Publisher: s, JournalPath: f.journal, Clock: f.clock.Now}
	if mutate != nil {
		mutate(&cfg)
	}
	f.mgr, err = NewManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.mgr.Initialize(context.Background()); err != nil {
		t.Fatal(err)
	}
	return f
}

// bundle reads the published bundle from the store, as relying parties see it.
func (f *fixture) bundle(t testing.TB) *spiffebundle.Bundle {
	t.Helper()
	sb, err := f.store.FetchBundle(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b := spiffebundle.New(td)
	for _, a := range sb.X509Authorities {
		c, err := x509.ParseCertificate(a.CertDER)
		if err != nil {
			t.Fatal(err)
		}
		b.AddX509Authority(c)
	}
	for _, k := range sb.JWTKeys {
		pub, err := x509.ParsePKIXPublicKey(k.PublicKeyDER)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.AddJWTAuthority(k.KeyID, pub); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newCSR(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
