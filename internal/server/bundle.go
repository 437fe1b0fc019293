package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustmesh/trustmesh/internal/store"
)

// bundleRefreshHint is the refresh hint published in the SPIFFE bundle.
const bundleRefreshHint = 5 * time.Minute

// bundleCache is this replica's view of the trust bundle kept in the
// datastore. Every replica publishes its authorities there, so the union
// is what peers must trust; the cache refreshes periodically, when this
// replica's CA changes, and (rate-limited) when a peer presents an
// authority it does not know yet.
type bundleCache struct {
	td    spiffeid.TrustDomain
	store store.Store
	mu    sync.RWMutex
	b     *spiffebundle.Bundle
	// lastMiss is when a verification failure last caused a refresh.
	lastMiss time.Time
}

func newBundleCache(td spiffeid.TrustDomain, s store.Store) *bundleCache {
	return &bundleCache{td: td, store: s, b: spiffebundle.New(td)}
}

// Refresh reloads the bundle from the datastore.
func (c *bundleCache) Refresh(ctx context.Context) error {
	sb, err := c.store.FetchBundle(ctx)
	if err != nil {
		return fmt.Errorf("fetch bundle: %w", err)
	}
	b := spiffebundle.New(c.td)
	for _, a := range sb.X509Authorities {
		cert, err := x509.ParseCertificate(a.CertDER)
		if err != nil {
			return fmt.Errorf("stored X.509 authority: %w", err)
		}
		b.AddX509Authority(cert)
	}
	for _, k := range sb.JWTKeys {
		pub, err := x509.ParsePKIXPublicKey(k.PublicKeyDER)
		if err != nil {
			return fmt.Errorf("stored JWT key %q: %w", k.KeyID, err)
		}
		if err := b.AddJWTAuthority(k.KeyID, pub); err != nil {
			return fmt.Errorf("stored JWT key %q: %w", k.KeyID, err)
		}
	}
	b.SetSequenceNumber(sb.Sequence)
	b.SetRefreshHint(bundleRefreshHint)
	c.mu.Lock()
	defer c.mu.Unlock()
	// Concurrent refreshes may finish out of order: never go back to an
	// older snapshot (every bundle change bumps the sequence).
	if cur, ok := c.b.SequenceNumber(); !ok || sb.Sequence >= cur {
		c.b = b
	}
	return nil
}

// missRefreshInterval bounds how often a failed verification may trigger a
// datastore read, so bogus client certificates cannot hammer the database.
const missRefreshInterval = 200 * time.Millisecond

// RefreshOnMiss refreshes after a verification failure, at most once per
// missRefreshInterval, and reports whether it refreshed.
func (c *bundleCache) RefreshOnMiss(ctx context.Context) bool {
	c.mu.Lock()
	if time.Since(c.lastMiss) < missRefreshInterval {
		c.mu.Unlock()
		return false
	}
	c.lastMiss = time.Now()
	c.mu.Unlock()
	return c.Refresh(ctx) == nil
}

// Bundle returns the current bundle (do not modify).
func (c *bundleCache) Bundle() *spiffebundle.Bundle {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.b
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (c *bundleCache) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return c.Bundle().GetX509BundleForTrustDomain(td)
}

// GetJWTBundleForTrustDomain implements jwtbundle.Source.
func (c *bundleCache) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	return c.Bundle().GetJWTBundleForTrustDomain(td)
}
