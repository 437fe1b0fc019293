// Package bearer verifies the bearer JWTs APIs present to the gateway
// (Authorization: Bearer …), as seed 002's ZeroTrustAuth does and more
// strictly: the signature against the issuer's JWKS (cached, refreshed on
// an unknown kid at most once per interval), alg from an allow-list of
// asymmetric algorithms, iss and aud exact, exp, iat and sub required, nbf
// honoured, a small leeway. Every rejection is an *Error with a Reason
// for metrics and a Detail for the log; neither is for the client.
package bearer

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Reason classifies a rejection (a metric label).
type Reason string

// Rejection reasons.
const (
	ReasonOversized       Reason = "oversized"
	ReasonMalformed       Reason = "malformed"
	ReasonAlgNotAllowed   Reason = "alg_not_allowed"
	ReasonWrongIssuer     Reason = "wrong_issuer"
	ReasonUnknownKID      Reason = "unknown_kid"
	ReasonBadSignature    Reason = "bad_signature"
	ReasonExpired         Reason = "expired"
	ReasonNotYetValid     Reason = "not_yet_valid"
	ReasonIssuedInFuture  Reason = "issued_in_future"
	ReasonWrongAudience   Reason = "wrong_audience"
	ReasonMissingClaim    Reason = "missing_claim"
	ReasonWrongType       Reason = "wrong_type"
	ReasonKeysUnavailable Reason = "jwks_unavailable"
	// ReasonRevoked is the gateway's, not the verifier's: a valid ID
	// token that sign-out revoked.
	ReasonRevoked Reason = "revoked"
)

// Reasons lists every Reason (to pre-register metrics).
var Reasons = []Reason{ReasonOversized, ReasonMalformed, ReasonAlgNotAllowed, ReasonWrongIssuer, ReasonUnknownKID,
	ReasonBadSignature, ReasonExpired, ReasonNotYetValid, ReasonIssuedInFuture, ReasonWrongAudience, ReasonMissingClaim, ReasonWrongType, ReasonKeysUnavailable, ReasonRevoked}

// Error is a rejected token.
type Error struct {
	Reason Reason
	Detail string // for the log: never contains the token
}

func (e *Error) Error() string { return "bearer token rejected: " + string(e.Reason) + ": " + e.Detail }

func reject(r Reason, format string, a ...any) *Error {
	return &Error{Reason: r, Detail: fmt.Sprintf(format, a...)}
}

// AsError returns the *Error in err, if any.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// AsymmetricAlgorithms are the algorithms accepted by default, and the only
// ones that may be configured: an HMAC "signature" could be forged by
// anyone who knows the key, which a JWKS publishes.
var AsymmetricAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}

// Issuer is one trusted token issuer.
type Issuer struct {
	Issuer    string
	Audiences []string // a token must name at least one
	// JWKSURL is where the keys are; empty: the jwks_uri of the issuer's
	// OpenID discovery document.
	JWKSURL    string
	Algorithms []string      // default AsymmetricAlgorithms
	Leeway     time.Duration // clock skew allowed on exp, nbf and iat
	// TokenTypes, when set, are the JOSE "typ" values a token must carry
	// (RFC 8725 section 3.11, explicit typing): [at+jwt] takes only JWT
	// access tokens (RFC 9068) and so refuses the issuer's ID tokens,
	// which carry the same iss and often the same aud. Compared as media
	// types: case-insensitively, with or without "application/".
	TokenTypes []string
}

// Options tune a Verifier.
type Options struct {
	HTTPClient *http.Client     // default: 10 s timeout
	Now        func() time.Time // default time.Now
	// MaxTokenBytes: longer tokens are refused unparsed (default 16 KiB).
	MaxTokenBytes int
	// MinRefreshInterval: an unknown kid refreshes the JWKS at most this
	// often per issuer (default 30 s), so a flood of made-up kids costs
	// one fetch.
	MinRefreshInterval time.Duration
	// MaxKeyAge: keys older than this are refetched on next use (default 1 h).
	MaxKeyAge time.Duration
	// CacheSize bounds the cache of verified tokens (by SHA-256 of the
	// token, until min(exp, 1 min)); 0 means 4096, negative disables it.
	CacheSize int
}

// Token is a verified token.
type Token struct {
	Issuer    string
	Subject   string
	Audiences []string
	Presenter string // azp
	Expiry    time.Time
	IssuedAt  time.Time
	Scopes    []string // from "scope" (space-separated) or "scp"
	Claims    map[string]any
}

// Verifier verifies tokens from the configured issuers.
type Verifier struct {
	opts    Options
	issuers map[string]*issuer
	allAlgs []jose.SignatureAlgorithm

	cacheMu sync.Mutex
	cache   map[[32]byte]cached
}

type cached struct {
	tok   *Token
	until time.Time
}

type issuer struct {
	cfg   Issuer
	algs  map[string]bool
	types []string // normalized TokenTypes
	keys  *keySet
}

// New prepares a verifier; no network access happens until a token needs keys.
func New(issuers []Issuer, opts Options) (*Verifier, error) {
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxTokenBytes == 0 {
		opts.MaxTokenBytes = 16 << 10
	}
	if opts.MinRefreshInterval == 0 {
		opts.MinRefreshInterval = 30 * time.Second
	}
	if opts.MaxKeyAge == 0 {
		opts.MaxKeyAge = time.Hour
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = 4096
	}
	v := &Verifier{opts: opts, issuers: map[string]*issuer{}, cache: map[[32]byte]cached{}}
	seen := map[string]bool{}
	for _, c := range issuers {
		if c.Issuer == "" {
			return nil, errors.New("bearer: an issuer has no issuer URL")
		}
		if _, dup := v.issuers[c.Issuer]; dup {
			return nil, fmt.Errorf("bearer: issuer %q configured twice", c.Issuer)
		}
		if len(c.Audiences) == 0 {
			return nil, fmt.Errorf("bearer: issuer %q: no audiences", c.Issuer)
		}
		if len(c.Algorithms) == 0 {
			c.Algorithms = AsymmetricAlgorithms
		}
		is := &issuer{cfg: c, algs: map[string]bool{}}
		for _, t := range c.TokenTypes {
			nt := NormalizeTokenType(t)
			if nt == "" {
				return nil, fmt.Errorf("bearer: issuer %q: an empty token type", c.Issuer)
			}
			is.types = append(is.types, nt)
		}
		for _, a := range c.Algorithms {
			if !slices.Contains(AsymmetricAlgorithms, a) {
				return nil, fmt.Errorf("bearer: issuer %q: algorithm %q is not allowed: want one of %s", c.Issuer, a, strings.Join(AsymmetricAlgorithms, ", "))
			}
			is.algs[a] = true
			if !seen[a] {
				seen[a] = true
				v.allAlgs = append(v.allAlgs, jose.SignatureAlgorithm(a))
			}
		}
		is.keys = &keySet{issuer: c.Issuer, url: c.JWKSURL, opts: &v.opts}
		v.issuers[c.Issuer] = is
	}
	return v, nil
}

// Issuers reports whether any issuer is configured.
func (v *Verifier) Issuers() int { return len(v.issuers) }

type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`
}

// NormalizeTokenType is a JOSE typ as a comparable media type: lower
// case, without the "application/" prefix RFC 7515 section 4.1.9 lets a
// writer omit.
func NormalizeTokenType(typ string) string {
	t := strings.ToLower(strings.TrimSpace(typ))
	return strings.TrimPrefix(t, "application/")
}

// registered are the claims Verify checks. Numeric dates must be numbers.
type registered struct {
	Issuer    string           `json:"iss"`
	Subject   *string          `json:"sub"`
	Audience  jwt.Audience     `json:"aud"`
	Expiry    *jwt.NumericDate `json:"exp"`
	NotBefore *jwt.NumericDate `json:"nbf"`
	IssuedAt  *jwt.NumericDate `json:"iat"`
	Presenter string           `json:"azp"`
}

// Verify checks raw and returns what it says, or an *Error.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Token, error) {
	if len(raw) > v.opts.MaxTokenBytes {
		return nil, reject(ReasonOversized, "token is %d bytes, the limit is %d", len(raw), v.opts.MaxTokenBytes)
	}
	now := v.opts.Now()
	var sum [32]byte
	if v.opts.CacheSize > 0 {
		sum = sha256.Sum256([]byte(raw))
		v.cacheMu.Lock()
		c, ok := v.cache[sum]
		v.cacheMu.Unlock()
		if ok && now.Before(c.until) {
			return c.tok, nil
		}
	}
	tok, err := v.verify(ctx, raw, now)
	if err != nil {
		return nil, err
	}
	if v.opts.CacheSize > 0 {
		until := now.Add(time.Minute)
		if tok.Expiry.Before(until) {
			until = tok.Expiry
		}
		v.cacheMu.Lock()
		if len(v.cache) >= v.opts.CacheSize {
			for k, c := range v.cache {
				if !now.Before(c.until) || len(v.cache) >= v.opts.CacheSize {
					delete(v.cache, k)
				}
			}
		}
		v.cache[sum] = cached{tok: tok, until: until}
		v.cacheMu.Unlock()
	}
	return tok, nil
}

func (v *Verifier) verify(ctx context.Context, raw string, now time.Time) (*Token, error) {
	if strings.Count(raw, ".") != 2 {
		return nil, reject(ReasonMalformed, "not a compact JWS (want header.payload.signature)")
	}
	// The header, read only to say why a token is refused.
	var h header
	hb, err := base64.RawURLEncoding.DecodeString(raw[:strings.IndexByte(raw, '.')])
	if err != nil || json.Unmarshal(hb, &h) != nil {
		return nil, reject(ReasonMalformed, "the JOSE header is not base64url JSON")
	}
	if !slices.Contains(v.allAlgs, jose.SignatureAlgorithm(h.Alg)) {
		return nil, reject(ReasonAlgNotAllowed, "alg %q is not allowed", truncate(h.Alg))
	}
	jt, err := jwt.ParseSigned(raw, v.allAlgs)
	if err != nil {
		return nil, reject(ReasonMalformed, "%v", err)
	}
	var unverified registered
	if err := jt.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return nil, reject(ReasonMalformed, "claims: %v", err)
	}
	is, ok := v.issuers[unverified.Issuer]
	if !ok {
		if unverified.Issuer == "" {
			return nil, reject(ReasonMissingClaim, "no iss claim")
		}
		return nil, reject(ReasonWrongIssuer, "iss %q is not a trusted issuer", truncate(unverified.Issuer))
	}
	if !is.algs[h.Alg] {
		return nil, reject(ReasonAlgNotAllowed, "alg %q is not allowed for issuer %q", h.Alg, is.cfg.Issuer)
	}
	keys, err := is.keys.lookup(ctx, h.Kid, h.Alg)
	if err != nil {
		return nil, err
	}
	var (
		claims   map[string]any
		reg      registered
		verified bool
	)
	for _, k := range keys {
		claims, reg = nil, registered{}
		if err := jt.Claims(k.Key, &claims, &reg); err == nil {
			verified = true
			break
		}
	}
	if !verified {
		return nil, reject(ReasonBadSignature, "signature does not verify with the issuer's key(s) for kid %q", truncate(h.Kid))
	}
	// (Checked once the signature holds: the header is signed too, so a
	// token refused here really is one the issuer made for another use.)
	if len(is.types) > 0 && !slices.Contains(is.types, NormalizeTokenType(h.Typ)) {
		return nil, reject(ReasonWrongType, "typ %q is not one of %q (an ID token, or another kind of JWT the issuer signs?)", truncate(h.Typ), is.cfg.TokenTypes)
	}
	leeway := is.cfg.Leeway
	switch {
	case reg.Expiry == nil:
		return nil, reject(ReasonMissingClaim, "no exp claim")
	case reg.IssuedAt == nil:
		return nil, reject(ReasonMissingClaim, "no iat claim")
	case reg.Subject == nil || *reg.Subject == "":
		return nil, reject(ReasonMissingClaim, "no sub claim")
	case len(reg.Audience) == 0:
		return nil, reject(ReasonMissingClaim, "no aud claim")
	}
	if exp := reg.Expiry.Time(); !now.Before(exp.Add(leeway)) {
		return nil, reject(ReasonExpired, "expired at %s (leeway %s)", exp.UTC().Format(time.RFC3339), leeway)
	}
	if reg.NotBefore != nil {
		if nbf := reg.NotBefore.Time(); now.Add(leeway).Before(nbf) {
			return nil, reject(ReasonNotYetValid, "not valid before %s (leeway %s)", nbf.UTC().Format(time.RFC3339), leeway)
		}
	}
	if iat := reg.IssuedAt.Time(); now.Add(leeway).Before(iat) {
		return nil, reject(ReasonIssuedInFuture, "issued at %s, in the future (leeway %s)", iat.UTC().Format(time.RFC3339), leeway)
	}
	audOK := false
	for _, a := range reg.Audience {
		if slices.Contains(is.cfg.Audiences, a) {
			audOK = true
			break
		}
	}
	if !audOK {
		return nil, reject(ReasonWrongAudience, "aud %q names none of %q", truncateList(reg.Audience), is.cfg.Audiences)
	}
	t := &Token{
		Issuer: reg.Issuer, Subject: *reg.Subject, Audiences: []string(reg.Audience), Presenter: reg.Presenter,
		Expiry: reg.Expiry.Time(), IssuedAt: reg.IssuedAt.Time(), Claims: claims,
	}
	t.Scopes = ScopesOf(claims)
	return t, nil
}

// ScopesOf reads OAuth scopes from a "scope" string (RFC 8693, space
// separated) or an "scp" list or string.
func ScopesOf(claims map[string]any) []string {
	var out []string
	add := func(v any) {
		switch t := v.(type) {
		case string:
			out = append(out, strings.Fields(t)...)
		case []any:
			for _, e := range t {
				if s, ok := e.(string); ok {
					out = append(out, s)
				}
			}
		}
	}
	add(claims["scope"])
	add(claims["scp"])
	return out
}

// truncate shortens attacker-controlled values before they reach a log.
func truncate(s string) string {
	const max = 128
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}

func truncateList(l []string) []string {
	if len(l) > 8 {
		l = l[:8]
	}
	out := make([]string, len(l))
	for i, s := range l {
		out[i] = truncate(s)
	}
	return out
}
