package gateway

// ID tokens as bearer tokens. A login's ID token carries the same iss as
// the provider's access tokens, and an aud that is the login client's ID,
// sometimes with more audiences (an API's, added by the provider's
// mappers). Where a bearer issuer is also a login provider's and no
// token_types refuses ID tokens, such an ID token can pass as a bearer
// token. Sign-out hands the session's ID token to the provider as
// id_token_hint, in a URL that browser history and the provider's logs
// keep, so sign-out also revokes it: a record in the session store, kept
// until the token could no longer pass, under a hash of the token (never
// the token itself). Only bearer tokens whose aud names a login client pay
// for the lookup.

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/trustmesh/trustmesh/internal/gateway/bearer"
	"github.com/trustmesh/trustmesh/internal/gateway/session"
)

// revokedIDTokenKey is the store key of a revoked token's record. (Session
// keys are 64 hex digits, so the prefix keeps the two apart.)
func revokedIDTokenKey(raw string) string {
	return "revoked-id-token:" + hashString("revoked id token", raw)
}

// overlap: a and b share a value (audiences, client IDs).
func overlap(a, b []string) bool {
	return slices.ContainsFunc(a, func(v string) bool { return slices.Contains(b, v) })
}

// idTokenRevoked reports whether sign-out revoked raw, which verified as
// tok for bc.
func (g *Gateway) idTokenRevoked(ctx context.Context, bc BearerIssuer, tok *bearer.Token, raw string) (bool, error) {
	if !overlap(tok.Audiences, bc.LoginClientIDs) { // not a login client's: no ID token of ours
		return false, nil
	}
	_, err := g.store.Get(ctx, revokedIDTokenKey(raw))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, session.ErrNotFound):
		return false, nil
	}
	return false, err
}

// idTokenAlgorithms are the algorithms a bearer token may be signed with:
// an ID token signed otherwise never passes as one.
var idTokenAlgorithms = func() []jose.SignatureAlgorithm {
	var out []jose.SignatureAlgorithm
	for _, a := range bearer.AsymmetricAlgorithms {
		out = append(out, jose.SignatureAlgorithm(a))
	}
	return out
}()

// maxRevocation bounds how long a revocation is kept, for a token whose
// exp is absurdly far away.
const maxRevocation = 100 * 365 * 24 * time.Hour

// revokeIDToken revokes a signed-out session's ID token where it could
// pass as a bearer token (its iss a bearer issuer's, its aud naming one of
// that issuer's login clients and one of its audiences), until it could
// pass no more (its exp, the
// issuer's leeway and a minute for clocks). The token is not verified
// again: it comes from the gateway's own sealed session, verified at
// login, and a check that failed now (the JWKS unreachable, keys rotated)
// must not skip the revocation. Its claims are read with go-jose.
func (g *Gateway) revokeIDToken(ctx context.Context, raw string) error {
	if raw == "" {
		return nil
	}
	parsed, err := jwt.ParseSigned(raw, idTokenAlgorithms)
	if err != nil {
		return nil // not a JWS a bearer issuer here would take
	}
	var claims jwt.Claims
	if err := parsed.UnsafeClaimsWithoutVerification(&claims); err != nil || claims.Expiry == nil {
		return nil // no exp: never a bearer token
	}
	bc, ok := g.bearerCfg[claims.Issuer]
	if !ok || !overlap(claims.Audience, bc.LoginClientIDs) || !overlap(claims.Audience, bc.Audiences) {
		return nil // no bearer issuer here would take it
	}
	now := g.now()
	until := claims.Expiry.Time().Add(bc.Leeway + time.Minute)
	if !until.After(now) {
		return nil // expired for good
	}
	if limit := now.Add(maxRevocation); until.After(limit) {
		until = limit // an exp past 2262 would overflow the stores' nanoseconds
	}
	err = g.store.Create(ctx, session.Record{Key: revokedIDTokenKey(raw), ExpiresAt: until, Data: []byte{1}})
	if errors.Is(err, session.ErrExists) {
		return nil
	}
	return err
}
