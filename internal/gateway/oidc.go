package gateway

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/trustmesh/trustmesh/internal/accesslog"
	"github.com/trustmesh/trustmesh/internal/gateway/bearer"
	"github.com/trustmesh/trustmesh/internal/gateway/session"
)

// oidcProvider is one identity provider, discovered lazily: a provider
// that is down at start does not stop the gateway, and is retried.
type oidcProvider struct {
	cfg  Provider
	g    *Gateway
	mu   sync.Mutex
	cur  *discovered
	last time.Time
	err  error
}

type discovered struct {
	oauth      oauth2.Config
	verifier   *oidc.IDTokenVerifier
	endSession string
}

func (p *oidcProvider) get(_ context.Context) (*discovered, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur != nil {
		return p.cur, nil
	}
	if !p.last.IsZero() && time.Since(p.last) < 5*time.Second {
		return nil, p.err
	}
	p.last = time.Now()
	// The provider keeps this context for later key fetches: not the
	// request's. The client's timeout bounds each fetch.
	prov, err := oidc.NewProvider(oidc.ClientContext(context.Background(), p.g.httpClient), p.cfg.Issuer)
	if err != nil {
		p.err = fmt.Errorf("identity provider %s: discovery: %w", p.cfg.Name, err)
		return nil, p.err
	}
	var extra struct {
		EndSession string `json:"end_session_endpoint"`
		JWKSURI    string `json:"jwks_uri"`
	}
	_ = prov.Claims(&extra)
	// The issuer passed the https-unless-loopback rule; the endpoints its
	// document names must too (the code and the client secret go to the
	// token endpoint, the keys come from jwks_uri).
	for _, ep := range []struct{ name, url string }{
		{"authorization_endpoint", prov.Endpoint().AuthURL}, {"token_endpoint", prov.Endpoint().TokenURL},
		{"jwks_uri", extra.JWKSURI}, {"end_session_endpoint", extra.EndSession},
	} {
		if ep.url == "" && ep.name == "end_session_endpoint" {
			continue
		}
		if err := bearer.CheckEndpoint(ep.url); err != nil {
			p.err = fmt.Errorf("identity provider %s: discovery: %s %w", p.cfg.Name, ep.name, err)
			return nil, p.err
		}
	}
	d := &discovered{
		oauth: oauth2.Config{
			ClientID: p.cfg.ClientID, ClientSecret: p.cfg.ClientSecret, Endpoint: prov.Endpoint(),
			RedirectURL: p.g.set.ExternalURL.String() + "/oauth2/callback", Scopes: p.cfg.Scopes,
		},
		verifier: prov.Verifier(&oidc.Config{
			ClientID: p.cfg.ClientID, SupportedSigningAlgs: bearer.AsymmetricAlgorithms, Now: p.g.now,
		}),
		endSession: extra.EndSession,
	}
	if p.cfg.EndSessionURL != "" {
		d.endSession = p.cfg.EndSessionURL
	}
	p.cur, p.err = d, nil
	return d, nil
}

// loginState is what /oauth2/start remembers for /oauth2/callback, in the
// store under a hash of the state parameter, single use.
type loginState struct {
	Provider string `json:"provider"`
	Verifier string `json:"verifier"`
	Nonce    string `json:"nonce"`
	RD       string `json:"rd"`
	Binding  string `json:"binding"` // hash of the browser's binding cookie
	// HandoffBinding is the hash of the hand-off cookie set on rd's host
	// when the login started there; empty: no hand-off.
	HandoffBinding string    `json:"handoff_binding,omitempty"`
	Started        time.Time `json:"started"`
}

func randomString(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashString(prefix, v string) string {
	s := sha256.Sum256([]byte(prefix + "\x00" + v))
	return hex.EncodeToString(s[:])
}

// startLogin redirects the browser to the identity provider (code flow,
// PKCE S256, state and nonce). rd is an already-validated absolute URL.
// handoffBinding (hex SHA-256 or empty) is what a session hand-off to rd's
// host will require of the browser there.
func (g *Gateway) startLogin(w http.ResponseWriter, r *http.Request, p *oidcProvider, rd, handoffBinding string) {
	if ip := g.clientIP(r); !g.loginLimiter.allow(ip) {
		g.log.Warn("login start refused: limits.logins_per_minute reached", "provider", p.cfg.Name, "client_ip", ip.String())
		g.metrics.logins.WithLabelValues(p.cfg.Name, "rate_limited").Inc()
		g.auditRefusal(r, "login", p.cfg.Name, "login start refused: limits.logins_per_minute reached", http.StatusTooManyRequests)
		w.Header().Set("Retry-After", "60")
		g.errorPage(w, http.StatusTooManyRequests, "Too many sign-in attempts", "Wait a minute, then start again from the application.")
		return
	}
	d, err := p.get(r.Context())
	if err != nil {
		g.log.Error("cannot start login", "provider", p.cfg.Name, "err", err)
		g.metrics.logins.WithLabelValues(p.cfg.Name, "idp_unavailable").Inc()
		g.auditRefusal(r, "login", p.cfg.Name, "login start failed: the identity provider cannot be reached", http.StatusBadGateway)
		g.errorPage(w, http.StatusBadGateway, "Sign-in is unavailable", "The identity provider cannot be reached. Try again shortly.")
		return
	}
	binding := ""
	if c, err := r.Cookie(g.csrfCookieName()); err == nil && len(c.Value) == 43 {
		binding = c.Value
	} else {
		binding = randomString(32)
	}
	// The binding cookie ties the callback to this browser (login CSRF).
	g.setLoginCookie(w, r, g.csrfCookieName(), binding)
	state, nonce, verifier := randomString(32), randomString(32), oauth2.GenerateVerifier()
	ls := loginState{Provider: p.cfg.Name, Verifier: verifier, Nonce: nonce, RD: rd, Binding: hashString("binding", binding), HandoffBinding: handoffBinding, Started: g.now()}
	b, _ := json.Marshal(ls)
	sealed, err := seal(deriveID([]byte(state)).subkey("login state"), b, "login")
	if err == nil {
		err = g.store.PutTicket(r.Context(), "login:"+hashString("state", state), sealed, g.set.LoginTimeout)
	}
	if err != nil {
		g.log.Error("cannot store login state", "provider", p.cfg.Name, "err", err)
		g.metrics.logins.WithLabelValues(p.cfg.Name, "store_error").Inc()
		g.auditRefusal(r, "login", p.cfg.Name, "login start failed: cannot store the login state", http.StatusServiceUnavailable)
		g.errorPage(w, http.StatusServiceUnavailable, "Sign-in is unavailable", "Try again shortly.")
		return
	}
	u := d.oauth.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier))
	setPageHeaders(w)
	http.Redirect(w, r, u, http.StatusFound)
}

// loginFailed logs, audits and counts a failed callback; the browser gets
// a generic page.
func (g *Gateway) loginFailed(w http.ResponseWriter, r *http.Request, provider, outcome, detail string, status int) {
	g.log.Warn("login failed", "provider", provider, "outcome", outcome, "detail", detail, "client_ip", g.clientIP(r).String())
	g.metrics.logins.WithLabelValues(orDefault(provider, "unknown"), outcome).Inc()
	g.audit.write(&accesslog.Record{
		Event: "login", Direction: "inbound", Listener: "gateway", Protocol: "http", SourceIP: g.clientIP(r).String(),
		Method: r.Method, Path: "/oauth2/callback", Host: r.Host, Decision: "deny", Reason: "login failed: " + outcome + ": " + detail,
		Status: status, IdP: provider, Mode: "login",
	})
	g.errorPage(w, status, "Sign-in failed", "Sign-in could not be completed. Start again from the application.")
}

// callback completes a login: state, binding cookie, code exchange with
// the PKCE verifier, ID token verification and nonce, then a new session.
func (g *Gateway) callback(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	q := r.URL.Query()
	state := q.Get("state")
	if state == "" || len(state) > 256 {
		g.loginFailed(w, r, "", "state_missing", "no state parameter", http.StatusBadRequest)
		return
	}
	sealed, err := g.store.TakeTicket(ctx, "login:"+hashString("state", state))
	switch {
	case errors.Is(err, session.ErrNotFound):
		g.loginFailed(w, r, "", "state_unknown", "unknown, expired or already used state", http.StatusBadRequest)
		return
	case err != nil:
		g.loginFailed(w, r, "", "store_error", "cannot read the login state: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	raw, err := open(deriveID([]byte(state)).subkey("login state"), sealed, "login")
	var ls loginState
	if err != nil || json.Unmarshal(raw, &ls) != nil {
		g.loginFailed(w, r, "", "state_unknown", "login state does not decode", http.StatusBadRequest)
		return
	}
	p := g.providers[ls.Provider]
	if p == nil {
		g.loginFailed(w, r, ls.Provider, "state_unknown", "the login's identity provider is no longer configured", http.StatusBadRequest)
		return
	}
	bc, err := r.Cookie(g.csrfCookieName())
	if err != nil || !subtleEqual(hashString("binding", bc.Value), ls.Binding) {
		g.loginFailed(w, r, ls.Provider, "state_not_bound", "the callback came without the browser binding cookie of the login it names (login CSRF?)", http.StatusForbidden)
		return
	}
	if e := q.Get("error"); e != "" {
		g.loginFailed(w, r, ls.Provider, "idp_error", fmt.Sprintf("the identity provider answered %s: %s", truncateForLog(e), truncateForLog(q.Get("error_description"))), http.StatusForbidden)
		return
	}
	code := q.Get("code")
	if code == "" {
		g.loginFailed(w, r, ls.Provider, "code_missing", "no code parameter", http.StatusBadRequest)
		return
	}
	d, err := p.get(ctx)
	if err != nil {
		g.loginFailed(w, r, ls.Provider, "idp_unavailable", err.Error(), http.StatusBadGateway)
		return
	}
	xctx, cancel := context.WithTimeout(oidc.ClientContext(ctx, g.httpClient), 15*time.Second)
	defer cancel()
	tok, err := d.oauth.Exchange(xctx, code, oauth2.VerifierOption(ls.Verifier))
	if err != nil {
		g.loginFailed(w, r, ls.Provider, "exchange_failed", oauthErr(err), http.StatusBadGateway)
		return
	}
	rawID, _ := tok.Extra("id_token").(string)
	if rawID == "" {
		g.loginFailed(w, r, ls.Provider, "id_token_invalid", "the token response has no id_token", http.StatusBadGateway)
		return
	}
	idt, err := d.verifier.Verify(ctx, rawID)
	if err != nil {
		g.loginFailed(w, r, ls.Provider, "id_token_invalid", err.Error(), http.StatusForbidden)
		return
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(ls.Nonce)) != 1 {
		g.loginFailed(w, r, ls.Provider, "nonce_mismatch", "the ID token's nonce is not the login's", http.StatusForbidden)
		return
	}
	if idt.AccessTokenHash != "" {
		if err := idt.VerifyAccessToken(tok.AccessToken); err != nil {
			g.loginFailed(w, r, ls.Provider, "id_token_invalid", "at_hash: "+err.Error(), http.StatusForbidden)
			return
		}
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		g.loginFailed(w, r, ls.Provider, "id_token_invalid", err.Error(), http.StatusForbidden)
		return
	}
	now := g.now()
	sd := &sessionData{
		Provider: p.cfg.Name, IDToken: rawID, AccessToken: tok.AccessToken, RefreshToken: tok.RefreshToken,
		TokenExpiry: idt.Expiry, CreatedAt: now, LastSeen: now, Scopes: grantedScopes(tok, p.cfg.Scopes),
	}
	fillFromClaims(sd, claims, p.cfg)
	// A hand-off goes only to its host's origin: rd comes from a URL, and
	// an origin (scheme, port) nothing of ours answers on would leave the code unspent in
	// the browser's history, for whoever holds the hand-off cookie (an
	// attacker's, whose link started this login). Refused before anything
	// is created; not sent on to rd either, which would start the login
	// again, and again.
	handoffTo, handoff := g.handoffTarget(ls)
	if handoff {
		if want := g.handoffOrigin(hostOnly(handoffTo.Host)); normalOrigin(handoffTo) != want {
			g.loginFailed(w, r, ls.Provider, "handoff_origin", normalOrigin(handoffTo)+" is not the host's origin "+want+" (set routes[].origin if browsers reach it there)", http.StatusBadRequest)
			return
		}
	}
	// A new login always gets a new session id (no fixation); the old one
	// of this browser, if any, ends.
	if old, err := r.Cookie(g.cookieName(p.cfg.Name)); err == nil {
		if oid, ok := parseSessionCookie(old.Value); ok {
			_ = g.store.Delete(ctx, oid.key)
		}
	}
	id, value, err := g.createSession(ctx, sd)
	if err != nil {
		g.loginFailed(w, r, ls.Provider, "store_error", err.Error(), http.StatusServiceUnavailable)
		return
	}
	g.metrics.logins.WithLabelValues(p.cfg.Name, "success").Inc()
	g.log.Info("login", "provider", p.cfg.Name, "principal", sd.Issuer+"/"+sd.Subject, "user", sd.User, "session", id.ref(), "client_ip", g.clientIP(r).String())
	g.audit.write(&accesslog.Record{
		Event: "login", Direction: "inbound", Listener: "gateway", Protocol: "http", SourcePrincipal: sd.Issuer + "/" + sd.Subject,
		SourceIP: g.clientIP(r).String(), Method: r.Method, Path: "/oauth2/callback", Host: r.Host, Decision: "allow",
		Reason: "login succeeded", Status: http.StatusFound, Authenticated: true, User: sd.User, Email: sd.Email,
		AuthMethod: "session", IdP: p.cfg.Name, Session: id.ref(), Mode: "login",
	})
	g.setSessionCookie(w, r, p.cfg.Name, value, g.set.MaxLifetime)
	g.clearCookie(w, r, g.csrfCookieName(), g.loginCookiePath())
	setPageHeaders(w)
	target := ls.RD
	if handoff {
		// Another host of ours, where this login started: hand the session
		// over with a one-time code bound to that host's cookie.
		if h, err := g.handoff(ctx, id, p.cfg.Name, handoffTo, ls.HandoffBinding); err == nil {
			target = h
		} else {
			g.log.Warn("session hand-off failed", "host", handoffTo.Host, "err", err)
		}
	}
	http.Redirect(w, r, target, http.StatusFound)
}

func truncateForLog(s string) string {
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

// oauthErr describes a token endpoint error without the request's secrets.
func oauthErr(err error) string {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		if re.ErrorCode != "" {
			return "token endpoint: " + truncateForLog(re.ErrorCode) + ": " + truncateForLog(re.ErrorDescription)
		}
		if re.Response != nil {
			return "token endpoint: " + re.Response.Status
		}
	}
	return truncateForLog(err.Error())
}

func grantedScopes(tok *oauth2.Token, requested []string) []string {
	if s, ok := tok.Extra("scope").(string); ok && s != "" {
		return strings.Fields(s)
	}
	return requested
}

// fillFromClaims maps ID token claims to the session's identity.
func fillFromClaims(sd *sessionData, claims map[string]any, p Provider) {
	sd.Claims = claims
	sd.Issuer, _ = claims["iss"].(string)
	sd.Subject, _ = claims["sub"].(string)
	sd.User = claimString(claims, p.UserClaim)
	if sd.User == "" {
		sd.User = sd.Subject
	}
	sd.Email = claimString(claims, p.EmailClaim)
	sd.EmailVerified, _ = claims["email_verified"].(bool)
	sd.PreferredUsername = claimString(claims, "preferred_username")
	sd.Groups = claimStrings(claims, p.GroupsClaim)
	sd.Audiences = claimStrings(claims, "aud")
	sd.Presenter = claimString(claims, "azp")
}

func claimString(claims map[string]any, name string) string {
	s, _ := claims[name].(string)
	return s
}

func claimStrings(claims map[string]any, name string) []string {
	switch v := claims[name].(type) {
	case string:
		if v == "" {
			return nil
		}
		return []string{v}
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	case []string:
		return v
	}
	return nil
}

// refreshSession renews the session's tokens with its refresh token.
// Concurrent requests of this process share one refresh (singleflight);
// replicas coordinate with a lock ticket in the shared store, so a
// refresh token is used once. Whoever loses the race uses the session as
// stored; an update that meets a concurrent change is re-applied to the
// newer record, so a rotated refresh token is never lost.
func (g *Gateway) refreshSession(ctx context.Context, ls *liveSession) (*liveSession, error) {
	v, err, _ := g.refreshes.Do(ls.id.key, func() (any, error) {
		return g.doRefresh(context.WithoutCancel(ctx), ls)
	})
	if err != nil {
		return nil, err
	}
	return v.(*liveSession), nil
}

// refreshLockTTL is how long one replica holds a session's refresh;
// saveReserve of it is kept for saving what the provider answered.
const (
	refreshLockTTL = 30 * time.Second
	saveReserve    = 8 * time.Second
)

// maxUnverifiedIdentity bounds how long a session lives on an identity
// that refreshes can no longer confirm (their ID tokens do not verify).
const maxUnverifiedIdentity = time.Hour

// endOnRefresh ends a session whose refresh showed it must not go on, and
// says why in the log and the audit log.
func (g *Gateway) endOnRefresh(ctx context.Context, cur *liveSession, p *oidcProvider, lock, reason string) error {
	g.metrics.refreshes.WithLabelValues(p.cfg.Name, "revoked").Inc()
	g.log.Warn("session ended: "+reason, "session", cur.id.ref())
	ctx = context.WithoutCancel(ctx) // (the refresh's deadline may have passed)
	_ = g.store.Delete(ctx, cur.id.key)
	_, _ = g.store.TakeTicket(ctx, lock)
	g.audit.write(&accesslog.Record{
		Event: "logout", Direction: "inbound", Listener: "gateway", Protocol: "http", SourcePrincipal: cur.data.Issuer + "/" + cur.data.Subject,
		Decision: "deny", Reason: "session ended: " + reason,
		Authenticated: false, User: cur.data.User, AuthMethod: "session", IdP: p.cfg.Name, Session: cur.id.ref(), Mode: "refresh",
	})
	return fmt.Errorf("%w: %s", errNoSession, reason)
}

func (g *Gateway) doRefresh(ctx context.Context, ls *liveSession) (*liveSession, error) {
	lock := "refresh:" + ls.id.key
	p := g.providers[ls.data.Provider]
	err := g.store.PutTicket(ctx, lock, []byte(g.instance), refreshLockTTL)
	// Everything from here, the provider's answer and the save included,
	// must be done while the lock is ours: after it, another replica may
	// refresh with the refresh token this one is about to replace.
	lockedUntil := time.Now().Add(refreshLockTTL - 5*time.Second) // (a margin for the store's clock)
	ctx, cancelLocked := context.WithDeadline(ctx, lockedUntil)
	defer cancelLocked()
	// The provider gets the lock's time but saveReserve: saving what it
	// answered must not find the time used up.
	fetchCtx, cancelFetch := context.WithDeadline(ctx, lockedUntil.Add(-saveReserve))
	defer cancelFetch()
	if errors.Is(err, session.ErrExists) {
		// Another replica is refreshing (or failed within 30 s): the session
		// as stored is what this request gets.
		return g.reload(ctx, ls)
	}
	if err != nil {
		g.log.Warn("session refresh lock failed", "session", ls.id.ref(), "err", err)
		return ls, nil
	}
	cur, err := g.reload(ctx, ls)
	if err != nil {
		return nil, err
	}
	if cur.rec.Version != ls.rec.Version && g.now().Before(cur.data.TokenExpiry.Add(-g.set.RefreshBefore)) {
		_, _ = g.store.TakeTicket(ctx, lock)
		return cur, nil // refreshed meanwhile
	}
	d, err := p.get(fetchCtx)
	if err != nil {
		g.metrics.refreshes.WithLabelValues(p.cfg.Name, "error").Inc()
		g.log.Warn("session refresh: identity provider unavailable; keeping the session", "session", ls.id.ref(), "err", err)
		return cur, nil
	}
	rctx, cancel := context.WithTimeout(oidc.ClientContext(fetchCtx, g.httpClient), 15*time.Second)
	defer cancel()
	tok, err := d.oauth.TokenSource(rctx, &oauth2.Token{RefreshToken: cur.data.RefreshToken, Expiry: time.Unix(1, 0)}).Token()
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && (re.ErrorCode == "invalid_grant" || re.Response != nil && re.Response.StatusCode == http.StatusUnauthorized) {
			// The identity provider revoked the grant: the session ends.
			g.metrics.refreshes.WithLabelValues(p.cfg.Name, "revoked").Inc()
			g.log.Info("session refresh refused by the identity provider: session ended", "session", ls.id.ref(), "detail", oauthErr(err))
			_ = g.store.Delete(ctx, ls.id.key)
			_, _ = g.store.TakeTicket(ctx, lock)
			g.audit.write(&accesslog.Record{
				Event: "logout", Direction: "inbound", Listener: "gateway", Protocol: "http", SourcePrincipal: cur.data.Issuer + "/" + cur.data.Subject,
				Decision: "deny", Reason: "session ended: refresh refused by the identity provider: " + oauthErr(err),
				Authenticated: false, User: cur.data.User, AuthMethod: "session", IdP: p.cfg.Name, Session: ls.id.ref(), Mode: "refresh",
			})
			return nil, fmt.Errorf("%w: refresh refused", errNoSession)
		}
		g.metrics.refreshes.WithLabelValues(p.cfg.Name, "error").Inc()
		g.log.Warn("session refresh failed; keeping the session, retrying in 30s", "session", ls.id.ref(), "detail", oauthErr(err))
		return cur, nil
	}
	// From here on the token endpoint has answered: a provider that
	// rotates refresh tokens has spent the old one, so the new one must
	// be saved whatever else goes wrong (replaying the old one would end
	// the session, and with reuse detection revoke the user's grant).
	var claims map[string]any
	var timedOut bool
	expiry := tok.Expiry
	rawID, _ := tok.Extra("id_token").(string)
	if rawID != "" {
		idt, err := d.verifier.Verify(fetchCtx, rawID)
		// (Out of time for the check is no verdict on the token: it
		// neither counts towards maxUnverifiedIdentity nor ends anything.)
		timedOut = err != nil && fetchCtx.Err() != nil
		switch {
		case err != nil && !timedOut && !cur.data.UnverifiedSince.IsZero() && g.now().Sub(cur.data.UnverifiedSince) > maxUnverifiedIdentity:
			return nil, g.endOnRefresh(ctx, cur, p, lock, "refresh ID tokens have not verified for "+maxUnverifiedIdentity.String())
		case err != nil:
			// A key rotation the provider's JWKS does not show yet, or a
			// JWKS outage: keep the identity the session has (nothing
			// from this token is used), save the new tokens, and refresh
			// (and verify) again in a few minutes, for at most
			// maxUnverifiedIdentity.
			g.metrics.refreshes.WithLabelValues(p.cfg.Name, "error").Inc()
			g.log.Warn("session refresh returned an ID token that does not verify; keeping the session's identity, retrying in 5m", "session", ls.id.ref(), "err", err)
			rawID, expiry = "", g.now().Add(5*time.Minute)
		case idt.Subject != cur.data.Subject || idt.Issuer != cur.data.Issuer:
			return nil, g.endOnRefresh(ctx, cur, p, lock, "refresh answered with an ID token for another subject")
		default:
			_ = idt.Claims(&claims)
			expiry = idt.Expiry
		}
	}
	if expiry.IsZero() || expiry.Before(g.now()) || expiry.After(g.now().Add(24*time.Hour*365)) {
		expiry = g.now().Add(5 * time.Minute)
	}
	apply := func(sd *sessionData) {
		sd.AccessToken = tok.AccessToken
		if tok.RefreshToken != "" {
			sd.RefreshToken = tok.RefreshToken
		}
		switch {
		case rawID != "":
			sd.IDToken = rawID
			fillFromClaims(sd, claims, p.cfg)
			sd.UnverifiedSince = time.Time{}
		case tok.Extra("id_token") == nil:
			// The provider sends no ID token on refresh: nothing failed
			// to verify, and it still honours the grant.
			sd.UnverifiedSince = time.Time{}
		case !timedOut && sd.UnverifiedSince.IsZero():
			sd.UnverifiedSince = g.now()
		}
		sd.TokenExpiry = expiry
	}
	// Concurrent requests update the session too (its idle expiry):
	// retry on a conflict until the new tokens are in, or the session is
	// gone (signed out meanwhile), for as long as the lock is ours (after
	// that another replica may refresh with the spent token anyway).
	// A store error is retried too (with a growing pause), while the lock
	// holds: a lost rotated refresh token ends the session.
	for attempt := 1; ; attempt++ {
		nd := *cur.data
		apply(&nd)
		sealed, err := cur.id.sealData(&nd)
		if err != nil {
			return nil, err
		}
		rec := cur.rec
		rec.Data, rec.ExpiresAt = sealed, g.expiresAt(&nd)
		next, err := g.store.Update(ctx, rec)
		if errors.Is(err, session.ErrConflict) {
			switch newer, rerr := g.reload(ctx, cur); {
			case errors.Is(rerr, errNoSession):
				_, _ = g.store.TakeTicket(context.WithoutCancel(ctx), lock)
				return nil, rerr
			case rerr != nil:
				err = rerr // the store failed: retried like any store error
			default:
				cur = newer
			}
		}
		if errors.Is(err, session.ErrNotFound) {
			_, _ = g.store.TakeTicket(context.WithoutCancel(ctx), lock)
			return nil, fmt.Errorf("%w: session %s ended during its refresh", errNoSession, ls.id.ref())
		}
		if err != nil {
			pause := min(time.Duration(attempt)*10*time.Millisecond, 200*time.Millisecond)
			if errors.Is(err, session.ErrConflict) && attempt <= 3 {
				pause = 0 // a newer record is loaded: apply to it at once
			}
			if time.Now().Add(pause).Before(lockedUntil) {
				time.Sleep(pause)
				continue
			}
			// The store stayed down (or the conflicts never ended) for as
			// long as the lock held: the new refresh token is lost.
			g.log.Error("session refresh: cannot save the new tokens", "session", ls.id.ref(), "err", err)
			return nil, err
		}
		_, _ = g.store.TakeTicket(context.WithoutCancel(ctx), lock)
		g.metrics.refreshes.WithLabelValues(p.cfg.Name, "ok").Inc()
		g.log.Debug("session refreshed", "session", ls.id.ref(), "token_expiry", expiry)
		return &liveSession{id: cur.id, rec: next, data: &nd}, nil
	}
}

func (g *Gateway) reload(ctx context.Context, ls *liveSession) (*liveSession, error) {
	rec, err := g.store.Get(ctx, ls.id.key)
	if errors.Is(err, session.ErrNotFound) {
		return nil, fmt.Errorf("%w: session %s ended", errNoSession, ls.id.ref())
	}
	if err != nil {
		return nil, err
	}
	d, err := ls.id.openData(rec.Data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoSession, err)
	}
	return &liveSession{id: ls.id, rec: rec, data: d}, nil
}

// handoff is a one-time code that gives host the session: Pomerium's way
// to share one login across hosts no cookie domain covers. The store
// holds the session secret sealed with a key only the code derives.
// binding is the hash of the hand-off cookie the browser must show there.
func (g *Gateway) handoff(ctx context.Context, id sessionID, provider string, rd *url.URL, binding string) (string, error) {
	code := randomString(32)
	b, _ := json.Marshal(handoffTicket{Secret: base64.RawURLEncoding.EncodeToString(id.secret), Provider: provider, Host: hostOnly(rd.Host), RD: rd.RequestURI(), Binding: binding})
	sealed, err := seal(deriveID([]byte(code)).subkey("handoff"), b, "handoff")
	if err != nil {
		return "", err
	}
	if err := g.store.PutTicket(ctx, "handoff:"+hashString("handoff", code), sealed, handoffTTL); err != nil {
		return "", err
	}
	u := url.URL{Scheme: rd.Scheme, Host: rd.Host, Path: "/oauth2/handoff", RawQuery: url.Values{"code": {code}}.Encode()}
	return u.String(), nil
}

// handoffTarget is where a login's session is handed over to, if it is:
// another host of ours where the login started (its hand-off binding),
// on no cookie domain. A host that is only in allowed_redirect_domains
// gets the browser, never the session; a login started on the gateway's
// host for another host sends the browser there, and that host starts
// its own bound login.
func (g *Gateway) handoffTarget(ls loginState) (*url.URL, bool) {
	u, err := url.Parse(ls.RD)
	if err != nil || ls.HandoffBinding == "" || g.coveredByCookie(u.Host) || !g.servesHost(strings.ToLower(u.Hostname())) {
		return nil, false
	}
	return u, true
}

// handoffOrigin is where browsers reach host, the one place its hand-off
// codes go: its route's origin (a *.domain route's with host in it), or
// external_url's scheme and port with host.
func (g *Gateway) handoffOrigin(host string) string {
	exact := false // a route names host itself: its origin or the default, never a *.domain route's
	for _, rt := range g.set.Routes {
		if rt.Host == host {
			exact = true
			if rt.Origin != "" {
				return rt.Origin
			}
		}
	}
	for _, rt := range g.set.Routes {
		if !exact && rt.Origin != "" && strings.HasPrefix(rt.Host, "*.") && hostMatches(rt.Host, host) {
			return strings.Replace(rt.Origin, rt.Host, host, 1)
		}
	}
	return origin(g.set.ExternalURL.Scheme, host, g.set.ExternalURL.Port())
}

// handoffTTL is how long a hand-off code is good for: the callback's
// redirect is followed at once, and the shorter the life of a code, the
// shorter that of one left in a browser's history.
const handoffTTL = 20 * time.Second

type handoffTicket struct {
	Secret   string `json:"secret"`
	Provider string `json:"provider"`
	Host     string `json:"host"`
	RD       string `json:"rd"`
	Binding  string `json:"binding"` // hash of the hand-off cookie
}

func (g *Gateway) handoffCookieName() string { return g.set.CookieName + "_handoff" }

// serveHandoff redeems a hand-off code on the host it was made for, in
// the browser that started the login there (its hand-off cookie).
func (g *Gateway) serveHandoff(w http.ResponseWriter, r *http.Request) {
	code := r.URL.Query().Get("code")
	fail := func(detail string) {
		g.log.Warn("session hand-off refused", "detail", detail, "host", r.Host, "client_ip", g.clientIP(r).String())
		g.auditRefusal(r, "handoff", "", "session hand-off refused: "+detail, http.StatusBadRequest)
		g.errorPage(w, http.StatusBadRequest, "Sign-in link expired", "Start again from the application.")
	}
	if code == "" || len(code) > 128 {
		fail("no code")
		return
	}
	// The code is used up before anything else is checked: one that a
	// browser presented and was refused (a login an attacker's link
	// started, bound to the attacker's cookie) must not stay redeemable
	// for whoever holds that cookie and later reads the code from the
	// victim's history or a front proxy's log.
	sealed, err := g.store.TakeTicket(r.Context(), "handoff:"+hashString("handoff", code))
	bc, cerr := r.Cookie(g.handoffCookieName())
	if cerr == nil && (err == nil || errors.Is(err, session.ErrNotFound)) {
		// (Kept while the store is down: the 503 says try again.)
		g.clearCookie(w, r, g.handoffCookieName(), g.loginCookiePath())
	}
	switch {
	case errors.Is(err, session.ErrNotFound):
		fail("unknown, expired or used code")
		return
	case err != nil:
		g.log.Error("session hand-off failed: session store unavailable", "err", err)
		g.auditRefusal(r, "handoff", "", "session hand-off failed: session store unavailable", http.StatusServiceUnavailable)
		g.errorPage(w, http.StatusServiceUnavailable, "Sign-in is unavailable", "Try again shortly.")
		return
	}
	if cerr != nil || bc.Value == "" {
		fail("no hand-off cookie: the login did not start in this browser")
		return
	}
	raw, err := open(deriveID([]byte(code)).subkey("handoff"), sealed, "handoff")
	var t handoffTicket
	if err != nil || json.Unmarshal(raw, &t) != nil {
		fail("code does not decode")
		return
	}
	if t.Host != hostOnly(g.hostOf(r)) {
		fail("code for host " + t.Host + " used on " + hostOnly(g.hostOf(r)))
		return
	}
	if !subtleEqual(hashString("handoff binding", bc.Value), t.Binding) { // (an empty t.Binding never equals a hash)
		fail("hand-off cookie does not match: the code was issued to another browser")
		return
	}
	setPageHeaders(w)
	g.setSessionCookie(w, r, t.Provider, t.Secret, g.set.MaxLifetime)
	rd := t.RD
	if !strings.HasPrefix(rd, "/") || strings.HasPrefix(rd, "//") {
		rd = "/"
	}
	http.Redirect(w, r, rd, http.StatusFound)
}
