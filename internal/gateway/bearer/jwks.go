package bearer

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// keySet is one issuer's signing keys, fetched lazily and cached.
type keySet struct {
	issuer string
	url    string // JWKS URL; discovered when empty
	opts   *Options

	cur atomic.Pointer[keySnapshot]

	fetchMu     sync.Mutex // one fetch at a time
	lastAttempt time.Time  // guarded by fetchMu
	lastErr     error      // the last attempt's failure; guarded by fetchMu
	fetches     atomic.Int64
}

type keySnapshot struct {
	keys    []jose.JSONWebKey
	fetched time.Time
}

// Fetches is how many times the JWKS was fetched (for tests and metrics).
func (v *Verifier) Fetches(iss string) int64 {
	if is, ok := v.issuers[iss]; ok {
		return is.keys.fetches.Load()
	}
	return 0
}

// lookup returns the keys that may have signed a token with kid and alg,
// refreshing the set when kid is unknown (at most once per
// MinRefreshInterval) or the keys are older than MaxKeyAge.
func (k *keySet) lookup(ctx context.Context, kid, alg string) ([]jose.JSONWebKey, error) {
	now := k.opts.Now()
	snap := k.cur.Load()
	if snap == nil || now.Sub(snap.fetched) >= k.opts.MaxKeyAge {
		if err := k.refresh(ctx, now); err != nil && snap == nil {
			return nil, err
		}
		snap = k.cur.Load()
	}
	if snap != nil {
		if keys := match(snap.keys, kid, alg); len(keys) > 0 {
			return keys, nil
		}
	}
	err := k.refresh(ctx, now)
	if snap = k.cur.Load(); snap != nil {
		if keys := match(snap.keys, kid, alg); len(keys) > 0 {
			return keys, nil
		}
	}
	if err != nil {
		// The key may well exist: we could not look. Say so, rather than
		// blame the token (unknown_kid) while the issuer is unreachable.
		return nil, err
	}
	return nil, reject(ReasonUnknownKID, "no key of issuer %q has kid %q for alg %s", k.issuer, truncate(kid), alg)
}

// match picks usable keys: the kid's (every key of a suitable type when the
// token has no kid), whose alg, if the JWK names one, is the token's.
func match(keys []jose.JSONWebKey, kid, alg string) []jose.JSONWebKey {
	var out []jose.JSONWebKey
	for _, key := range keys {
		if kid != "" && key.KeyID != kid {
			continue
		}
		if key.Algorithm != "" && key.Algorithm != alg {
			continue
		}
		if !typeFits(key.Key, alg) {
			continue
		}
		out = append(out, key)
	}
	return out
}

func typeFits(key any, alg string) bool {
	switch key.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		return strings.HasPrefix(alg, "ES")
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// refresh fetches the keys unless a fetch was attempted within
// MinRefreshInterval; then it returns that attempt's outcome, so a JWKS
// that was unreachable a moment ago still reads as unavailable.
func (k *keySet) refresh(ctx context.Context, now time.Time) error {
	k.fetchMu.Lock()
	defer k.fetchMu.Unlock()
	if !k.lastAttempt.IsZero() && now.Sub(k.lastAttempt) < k.opts.MinRefreshInterval {
		return k.lastErr // rate-limited: what we have is what we use
	}
	k.lastAttempt = now
	k.fetches.Add(1)
	// A client that hangs up must not cost everyone the refresh.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	keys, err := k.fetch(fctx)
	if err != nil {
		k.lastErr = reject(ReasonKeysUnavailable, "issuer %q: %v", k.issuer, err)
		return k.lastErr
	}
	k.lastErr = nil
	k.cur.Store(&keySnapshot{keys: keys, fetched: now})
	return nil
}

func (k *keySet) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	u := k.url
	if u == "" {
		var doc struct {
			Issuer  string `json:"issuer"`
			JWKSURI string `json:"jwks_uri"`
		}
		if err := getJSON(ctx, k.opts.HTTPClient, strings.TrimSuffix(k.issuer, "/")+"/.well-known/openid-configuration", &doc); err != nil {
			return nil, fmt.Errorf("discovery: %w", err)
		}
		if doc.Issuer != k.issuer {
			return nil, fmt.Errorf("discovery: the document names issuer %q", truncate(doc.Issuer))
		}
		if doc.JWKSURI == "" {
			return nil, fmt.Errorf("discovery: no jwks_uri")
		}
		if err := CheckEndpoint(doc.JWKSURI); err != nil {
			return nil, fmt.Errorf("discovery: jwks_uri %w", err)
		}
		u = doc.JWKSURI
	}
	var set jose.JSONWebKeySet
	if err := getJSON(ctx, k.opts.HTTPClient, u, &set); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	var keys []jose.JSONWebKey
	for _, key := range set.Keys {
		if !key.Valid() || !key.IsPublic() || (key.Use != "" && key.Use != "sig") {
			continue
		}
		switch pk := key.Key.(type) {
		case *rsa.PublicKey:
			if pk.N.BitLen() < 2048 {
				continue
			}
		case *ecdsa.PublicKey, ed25519.PublicKey:
		default:
			continue // symmetric keys never verify anything here
		}
		keys = append(keys, key)
	}
	return keys, nil
}

func getJSON(ctx context.Context, c *http.Client, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return nil
}
