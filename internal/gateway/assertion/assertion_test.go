package assertion

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

func TestSignVerifiesWithPublishedJWKS(t *testing.T) {
	now := time.Now()
	s, err := New(Options{Issuer: "https://gw.example.com", TTL: time.Minute, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.Sign(Claims{Subject: "https://idp/sub-1", User: "sub-1", Email: "a@example.com", Groups: []string{"g1", "g2"}}, "tool.example.com")
	if err != nil {
		t.Fatal(err)
	}
	var set jose.JSONWebKeySet
	if err := jsonUnmarshal(s.JWKS(), &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("jwks: %v %s", err, s.JWKS())
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	if tok.Headers[0].KeyID != set.Keys[0].KeyID {
		t.Fatalf("kid %q not in the JWKS", tok.Headers[0].KeyID)
	}
	var std jwt.Claims
	var extra struct {
		Email  string   `json:"email"`
		Groups []string `json:"groups"`
	}
	if err := tok.Claims(set.Keys[0].Key, &std, &extra); err != nil {
		t.Fatal(err)
	}
	if err := std.Validate(jwt.Expected{Issuer: "https://gw.example.com", AnyAudience: jwt.Audience{"tool.example.com"}, Time: now}); err != nil {
		t.Fatal(err)
	}
	if std.Subject != "https://idp/sub-1" || extra.Email != "a@example.com" || len(extra.Groups) != 2 || std.Expiry.Time().Unix() != now.Add(time.Minute).Unix() {
		t.Fatalf("claims %+v %+v", std, extra)
	}
	// Reused within half the TTL, renewed after.
	again, _ := s.Sign(Claims{Subject: "https://idp/sub-1", User: "sub-1", Email: "a@example.com", Groups: []string{"g1", "g2"}}, "tool.example.com")
	if again != raw {
		t.Fatal("the assertion should be reused within half its lifetime")
	}
	other, _ := s.Sign(Claims{Subject: "https://idp/sub-1", User: "sub-1", Email: "a@example.com", Groups: []string{"g1"}}, "tool.example.com")
	if other == raw {
		t.Fatal("different claims must not share an assertion")
	}
	now = now.Add(31 * time.Second)
	if renewed, _ := s.Sign(Claims{Subject: "https://idp/sub-1", User: "sub-1", Email: "a@example.com", Groups: []string{"g1", "g2"}}, "tool.example.com"); renewed == raw {
		t.Fatal("the assertion should be renewed after half its lifetime")
	}
}

func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "assertion.pem")
	a, err := New(Options{KeyFile: path})
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", info.Mode(), err)
	}
	b, err := New(Options{KeyFile: path})
	if err != nil {
		t.Fatal(err)
	}
	if a.KeyID() != b.KeyID() {
		t.Fatal("a second signer on the same key file must use the same key")
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{KeyFile: path}); err == nil {
		t.Fatal("a world-readable key file must be refused")
	}
}

// Claim sets that differ get different cache keys, however their strings
// split (a cached assertion must never answer for another identity).
func TestCacheKeyDistinguishes(t *testing.T) {
	sets := []struct {
		c   Claims
		aud string
	}{
		{Claims{Subject: "a"}, "h"},
		{Claims{User: "a"}, "h"},
		{Claims{Subject: "a", Groups: []string{"x,y"}}, "h"},
		{Claims{Subject: "a", Groups: []string{"x", "y"}}, "h"},
		{Claims{Subject: "a", Groups: []string{"x"}}, "h"},
		{Claims{Subject: "a;1:b"}, "h"},
		{Claims{Subject: "a", User: "b"}, "h"},
		{Claims{Subject: "a"}, "h2"},
	}
	seen := map[string]int{}
	for i, s := range sets {
		k := cacheKey(s.c, s.aud)
		if j, dup := seen[k]; dup {
			t.Fatalf("sets %d and %d share a cache key", j, i)
		}
		seen[k] = i
		if cacheKey(s.c, s.aud) != k {
			t.Fatalf("set %d: the key is not stable", i)
		}
	}
}
