package bearer

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	gjwt "github.com/golang-jwt/jwt/v5"
	"github.com/oauth2-proxy/mockoidc"
)

// idp is a real OIDC provider (mockoidc) whose signing key the tests hold.
type idp struct {
	m   *mockoidc.MockOIDC
	key *rsa.PrivateKey
	kid string
}

var (
	keyOnce  sync.Once
	rsaKey   *rsa.PrivateKey
	otherKey *rsa.PrivateKey
)

func keys(t testing.TB) (*rsa.PrivateKey, *rsa.PrivateKey) {
	keyOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if otherKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
	return rsaKey, otherKey
}

func startIdP(t testing.TB) *idp {
	t.Helper()
	key, _ := keys(t)
	m, err := mockoidc.NewServer(key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ln, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	kid, err := m.Keypair.KeyID()
	if err != nil {
		t.Fatal(err)
	}
	return &idp{m: m, key: key, kid: kid}
}

func sign(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func goodClaims(iss string, now time.Time) map[string]any {
	return map[string]any{
		"iss": iss, "sub": "user-1", "aud": []string{"my-application"},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		"scope": "read:sensitive openid", "groups": []string{"data-team"},
	}
}

func newVerifier(t *testing.T, p *idp, now func() time.Time) *Verifier {
	t.Helper()
	v, err := New([]Issuer{{Issuer: p.m.Issuer(), Audiences: []string{"my-application"}, Leeway: 30 * time.Second}},
		Options{Now: now, CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func b64(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

// TestAttackTable: every forged, broken or out-of-date token is rejected
// with its reason.
func TestAttackTable(t *testing.T) {
	p := startIdP(t)
	now := time.Now()
	iss := p.m.Issuer()
	_, other := keys(t)
	good := sign(t, jose.RS256, p.key, p.kid, goodClaims(iss, now))
	without := func(k string) map[string]any { c := goodClaims(iss, now); delete(c, k); return c }
	with := func(k string, v any) map[string]any { c := goodClaims(iss, now); c[k] = v; return c }
	pubDER, _ := x509.MarshalPKIXPublicKey(&p.key.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	parts := strings.Split(good, ".")

	cases := []struct {
		name  string
		token string
		want  Reason
	}{
		{"alg none", b64(map[string]string{"alg": "none", "typ": "JWT"}) + "." + b64(goodClaims(iss, now)) + ".", ReasonAlgNotAllowed},
		{"HS256 signed with the RSA public key", sign(t, jose.HS256, pubPEM, p.kid, goodClaims(iss, now)), ReasonAlgNotAllowed},
		{"HS256 signed with the public key DER", sign(t, jose.HS256, pubDER, p.kid, goodClaims(iss, now)), ReasonAlgNotAllowed},
		{"unknown kid", sign(t, jose.RS256, p.key, "no-such-kid", goodClaims(iss, now)), ReasonUnknownKID},
		{"signature from another key", sign(t, jose.RS256, other, p.kid, goodClaims(iss, now)), ReasonBadSignature},
		{"ES256 key under the RSA kid", sign(t, jose.ES256, ec, p.kid, goodClaims(iss, now)), ReasonUnknownKID},
		{"tampered payload", parts[0] + "." + b64(with("sub", "admin")) + "." + parts[2], ReasonBadSignature},
		{"signature stripped", parts[0] + "." + parts[1] + ".", ReasonBadSignature},
		{"expired", sign(t, jose.RS256, p.key, p.kid, with("exp", now.Add(-time.Minute).Unix())), ReasonExpired},
		{"nbf in the future", sign(t, jose.RS256, p.key, p.kid, with("nbf", now.Add(5*time.Minute).Unix())), ReasonNotYetValid},
		{"iat in the future", sign(t, jose.RS256, p.key, p.kid, with("iat", now.Add(5*time.Minute).Unix())), ReasonIssuedInFuture},
		{"wrong iss", sign(t, jose.RS256, p.key, p.kid, with("iss", "https://evil.example")), ReasonWrongIssuer},
		{"iss with a trailing slash", sign(t, jose.RS256, p.key, p.kid, with("iss", iss+"/")), ReasonWrongIssuer},
		{"wrong aud", sign(t, jose.RS256, p.key, p.kid, with("aud", "other-app")), ReasonWrongAudience},
		{"aud prefix", sign(t, jose.RS256, p.key, p.kid, with("aud", "my-app")), ReasonWrongAudience},
		{"missing exp", sign(t, jose.RS256, p.key, p.kid, without("exp")), ReasonMissingClaim},
		{"missing iat", sign(t, jose.RS256, p.key, p.kid, without("iat")), ReasonMissingClaim},
		{"missing sub", sign(t, jose.RS256, p.key, p.kid, without("sub")), ReasonMissingClaim},
		{"empty sub", sign(t, jose.RS256, p.key, p.kid, with("sub", "")), ReasonMissingClaim},
		{"missing aud", sign(t, jose.RS256, p.key, p.kid, without("aud")), ReasonMissingClaim},
		{"missing iss", sign(t, jose.RS256, p.key, p.kid, without("iss")), ReasonMissingClaim},
		{"exp not a number", sign(t, jose.RS256, p.key, p.kid, with("exp", "tomorrow")), ReasonMalformed},
		{"oversized", sign(t, jose.RS256, p.key, p.kid, with("pad", strings.Repeat("x", 20<<10))), ReasonOversized},
		{"not a JWT", "hello", ReasonMalformed},
		{"JWE shape", "a.b.c.d.e", ReasonMalformed},
		{"garbage header", "!!!.e30.sig", ReasonMalformed},
	}
	v := newVerifier(t, p, time.Now)
	if _, err := v.Verify(context.Background(), good); err != nil {
		t.Fatalf("the good token: %v", err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := v.Verify(context.Background(), tc.token)
			e, ok := AsError(err)
			if !ok {
				t.Fatalf("accepted (%+v) or untyped error %v; want %s", tok, err, tc.want)
			}
			if e.Reason != tc.want {
				t.Fatalf("reason %s (%s), want %s", e.Reason, e.Detail, tc.want)
			}
			if strings.Contains(e.Error(), tc.token) && len(tc.token) > 10 {
				t.Fatalf("the error quotes the token")
			}
		})
	}
}

func TestLeeway(t *testing.T) {
	p := startIdP(t)
	now := time.Now()
	c := goodClaims(p.m.Issuer(), now)
	c["exp"] = now.Add(-10 * time.Second).Unix() // within the 30 s leeway
	c["nbf"] = now.Add(10 * time.Second).Unix()
	v := newVerifier(t, p, func() time.Time { return now })
	if _, err := v.Verify(context.Background(), sign(t, jose.RS256, p.key, p.kid, c)); err != nil {
		t.Fatalf("within leeway: %v", err)
	}
}

func TestVerifiedToken(t *testing.T) {
	p := startIdP(t)
	now := time.Now()
	c := goodClaims(p.m.Issuer(), now)
	c["azp"] = "cli"
	v := newVerifier(t, p, time.Now)
	tok, err := v.Verify(context.Background(), sign(t, jose.RS256, p.key, p.kid, c))
	if err != nil {
		t.Fatal(err)
	}
	if tok.Subject != "user-1" || tok.Issuer != p.m.Issuer() || tok.Presenter != "cli" ||
		strings.Join(tok.Scopes, " ") != "read:sensitive openid" || tok.Audiences[0] != "my-application" {
		t.Fatalf("token: %+v", tok)
	}
	if g, _ := tok.Claims["groups"].([]any); len(g) != 1 || g[0] != "data-team" {
		t.Fatalf("claims: %v", tok.Claims)
	}
}

// TestUnknownKIDRefreshIsRateLimited: a flood of made-up kids costs one
// JWKS fetch per interval; after the interval a rotated-in key is found.
func TestUnknownKIDRefreshIsRateLimited(t *testing.T) {
	p := startIdP(t)
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	v := newVerifier(t, p, clock)
	ctx := context.Background()
	if _, err := v.Verify(ctx, sign(t, jose.RS256, p.key, p.kid, goodClaims(p.m.Issuer(), clock()))); err != nil {
		t.Fatal(err)
	}
	if n := v.Fetches(p.m.Issuer()); n != 1 {
		t.Fatalf("%d fetches for the first token, want 1", n)
	}
	for i := 0; i < 50; i++ {
		_, err := v.Verify(ctx, sign(t, jose.RS256, p.key, "kid-"+string(rune('a'+i%26)), goodClaims(p.m.Issuer(), clock())))
		if e, ok := AsError(err); !ok || e.Reason != ReasonUnknownKID {
			t.Fatalf("made-up kid: %v", err)
		}
	}
	if n := v.Fetches(p.m.Issuer()); n != 1 {
		t.Fatalf("%d fetches after a flood of unknown kids within the interval, want 1", n)
	}
	now.Add(int64(31 * time.Second))
	_, _ = v.Verify(ctx, sign(t, jose.RS256, p.key, "kid-new", goodClaims(p.m.Issuer(), clock())))
	if n := v.Fetches(p.m.Issuer()); n != 2 {
		t.Fatalf("%d fetches after the interval, want 2", n)
	}
}

// TestKeyRotation: the issuer rotates its key; the first token under the
// new kid triggers a refresh and verifies.
func TestKeyRotation(t *testing.T) {
	p := startIdP(t)
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	v := newVerifier(t, p, clock)
	ctx := context.Background()
	if _, err := v.Verify(ctx, sign(t, jose.RS256, p.key, p.kid, goodClaims(p.m.Issuer(), clock()))); err != nil {
		t.Fatal(err)
	}
	_, other := keys(t)
	kp, _ := mockoidc.NewKeypair(other)
	p.m.Keypair = kp // the IdP now publishes only the new key
	newKID, _ := kp.KeyID()
	now.Add(int64(31 * time.Second))
	if _, err := v.Verify(ctx, sign(t, jose.RS256, other, newKID, goodClaims(p.m.Issuer(), clock()))); err != nil {
		t.Fatalf("token under the rotated key: %v", err)
	}
}

func TestJWKSUnavailable(t *testing.T) {
	v, err := New([]Issuer{{Issuer: "http://127.0.0.1:1/none", Audiences: []string{"a"}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := keys(t)
	// The second attempt falls within the refresh interval: no fetch, and
	// still the same reason (not unknown_kid: the key may exist).
	for attempt := 1; attempt <= 2; attempt++ {
		_, err = v.Verify(context.Background(), sign(t, jose.RS256, key, "k", goodClaims("http://127.0.0.1:1/none", time.Now())))
		if e, ok := AsError(err); !ok || e.Reason != ReasonKeysUnavailable {
			t.Fatalf("unreachable JWKS, attempt %d: %v", attempt, err)
		}
	}
	if n := v.Fetches("http://127.0.0.1:1/none"); n != 1 {
		t.Fatalf("%d fetches, want 1 (rate-limited)", n)
	}
}

func TestConfigRefusesSymmetricAlgorithms(t *testing.T) {
	for _, alg := range []string{"HS256", "none", "RSA1_5"} {
		if _, err := New([]Issuer{{Issuer: "https://idp", Audiences: []string{"a"}, Algorithms: []string{alg}}}, Options{}); err == nil {
			t.Errorf("algorithm %s accepted", alg)
		}
	}
}

func TestCache(t *testing.T) {
	p := startIdP(t)
	v, err := New([]Issuer{{Issuer: p.m.Issuer(), Audiences: []string{"my-application"}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	raw := sign(t, jose.RS256, p.key, p.kid, goodClaims(p.m.Issuer(), time.Now()))
	a, err1 := v.Verify(context.Background(), raw)
	b, err2 := v.Verify(context.Background(), raw)
	if err1 != nil || err2 != nil || a != b {
		t.Fatalf("the second verification should come from the cache: %v %v", err1, err2)
	}
}

// TestTokenTypes: with token_types [at+jwt], only explicitly typed access
// tokens pass (typ compared as a media type); an ID token of the same
// issuer and audience (typ JWT, as mockoidc's own signer writes it) or an
// untyped token is refused with wrong_type. Without token_types any typ
// passes.
func TestTokenTypes(t *testing.T) {
	p := startIdP(t)
	now := time.Now()
	typed := func(typ string) string {
		opts := (&jose.SignerOptions{}).WithHeader("kid", p.kid)
		if typ != "" {
			opts = opts.WithType(jose.ContentType(typ))
		}
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: p.key}, opts)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := jwt.Signed(s).Claims(goodClaims(p.m.Issuer(), now)).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	idToken, err := p.m.Keypair.SignJWT(mockoidcClaims(goodClaims(p.m.Issuer(), now)))
	if err != nil {
		t.Fatal(err)
	}
	strict, err := New([]Issuer{{Issuer: p.m.Issuer(), Audiences: []string{"my-application"}, TokenTypes: []string{"at+jwt"}}},
		Options{Now: time.Now, CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	open := newVerifier(t, p, time.Now)
	for _, tc := range []struct {
		name, raw string
		strictOK  bool
	}{
		{"at+jwt", typed("at+jwt"), true},
		{"application/AT+JWT", typed("application/AT+JWT"), true},
		{"typ JWT", typed("JWT"), false},
		{"no typ", typed(""), false},
		{"mockoidc ID token", idToken, false},
	} {
		_, err := strict.Verify(context.Background(), tc.raw)
		if tc.strictOK && err != nil {
			t.Errorf("%s: refused: %v", tc.name, err)
		}
		if !tc.strictOK {
			if e, ok := AsError(err); !ok || e.Reason != ReasonWrongType {
				t.Errorf("%s: got %v, want %s", tc.name, err, ReasonWrongType)
			}
		}
		if _, err := open.Verify(context.Background(), tc.raw); err != nil {
			t.Errorf("%s: refused without token_types: %v", tc.name, err)
		}
	}
	if _, err := New([]Issuer{{Issuer: "https://i", Audiences: []string{"a"}, TokenTypes: []string{" "}}}, Options{}); err == nil {
		t.Error("an empty token type was accepted")
	}
}

// mockoidcClaims are claims for mockoidc's own signer (golang-jwt).
func mockoidcClaims(c map[string]any) gjwt.MapClaims { return gjwt.MapClaims(c) }
