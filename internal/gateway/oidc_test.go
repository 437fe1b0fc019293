package gateway

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/oauth2-proxy/mockoidc"

	"github.com/trustmesh/trustmesh/internal/gateway/session"
	"github.com/trustmesh/trustmesh/internal/gateway/session/sessiontest"
)

// TestLoginFlow: a browser without a session goes to the IdP (code +
// PKCE S256, state, nonce), comes back through /oauth2/callback to a
// server-side session, and reaches the upstream with its identity.
func TestLoginFlow(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.browser()
	first := h.get(noFollow(c), "/dashboard?x=1", nil)
	if first.StatusCode != http.StatusFound || !strings.HasPrefix(first.Header.Get("Location"), "/oauth2/start?rd=") {
		t.Fatalf("no session: %d %s", first.StatusCode, first.Header.Get("Location"))
	}
	start := h.get(noFollow(c), first.Header.Get("Location"), nil)
	loc, _ := url.Parse(start.Header.Get("Location"))
	q := loc.Query()
	if start.StatusCode != http.StatusFound || !strings.HasPrefix(loc.String(), h.idp.m.AuthorizationEndpoint()) ||
		q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43 || len(q.Get("state")) < 32 ||
		len(q.Get("nonce")) < 32 || q.Get("redirect_uri") != h.url+"/oauth2/callback" || q.Get("response_type") != "code" {
		t.Fatalf("authorization request: %s", loc)
	}
	resp := h.get(c, loc.String(), nil) // through the IdP and the callback
	if resp.StatusCode != http.StatusOK || resp.Request.URL.String() != h.url+"/dashboard?x=1" {
		t.Fatalf("after login: %d at %s", resp.StatusCode, resp.Request.URL)
	}
	hdr := h.up.header()
	if hdr.Get("X-Auth-Request-User") != "1234567890" || hdr.Get("X-Auth-Request-Email") != "jane.doe@example.com" ||
		hdr.Get("X-Auth-Request-Groups") != "engineering,design" || hdr.Get("X-Auth-Request-Preferred-Username") != "jane.doe" {
		t.Fatalf("identity headers: %v", hdr)
	}
	if hdr.Get("X-Test-Path") != "/dashboard" {
		t.Fatalf("upstream path %q", hdr.Get("X-Test-Path"))
	}
	if strings.Contains(hdr.Get("Cookie"), DefaultCookieName) {
		t.Fatalf("the session cookie reached the upstream: %q", hdr.Get("Cookie"))
	}
	verifyAssertion(t, h, hdr.Get("X-Trustmesh-Jwt-Assertion"), "127.0.0.1", h.idp.m.Issuer()+"/1234567890")

	ck := sessionCookie(c, h.url, DefaultCookieName)
	if ck == nil || !regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`).MatchString(ck.Value) {
		t.Fatalf("session cookie: %+v", ck)
	}
	// The cookie's attributes, from the callback's Set-Cookie.
	if h.idp.codes.Load() != 1 {
		t.Fatalf("%d code exchanges, want 1", h.idp.codes.Load())
	}
	a := h.lastAudit("login")
	if a["decision"] != "allow" || a["source_principal"] != h.idp.m.Issuer()+"/1234567890" || a["idp"] != "corp" {
		t.Fatalf("login audit: %v", a)
	}
	// The session goes on without the IdP.
	before := h.up.hits.Load()
	if r := h.get(c, "/other", nil); r.StatusCode != http.StatusOK || h.up.hits.Load() != before+1 {
		t.Fatalf("with the session: %d", r.StatusCode)
	}
	if h.idp.codes.Load() != 1 {
		t.Fatal("a request with a session went back to the IdP")
	}
	logs := h.logs.String() + readFile(t, h.audit)
	if strings.Contains(logs, ck.Value) {
		t.Fatal("the session cookie value is in a log line")
	}
}

func verifyAssertion(t *testing.T, h *harness, raw, aud, sub string) {
	t.Helper()
	resp := h.get(h.browser(), "/.well-known/trustmesh/jwks.json", nil)
	var set jose.JSONWebKeySet
	if err := jsonDecode(resp, &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("jwks: %v", err)
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("assertion %q: %v", raw, err)
	}
	var std jwt.Claims
	var extra struct {
		Email  string   `json:"email"`
		Groups []string `json:"groups"`
	}
	if err := tok.Claims(set.Keys[0].Key, &std, &extra); err != nil {
		t.Fatalf("assertion signature: %v", err)
	}
	if err := std.Validate(jwt.Expected{Issuer: h.url, AnyAudience: jwt.Audience{aud}, Time: h.clock.Now()}); err != nil {
		t.Fatalf("assertion claims: %v", err)
	}
	if std.Subject != sub {
		t.Fatalf("assertion sub %q, want %q", std.Subject, sub)
	}
}

func TestSessionCookieAttributes(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.browser()
	loc := h.get(noFollow(c), "/", nil).Header.Get("Location")
	authz := h.get(noFollow(c), loc, nil).Header.Get("Location")
	cb := h.get(noFollow(c), authz, nil).Header.Get("Location")
	resp := h.get(noFollow(c), cb, nil)
	var sc *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == DefaultCookieName {
			sc = ck
		}
	}
	if sc == nil || !sc.HttpOnly || sc.SameSite != http.SameSiteLaxMode || sc.Secure || sc.Path != "/" || len(sc.Value) != 43 {
		t.Fatalf("session cookie: %+v", sc)
	}
	for _, k := range []string{"Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy", "Cache-Control"} {
		if resp.Header.Get(k) == "" {
			t.Errorf("callback response lacks %s", k)
		}
	}
}

// TestCallbackReplayAndCSRF: a state is single use, and a callback from
// another browser (no binding cookie) is refused.
func TestCallbackReplayAndCSRF(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	victim := h.browser()
	attacker := h.browser()
	loc := h.get(noFollow(attacker), "/", nil).Header.Get("Location")
	authz := h.get(noFollow(attacker), loc, nil).Header.Get("Location")
	cb := h.get(noFollow(attacker), authz, nil).Header.Get("Location")
	// The attacker sends its callback URL to the victim (login CSRF).
	if r := h.get(noFollow(victim), cb, nil); r.StatusCode != http.StatusForbidden {
		t.Fatalf("callback without the binding cookie: %d", r.StatusCode)
	}
	if a := h.lastAudit("login"); a["decision"] != "deny" || !strings.Contains(a["reason"].(string), "state_not_bound") {
		t.Fatalf("audit: %v", a)
	}
	// The state was consumed: even the right browser cannot replay it.
	if r := h.get(noFollow(attacker), cb, nil); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("replayed callback: %d", r.StatusCode)
	}
	if r := h.get(noFollow(attacker), "/oauth2/callback?code=x&state=made-up", nil); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("made-up state: %d", r.StatusCode)
	}
}

func TestIdPErrorOnCallback(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.browser()
	loc := h.get(noFollow(c), "/", nil).Header.Get("Location")
	authz, _ := url.Parse(h.get(noFollow(c), loc, nil).Header.Get("Location"))
	state := authz.Query().Get("state")
	r := h.get(noFollow(c), "/oauth2/callback?error=access_denied&error_description=no&state="+url.QueryEscape(state), nil)
	if r.StatusCode != http.StatusForbidden || strings.Contains(bodyOf(r), "access_denied") {
		t.Fatalf("IdP error: %d %s", r.StatusCode, bodyOf(r))
	}
}

// TestRefresh: when the ID token nears expiry the session is renewed with
// the refresh token, once, however many requests arrive together.
func TestRefresh(t *testing.T) {
	h := newHarness(t, harnessOpts{mutate: func(c *Config) {
		c.Session.IdleTimeout.Raw = "1h"
	}})
	c := h.login("/")
	h.advance(9*time.Minute + 30*time.Second) // the mock's tokens live 10m; refresh_before is 1m
	var wg sync.WaitGroup
	codes := make([]int, 20)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, h.url+"/x", nil)
			resp, err := c.Do(req)
			if err == nil {
				codes[i] = resp.StatusCode
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	for i, code := range codes {
		if code != http.StatusOK {
			t.Fatalf("request %d: %d", i, code)
		}
	}
	if n := h.idp.refreshes.Load(); n != 1 {
		t.Fatalf("%d refresh grants for 20 concurrent requests, want 1", n)
	}
	// Refreshed: no further refresh until the new token nears expiry.
	h.advance(time.Minute)
	if r := h.get(c, "/y", nil); r.StatusCode != http.StatusOK || h.idp.refreshes.Load() != 1 {
		t.Fatalf("after refresh: %d, %d refreshes", r.StatusCode, h.idp.refreshes.Load())
	}
	h.advance(9 * time.Minute)
	if r := h.get(c, "/z", nil); r.StatusCode != http.StatusOK || h.idp.refreshes.Load() != 2 {
		t.Fatalf("second refresh: %d, %d refreshes", r.StatusCode, h.idp.refreshes.Load())
	}
}

// rotatingIdP is a real mockoidc provider whose token endpoint answers
// refresh grants itself, as providers that rotate refresh tokens do: each
// refresh token works once (a replay gets invalid_grant), and each answer
// carries a new one and an ID token made by idToken (the nth refresh).
func rotatingIdP(t *testing.T, idToken func(m *mockoidc.MockOIDC, n int) string) (*idp, func() []string) {
	t.Helper()
	m, err := mockoidc.NewServer(nil)
	if err != nil {
		t.Fatal(err)
	}
	p := &idp{m: m, key: m.Keypair.PrivateKey}
	var mu sync.Mutex
	used := map[string]bool{}
	var presented []string
	_ = m.AddMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_ = r.ParseForm()
			if r.URL.Path != mockoidc.TokenEndpoint || r.PostForm.Get("grant_type") != "refresh_token" || r.PostForm.Get("client_secret") == "" {
				next.ServeHTTP(w, r)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			rt := r.PostForm.Get("refresh_token")
			presented = append(presented, rt)
			w.Header().Set("Content-Type", "application/json")
			if used[rt] {
				w.WriteHeader(http.StatusBadRequest)
				_, _ = io.WriteString(w, `{"error":"invalid_grant","error_description":"refresh token reused"}`)
				return
			}
			used[rt] = true
			n := len(used)
			b, _ := json.Marshal(map[string]any{"access_token": fmt.Sprint("at-", n), "token_type": "Bearer", "expires_in": 600,
				"refresh_token": fmt.Sprint("rotated-", n), "id_token": idToken(m, n)})
			_, _ = w.Write(b)
		})
	})
	serveIdP(t, p)
	return p, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(presented)
	}
}

// TestRefreshKeepsRotatedToken: a refresh whose ID token does not verify
// (here signed with a key the JWKS does not have yet: a key rotation
// racing the cache) keeps the session's identity but saves the rotated
// refresh token, so the next refresh presents the new one, not the spent
// one (which would end the session). An ID token for another subject
// ends the session.
func TestRefreshKeepsRotatedToken(t *testing.T) {
	foreign, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	claimsFor := func(m *mockoidc.MockOIDC, sub string) map[string]any {
		now := m.Now()
		return map[string]any{"iss": m.Issuer(), "sub": sub, "aud": m.ClientID, "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(), "groups": []string{"engineering"}}
	}
	var p *idp
	p, presented := rotatingIdP(t, func(m *mockoidc.MockOIDC, n int) string {
		if n == 1 { // claims that must not reach the session
			claims := claimsFor(m, "1234567890")
			claims["groups"] = []string{"engineering", "admins"}
			return signJWT(t, jose.RS256, foreign, "a-new-key", claims)
		}
		return p.token(t, claimsFor(m, "1234567890"))
	})
	h := newHarness(t, harnessOpts{idp: p, mutate: func(c *Config) { c.Session.IdleTimeout.Raw = "1h" }})
	c := h.login("/")
	h.advance(9*time.Minute + 30*time.Second) // the first refresh: its ID token does not verify
	if r := h.get(noFollow(c), "/a", nil); r.StatusCode != http.StatusOK {
		t.Fatalf("after the first refresh: %d", r.StatusCode)
	}
	if g := h.up.header().Get("X-Auth-Request-Groups"); strings.Contains(g, "admins") {
		t.Fatalf("an unverified ID token's groups reached the session: %q", g)
	}
	h.advance(5 * time.Minute) // due again (5 minutes for an unverified one) and past the 30 s lock
	if r := h.get(noFollow(c), "/b", nil); r.StatusCode != http.StatusOK {
		t.Fatalf("after the second refresh: %d %s", r.StatusCode, r.Header.Get("Location"))
	}
	if got := presented(); len(got) != 2 || got[1] != "rotated-1" {
		t.Fatalf("refresh tokens presented: %q, want the original then rotated-1", got)
	}

	// Refreshes whose ID tokens never verify keep the session for at most
	// maxUnverifiedIdentity.
	never, _ := rotatingIdP(t, func(m *mockoidc.MockOIDC, n int) string {
		return signJWT(t, jose.RS256, foreign, "a-new-key", claimsFor(m, "1234567890"))
	})
	h = newHarness(t, harnessOpts{idp: never, mutate: func(c *Config) { c.Session.IdleTimeout.Raw = "1h" }})
	c = h.login("/")
	h.advance(9*time.Minute + 30*time.Second)
	start := h.clock.Now()
	for h.clock.Now().Sub(start) < maxUnverifiedIdentity-5*time.Minute {
		if r := h.get(noFollow(c), "/a", map[string]string{"Accept": "application/json"}); r.StatusCode != http.StatusOK {
			t.Fatalf("%v after the first unverified refresh: %d", h.clock.Now().Sub(start), r.StatusCode)
		}
		h.advance(5 * time.Minute)
	}
	h.advance(10 * time.Minute)
	if r := h.get(noFollow(c), "/a", map[string]string{"Accept": "application/json"}); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("past %v of unverified refreshes: %d", maxUnverifiedIdentity, r.StatusCode)
	}
	if a := h.lastAudit("logout"); !strings.Contains(fmt.Sprint(a["reason"]), "have not verified") {
		t.Fatalf("audit: %v", a)
	}

	other, _ := rotatingIdP(t, func(m *mockoidc.MockOIDC, n int) string {
		return signJWT(t, jose.RS256, m.Keypair.PrivateKey, "", claimsFor(m, "someone-else"))
	})
	h = newHarness(t, harnessOpts{idp: other, mutate: func(c *Config) { c.Session.IdleTimeout.Raw = "1h" }})
	c = h.login("/")
	h.advance(9*time.Minute + 30*time.Second)
	if r := h.get(noFollow(c), "/a", map[string]string{"Accept": "application/json"}); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a refresh for another subject: %d", r.StatusCode)
	}
}

// TestRefreshUnverifiedClockResets: a refresh whose ID token verifies
// again restarts the maxUnverifiedIdentity clock; without that, a session
// that once met an unverifiable token would end at the next one, however
// much later.
func TestRefreshUnverifiedClockResets(t *testing.T) {
	foreign, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	var verifies atomic.Bool
	var p *idp
	p, _ = rotatingIdP(t, func(m *mockoidc.MockOIDC, n int) string {
		now := m.Now()
		claims := map[string]any{"iss": m.Issuer(), "sub": "1234567890", "aud": m.ClientID, "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(), "groups": []string{"engineering"}}
		if verifies.Load() {
			return p.token(t, claims)
		}
		return signJWT(t, jose.RS256, foreign, "a-new-key", claims)
	})
	h := newHarness(t, harnessOpts{idp: p, mutate: func(c *Config) { c.Session.IdleTimeout.Raw = "1h" }})
	c := h.login("/")
	get := func(what string) {
		t.Helper()
		if r := h.get(noFollow(c), "/a", map[string]string{"Accept": "application/json"}); r.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", what, r.StatusCode)
		}
	}
	h.advance(9*time.Minute + 30*time.Second)
	get("an unverified refresh") // the clock starts
	verifies.Store(true)
	h.advance(5 * time.Minute)
	get("a verified refresh") // and stops
	verifies.Store(false)
	h.advance(9 * time.Minute)
	start := h.clock.Now()
	for h.clock.Now().Sub(start) < maxUnverifiedIdentity-5*time.Minute {
		get(fmt.Sprintf("%v into unverified refreshes again", h.clock.Now().Sub(start)))
		h.advance(5 * time.Minute)
	}
}

// failUpdates fails the next n session updates as an unreachable store.
type failUpdates struct {
	session.Store
	n atomic.Int32
}

func (s *failUpdates) Update(ctx context.Context, r session.Record) (session.Record, error) {
	if s.n.Add(-1) >= 0 {
		return session.Record{}, errStoreDown
	}
	return s.Store.Update(ctx, r)
}

// TestRefreshSaveRetried: a store that fails while a refresh saves the
// rotated refresh token is tried again (while the lock holds), so the
// next refresh presents the rotated token, not the spent one.
func TestRefreshSaveRetried(t *testing.T) {
	var p *idp
	p, presented := rotatingIdP(t, func(m *mockoidc.MockOIDC, n int) string {
		now := m.Now()
		return p.token(t, map[string]any{"iss": m.Issuer(), "sub": "1234567890", "aud": m.ClientID, "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(), "groups": []string{"engineering"}})
	})
	st := &failUpdates{Store: session.NewMemory(session.Options{})}
	h := newHarness(t, harnessOpts{idp: p, store: st, mutate: func(c *Config) { c.Session.IdleTimeout.Raw = "1h" }})
	c := h.login("/")
	h.advance(9*time.Minute + 30*time.Second)
	st.n.Store(3)
	if r := h.get(noFollow(c), "/a", nil); r.StatusCode != http.StatusOK {
		t.Fatalf("a refresh whose save failed three times: %d", r.StatusCode)
	}
	h.advance(10 * time.Minute)
	if r := h.get(noFollow(c), "/b", nil); r.StatusCode != http.StatusOK {
		t.Fatalf("the next refresh: %d %s", r.StatusCode, r.Header.Get("Location"))
	}
	if got := presented(); len(got) != 2 || got[1] != "rotated-1" {
		t.Fatalf("refresh tokens presented: %q", got)
	}
}

// deleteOnUpdate ends every session just before its update lands: a
// sign-out (on another replica) during a refresh.
type deleteOnUpdate struct {
	session.Store
	on atomic.Bool
}

func (s *deleteOnUpdate) Update(ctx context.Context, r session.Record) (session.Record, error) {
	if s.on.Load() {
		_ = s.Store.Delete(ctx, r.Key)
	}
	return s.Store.Update(ctx, r)
}

// TestSignOutDuringRefresh: a session signed out while its refresh runs
// is gone (401), not a store failure (503), and the refresh lock is given
// back.
func TestSignOutDuringRefresh(t *testing.T) {
	st := &deleteOnUpdate{Store: session.NewMemory(session.Options{})}
	h := newHarness(t, harnessOpts{store: st, mutate: func(c *Config) { c.Session.IdleTimeout.Raw = "1h" }})
	c := h.login("/")
	h.advance(9*time.Minute + 30*time.Second)
	st.on.Store(true)
	if r := h.get(noFollow(c), "/a", map[string]string{"Accept": "application/json"}); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a session signed out during its refresh: %d", r.StatusCode)
	}
	id, ok := parseSessionCookie(sessionCookie(c, h.url, DefaultCookieName).Value)
	if !ok {
		t.Fatal("no session cookie")
	}
	if _, err := st.TakeTicket(context.Background(), "refresh:"+id.key); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("the refresh lock was kept: %v", err)
	}
	if n := h.idp.refreshes.Load(); n != 1 {
		t.Fatalf("%d refreshes", n)
	}
}

// TestRefreshRevoked: a refresh the IdP refuses ends the session.
func TestRefreshRevoked(t *testing.T) {
	h := newHarness(t, harnessOpts{mutate: func(c *Config) { c.Session.IdleTimeout.Raw = "2h" }})
	c := h.login("/")
	// The refresh token (60m) is past its life: the IdP refuses it.
	h.advance(61 * time.Minute)
	r := h.get(noFollow(c), "/", nil)
	if r.StatusCode != http.StatusFound || !strings.HasPrefix(r.Header.Get("Location"), "/oauth2/start") {
		t.Fatalf("after a refused refresh: %d %s", r.StatusCode, r.Header.Get("Location"))
	}
	if a := h.lastAudit("logout"); !strings.Contains(a["reason"].(string), "refresh refused") {
		t.Fatalf("audit: %v", a)
	}
}

// TestExpiredSession: idle timeout and maximum lifetime end sessions.
func TestExpiredSession(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		h := newHarness(t, harnessOpts{mutate: func(c *Config) { c.Session.IdleTimeout.Raw = "5m" }})
		c := h.login("/")
		h.advance(4 * time.Minute)
		if r := h.get(noFollow(c), "/", nil); r.StatusCode != http.StatusOK {
			t.Fatalf("within the idle timeout: %d", r.StatusCode)
		}
		h.advance(4 * time.Minute) // 8m since login, 4m since the last request
		if r := h.get(noFollow(c), "/", nil); r.StatusCode != http.StatusOK {
			t.Fatalf("activity must renew the idle timer: %d", r.StatusCode)
		}
		h.advance(5*time.Minute + time.Second)
		r := h.get(noFollow(c), "/", nil)
		if r.StatusCode != http.StatusFound {
			t.Fatalf("idle session: %d", r.StatusCode)
		}
		api := h.get(noFollow(c), "/", map[string]string{"Accept": "application/json"})
		if api.StatusCode != http.StatusUnauthorized {
			t.Fatalf("idle session, API call: %d", api.StatusCode)
		}
	})
	t.Run("max_lifetime", func(t *testing.T) {
		h := newHarness(t, harnessOpts{mutate: func(c *Config) {
			c.Session.IdleTimeout.Raw = "20m"
			c.Session.MaxLifetime.Raw = "30m"
		}})
		c := h.login("/")
		for i := 0; i < 3; i++ {
			h.advance(9 * time.Minute)
			if r := h.get(noFollow(c), "/", nil); r.StatusCode != http.StatusOK {
				t.Fatalf("at %d×9m: %d", i+1, r.StatusCode)
			}
		}
		h.advance(4 * time.Minute) // 31m
		if r := h.get(noFollow(c), "/", nil); r.StatusCode != http.StatusFound {
			t.Fatalf("past max_lifetime: %d", r.StatusCode)
		}
	})
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// TestSignOut: sign-out needs the session's CSRF token (or a same-origin
// navigation), ends the session in the store and clears the cookie.
func TestSignOut(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.login("/")
	page := h.get(noFollow(c), "/oauth2/sign_out", nil)
	m := csrfRE.FindStringSubmatch(bodyOf(page))
	if page.StatusCode != http.StatusOK || m == nil {
		t.Fatalf("cross-site GET sign_out must ask for confirmation: %d %s", page.StatusCode, bodyOf(page))
	}
	if r := h.get(noFollow(c), "/", nil); r.StatusCode != http.StatusOK {
		t.Fatal("the confirmation page must not sign out")
	}
	// A forged POST (no token, or a wrong one) is refused.
	for _, tok := range []string{"", "AAAA", strings.Repeat("A", len(m[1]))} {
		resp, err := noFollow(c).PostForm(h.url+"/oauth2/sign_out", url.Values{"csrf": {tok}})
		if err != nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("POST with csrf %q: %v %d", tok, err, resp.StatusCode)
		}
	}
	resp, err := noFollow(c).PostForm(h.url+"/oauth2/sign_out", url.Values{"csrf": {m[1]}, "rd": {"/bye"}})
	if err != nil || resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != h.url+"/bye" {
		t.Fatalf("sign out: %v %d %s", err, resp.StatusCode, resp.Header.Get("Location"))
	}
	if r := h.get(noFollow(c), "/", nil); r.StatusCode != http.StatusFound {
		t.Fatalf("after sign-out: %d", r.StatusCode)
	}
	if a := h.lastAudit("logout"); a["decision"] != "allow" || a["source_principal"] != h.idp.m.Issuer()+"/1234567890" {
		t.Fatalf("logout audit: %v", a)
	}
}

// TestSignOutStolenCookieDead: after sign-out the old cookie value is
// useless, even replayed by hand.
func TestSignOutStolenCookieDead(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.login("/")
	stolen := sessionCookie(c, h.url, DefaultCookieName).Value
	if r := h.get(noFollow(c), "/oauth2/sign_out", map[string]string{"Sec-Fetch-Site": "same-origin"}); r.StatusCode != http.StatusFound {
		t.Fatalf("same-origin GET sign_out: %d", r.StatusCode)
	}
	r := h.get(noFollow(h.browser()), "/", map[string]string{"Cookie": DefaultCookieName + "=" + stolen, "Accept": "application/json"})
	if r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("replayed cookie after sign-out: %d", r.StatusCode)
	}
}

// TestSignOutRevokesIDToken: where a bearer audience is a login client's
// ID (the harness's configuration, which validate warns about), the ID
// token sign-out hands to the provider in a URL no longer passes as a
// bearer token, up to the end of the leeway past its exp, in every store.
// Other tokens for that audience still pass, and are checked against the
// store (503 while it is down); tokens for other audiences do not touch
// it.
func TestSignOutRevokesIDToken(t *testing.T) {
	stores := map[string]func(t *testing.T, clock *sessiontest.Clock) session.Store{
		"memory": func(t *testing.T, clock *sessiontest.Clock) session.Store {
			return session.NewMemory(session.Options{Now: clock.Now})
		},
		"sqlite": func(t *testing.T, clock *sessiontest.Clock) session.Store {
			s, err := session.OpenSQLite(context.Background(), t.TempDir()+"/sessions.db", session.Options{Now: clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		"redis": func(t *testing.T, clock *sessiontest.Clock) session.Store {
			s, err := session.Open(context.Background(), "redis://"+sessiontest.StartRedis(t)+"/0", session.Options{Now: clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			clock := sessiontest.NewClock(time.Now().Truncate(time.Millisecond))
			st := &downStore{Store: open(t, clock)}
			h := newHarness(t, harnessOpts{store: st, clock: clock, mutate: func(c *Config) {
				c.IdentityProviders[0].EndSessionURL = "http://127.0.0.1:1/logout"
			}})
			c := h.login("/")
			r := h.get(noFollow(c), "/oauth2/sign_out", map[string]string{"Sec-Fetch-Site": "same-origin"})
			loc, _ := url.Parse(r.Header.Get("Location"))
			idToken := loc.Query().Get("id_token_hint")
			if r.StatusCode != http.StatusFound || idToken == "" {
				t.Fatalf("sign-out: %d %s", r.StatusCode, loc)
			}
			// Until the last moment the verifier would still take it:
			// exp plus the leeway.
			parsed, err := jwt.ParseSigned(idToken, []jose.SignatureAlgorithm{jose.RS256})
			var std jwt.Claims
			if err != nil || parsed.UnsafeClaimsWithoutVerification(&std) != nil || std.Expiry == nil {
				t.Fatalf("the ID token: %v %v", err, std)
			}
			h.advance(std.Expiry.Time().Add(DefaultLeeway - 2*time.Second).Sub(h.clock.Now()))
			if r := h.bearerGet("/", idToken, nil); r.StatusCode != http.StatusUnauthorized {
				t.Fatalf("the signed-out session's ID token as a bearer token: %d", r.StatusCode)
			}
			if a := h.lastAudit("access_decision"); a["status"] != 401.0 || !strings.Contains(fmt.Sprint(a["reason"]), "revoked") {
				t.Fatalf("audit: %v", a)
			}
			if n := counterValue(h.gw.metrics.tokenRejections.WithLabelValues("revoked")); n != 1 {
				t.Fatalf("token rejections{revoked} = %v", n)
			}
			claims := h.idp.claims(h.clock.Now())
			claims["aud"] = []string{h.idp.m.ClientID}
			other := h.idp.token(t, claims)
			if r := h.bearerGet("/", other, nil); r.StatusCode != http.StatusOK {
				t.Fatalf("another token for the login client's audience: %d", r.StatusCode)
			}
			st.down.Store(true)
			if r := h.bearerGet("/", other, nil); r.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("a token for the login client's audience, store down: %d", r.StatusCode)
			}
			if r := h.bearerGet("/", h.idp.token(t, h.idp.claims(h.clock.Now())), nil); r.StatusCode != http.StatusOK {
				t.Fatalf("a token for the API's own audience, store down: %d", r.StatusCode)
			}
		})
	}
}

// failCreates fails the session store's Creates once armed, after the
// first ok ones: a store that goes down in the middle of a sign-out.
type failCreates struct {
	session.Store
	armed atomic.Bool
	ok    atomic.Int32
}

func (s *failCreates) Create(ctx context.Context, r session.Record) error {
	if s.armed.Load() && s.ok.Add(-1) < 0 {
		return errStoreDown
	}
	return s.Store.Create(ctx, r)
}

// TestSignOutTwoSessionsFailsWhole: signed in with two providers, a
// sign-out whose second revocation fails answers 503 and leaves both
// sessions as they were (every revocation comes before any deletion), so
// trying again can still revoke and end both.
func TestSignOutTwoSessionsFailsWhole(t *testing.T) {
	st := &failCreates{Store: session.NewMemory(session.Options{})}
	second := startIdP(t)
	h := newHarness(t, harnessOpts{store: st, mutate: func(c *Config) {
		c.IdentityProviders = append(c.IdentityProviders, ProviderConfig{Name: "second", Issuer: second.m.Issuer(),
			ClientID: second.m.ClientID, ClientSecret: second.m.ClientSecret, Scopes: []string{"openid", "profile", "email", "groups"}})
		c.BearerTokens = append(c.BearerTokens, BearerConfig{Issuer: second.m.Issuer(), Audiences: []string{second.m.ClientID}})
		c.Routes = append(c.Routes, RouteConfig{Name: "two", PathPrefix: "/two/", Upstream: c.Routes[0].Upstream, IdentityProvider: "second",
			Allow: &AllowConfig{Authenticated: true}})
	}})
	c := h.login("/")
	if r := h.get(c, "/two/", nil); r.StatusCode != http.StatusOK {
		t.Fatalf("login with the second provider: %d", r.StatusCode)
	}
	both := func(want int) {
		t.Helper()
		for _, path := range []string{"/", "/two/"} {
			if r := h.get(noFollow(c), path, nil); r.StatusCode != want {
				t.Fatalf("%s: %d, want %d", path, r.StatusCode, want)
			}
		}
	}
	st.ok.Store(1)
	st.armed.Store(true)
	if r := h.get(noFollow(c), "/oauth2/sign_out", map[string]string{"Sec-Fetch-Site": "same-origin"}); r.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("sign-out whose second revocation fails: %d", r.StatusCode)
	}
	both(http.StatusOK)
	st.armed.Store(false)
	if r := h.get(noFollow(c), "/oauth2/sign_out", map[string]string{"Sec-Fetch-Site": "same-origin"}); r.StatusCode != http.StatusFound {
		t.Fatalf("sign-out tried again: %d", r.StatusCode)
	}
	both(http.StatusFound)
}

// TestRevokeIDTokenCases: which ID tokens sign-out revokes, checked in the
// store (SQLite, whose nanosecond expiry is the narrowest). Bearer
// audiences [my-api], so only an ID token that also carries my-api could
// pass as a bearer token: that one is revoked, even with the JWKS down (it
// is not verified again) and with an exp centuries away; one for the
// client alone is not worth a record.
func TestRevokeIDTokenCases(t *testing.T) {
	for _, jwksDown := range []bool{false, true} {
		clock := sessiontest.NewClock(time.Now())
		st, err := session.OpenSQLite(context.Background(), t.TempDir()+"/sessions.db", session.Options{Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		h := newHarness(t, harnessOpts{store: st, clock: clock, mutate: func(c *Config) {
			c.BearerTokens[0].Audiences = []string{"my-api"}
			if jwksDown {
				c.BearerTokens[0].JWKSURL = "http://127.0.0.1:1/jwks"
			}
		}})
		idToken := func(aud []string, exp time.Time) string {
			claims := h.idp.claims(h.clock.Now())
			claims["aud"], claims["exp"] = aud, exp.Unix()
			return h.idp.token(t, claims)
		}
		soon := h.clock.Now().Add(10 * time.Minute)
		for _, tc := range []struct {
			name    string
			token   string
			revoked bool
		}{
			{"client and API audience", idToken([]string{h.idp.m.ClientID, "my-api"}, soon), true},
			{"exp in the year 3000", idToken([]string{h.idp.m.ClientID, "my-api"}, time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)), true},
			{"the client alone", idToken([]string{h.idp.m.ClientID}, soon), false},
			{"the API alone (no login client)", idToken([]string{"my-api"}, soon), false},
		} {
			if err := h.gw.revokeIDToken(context.Background(), tc.token); err != nil {
				t.Fatalf("jwks down %v, %s: %v", jwksDown, tc.name, err)
			}
			_, err := st.Get(context.Background(), revokedIDTokenKey(tc.token))
			if got := err == nil; got != tc.revoked {
				t.Errorf("jwks down %v, %s: revoked %v (%v), want %v", jwksDown, tc.name, got, err, tc.revoked)
			}
		}
	}
}

// TestRPInitiatedLogout: with an end_session endpoint the browser goes on
// to the IdP with id_token_hint and post_logout_redirect_uri.
func TestRPInitiatedLogout(t *testing.T) {
	h := newHarness(t, harnessOpts{mutate: func(c *Config) {
		c.IdentityProviders[0].EndSessionURL = "http://127.0.0.1:1/logout"
	}})
	c := h.login("/")
	r := h.get(noFollow(c), "/oauth2/sign_out?rd=/done", map[string]string{"Sec-Fetch-Site": "same-origin"})
	loc, _ := url.Parse(r.Header.Get("Location"))
	if r.StatusCode != http.StatusFound || loc.Host != "127.0.0.1:1" || loc.Path != "/logout" ||
		loc.Query().Get("id_token_hint") == "" || loc.Query().Get("post_logout_redirect_uri") != h.url+"/done" ||
		loc.Query().Get("client_id") != h.idp.m.ClientID {
		t.Fatalf("RP-initiated logout: %d %s", r.StatusCode, loc)
	}
	// The confirmation page's form may lead on to the provider's logout
	// (browsers apply form-action to the redirects after the POST).
	c = h.login("/")
	page := h.get(noFollow(c), "/oauth2/sign_out?rd=/done", nil)
	if csp := page.Header.Get("Content-Security-Policy"); page.StatusCode != http.StatusOK || !strings.Contains(csp, "form-action 'self' http://127.0.0.1:1 ") {
		t.Fatalf("confirmation page %d, CSP %q", page.StatusCode, csp)
	}
}

// TestOpenRedirectRefused: rd may only lead to the gateway's own host, a
// route's host or an allowed domain.
func TestOpenRedirectRefused(t *testing.T) {
	h := newHarness(t, harnessOpts{mutate: func(c *Config) {
		c.Routes = append(c.Routes, RouteConfig{Name: "other", Host: "app.example.com", Upstream: "http://127.0.0.1:1", IdentityProvider: "corp", Allow: &AllowConfig{Authenticated: true}})
	}})
	c := h.browser()
	for _, rd := range []string{
		"https://evil.example", "https://evil.example/", "//evil.example", "///evil.example", "/\\evil.example", "\\\\evil.example",
		"https://127.0.0.1.evil.example/", "https://evil.example@127.0.0.1/", "javascript:alert(1)", "data:text/html,x",
		"https:evil.example", "/%0d%0aLocation:%20https://evil.example", "/\tevil", " https://evil.example", "http://app.example.com.evil.example/",
		"ftp://127.0.0.1/",
	} {
		r := h.get(noFollow(c), "/oauth2/start?rd="+url.QueryEscape(rd), nil)
		if r.StatusCode != http.StatusBadRequest {
			t.Errorf("rd=%q: %d %s", rd, r.StatusCode, r.Header.Get("Location"))
		}
		r = h.get(noFollow(c), "/oauth2/sign_out?rd="+url.QueryEscape(rd), map[string]string{"Sec-Fetch-Site": "same-origin"})
		if r.StatusCode != http.StatusBadRequest {
			t.Errorf("sign_out rd=%q: %d %s", rd, r.StatusCode, r.Header.Get("Location"))
		}
	}
	for _, rd := range []string{"/ok?a=b", h.url + "/ok", "https://app.example.com/x"} {
		r := h.get(noFollow(c), "/oauth2/start?rd="+url.QueryEscape(rd), nil)
		if r.StatusCode != http.StatusFound {
			t.Errorf("rd=%q refused: %d", rd, r.StatusCode)
		}
	}
}

// TestSignInBackToItselfDoesNotLoop: a login whose return address is a
// login endpoint (nginx's error_page for a request to /oauth2/sign_in
// passes that as X-Auth-Request-Redirect) lands on the root, not in
// another login.
func TestSignInBackToItselfDoesNotLoop(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	for _, tc := range []struct {
		path string
		hdr  map[string]string
	}{
		{"/oauth2/sign_in?rd=" + url.QueryEscape("/oauth2/sign_in"), nil},
		{"/oauth2/start?rd=" + url.QueryEscape("/oauth2/start?rd=/x"), nil},
		{"/oauth2/sign_in", map[string]string{"X-Auth-Request-Redirect": "/oauth2/sign_in"}},
	} {
		resp := h.get(h.browser(), tc.path, tc.hdr) // a loop ends in the client's redirect limit
		if resp.StatusCode != http.StatusOK || resp.Request.URL.String() != h.url+"/" {
			t.Errorf("%s %v: %d at %s", tc.path, tc.hdr, resp.StatusCode, resp.Request.URL)
		}
	}
}

// TestHandoffOnlyToServedHosts: after login, a route's host on no cookie
// domain gets the session through a one-time code, bound to the browser
// that started the login on that host; a host that is only an allowed
// redirect target gets the browser, never a code.
func TestHandoffOnlyToServedHosts(t *testing.T) {
	st := &downStore{Store: session.NewMemory(session.Options{})}
	h := newHarness(t, harnessOpts{store: st, mutate: func(c *Config) {
		c.Routes = append(c.Routes,
			RouteConfig{Name: "app", Host: "app.example.com", Upstream: c.Routes[0].Upstream, IdentityProvider: "corp", Allow: &AllowConfig{Authenticated: true}, Origin: "https://app.example.com"},
			RouteConfig{Name: "app2", Host: "app2.example.com", Upstream: c.Routes[0].Upstream, IdentityProvider: "corp", Allow: &AllowConfig{Authenticated: true}})
		c.AllowedRedirectDomains = []string{"partner.example.org"}
	}})
	// onHost sends a request to the gateway as host (the client's jar is
	// keyed by 127.0.0.1, so cookies for host travel by hand).
	onHost := func(host, path string, cookies ...*http.Cookie) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, h.url+path, nil)
		req.Host = host
		for _, c := range cookies {
			req.AddCookie(c)
		}
		resp, err := noFollow(&http.Client{Timeout: 30 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	// follow goes through the login from start (on the gateway's own
	// host) while the redirects stay on 127.0.0.1 (the gateway and the
	// IdP) and returns where the callback sends the browser.
	follow := func(start string) *url.URL {
		c := h.browser()
		c.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
			if req.URL.Hostname() != "127.0.0.1" {
				return http.ErrUseLastResponse
			}
			return nil
		}
		r := h.get(c, start, nil)
		loc, err := url.Parse(r.Header.Get("Location"))
		if r.StatusCode != http.StatusFound || err != nil {
			t.Fatalf("login from %s: %d %q", start, r.StatusCode, r.Header.Get("Location"))
		}
		return loc
	}
	// startOnApp starts a login on the app host, as its unauthenticated
	// page would: the browser gets the hand-off cookie there and goes on
	// to the gateway's own host.
	startOnApp := func() (*http.Cookie, string) {
		r := onHost("app.example.com", "/oauth2/start?rd="+url.QueryEscape("https://app.example.com/y"))
		loc, err := url.Parse(r.Header.Get("Location"))
		if r.StatusCode != http.StatusFound || err != nil || loc.Hostname() != "127.0.0.1" || !isHexDigest(loc.Query().Get("hb")) {
			t.Fatalf("start on the app host: %d %q", r.StatusCode, r.Header.Get("Location"))
		}
		for _, c := range r.Cookies() {
			if c.Name == h.gw.handoffCookieName() && c.HttpOnly && c.Path == "/oauth2/" && c.SameSite == http.SameSiteLaxMode {
				return c, loc.RequestURI()
			}
		}
		t.Fatalf("no hand-off cookie: %v", r.Cookies())
		return nil, ""
	}
	codeFrom := func(loc *url.URL) string {
		code := loc.Query().Get("code")
		if loc.Host != "app.example.com" || loc.Path != "/oauth2/handoff" || code == "" {
			t.Fatalf("a login started on the route host ended at %s", loc)
		}
		return "/oauth2/handoff?code=" + url.QueryEscape(code)
	}

	if loc := follow("/oauth2/start?rd=" + url.QueryEscape("https://partner.example.org/x")); loc.String() != "https://partner.example.org/x" {
		t.Fatalf("an allowed_redirect_domains host got %s", loc)
	}
	// A login started on the gateway's own host for the app host sends
	// the browser there without a code (the app host starts a bound one).
	if loc := follow("/oauth2/start?rd=" + url.QueryEscape("https://app.example.com/y")); loc.String() != "https://app.example.com/y" {
		t.Fatalf("a login not started on the app host ended at %s", loc)
	}
	// A binding made up on the gateway's host does get a code, but one
	// bound to a cookie no browser was given: a real browser's cookie
	// does not redeem it.
	madeUp := codeFrom(follow("/oauth2/start?hb=" + strings.Repeat("ab", 32) + "&rd=" + url.QueryEscape("https://app.example.com/y")))
	if someone, _ := startOnApp(); onHost("app.example.com", madeUp, someone).StatusCode != http.StatusBadRequest {
		t.Fatalf("a code for a made-up binding was redeemed")
	}

	// The code works once, on that host only, with that browser's cookie.
	cookie, next := startOnApp()
	handoff := codeFrom(follow(next))
	if r := onHost("other.example.com", handoff, cookie); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("code on another host: %d", r.StatusCode)
	}
	cookie, next = startOnApp()
	handoff = codeFrom(follow(next))
	r := onHost("app.example.com", handoff, cookie)
	if r.StatusCode != http.StatusFound || r.Header.Get("Location") != "/y" || len(r.Cookies()) == 0 {
		t.Fatalf("hand-off: %d %q %v", r.StatusCode, r.Header.Get("Location"), r.Cookies())
	}
	if r := onHost("app.example.com", handoff, cookie); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("code used twice: %d", r.StatusCode)
	}

	// Login CSRF: an attacker's own code, redeemed by a victim's browser
	// (no hand-off cookie, or the one of the victim's own login), signs
	// nobody in.
	_, next = startOnApp()
	attackers := codeFrom(follow(next))
	if r := onHost("app.example.com", attackers); r.StatusCode != http.StatusBadRequest || len(r.Cookies()) != 0 {
		t.Fatalf("code without the hand-off cookie: %d %v", r.StatusCode, r.Cookies())
	}
	_, next = startOnApp()
	attackers = codeFrom(follow(next))
	victims, _ := startOnApp()
	r = onHost("app.example.com", attackers, victims)
	for _, c := range r.Cookies() {
		if c.Name == h.gw.cookieName("corp") && c.MaxAge >= 0 {
			t.Fatalf("a code issued to another browser set a session cookie")
		}
	}
	if r.StatusCode != http.StatusBadRequest || !strings.Contains(h.logs.String(), "issued to another browser") {
		t.Fatalf("code with another browser's cookie: %d\n%s", r.StatusCode, h.logs)
	}
	// The other way round: the attacker's hand-off binding in a link the
	// victim follows. The victim's login makes a code bound to the
	// attacker's cookie; the victim's browser presents it without that
	// cookie (refused), and that uses the code up, so the attacker cannot
	// redeem it with the cookie later, should it leak (browser history, a
	// front proxy's log).
	attackerCookie, next := startOnApp()
	victimsCode := codeFrom(follow(next))
	if r := onHost("app.example.com", victimsCode); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("the victim's browser, no hand-off cookie: %d", r.StatusCode)
	}
	r = onHost("app.example.com", victimsCode, attackerCookie)
	for _, c := range r.Cookies() {
		if c.Name == h.gw.cookieName("corp") && c.MaxAge >= 0 {
			t.Fatalf("a code refused once was redeemed later: %v", r.Cookies())
		}
	}
	if r.StatusCode != http.StatusBadRequest {
		t.Fatalf("a code refused once, presented again: %d", r.StatusCode)
	}
	// Codes go only to the host's origin (its route's origin, else
	// external_url's scheme and port): an rd on another port or scheme
	// gets an error page, neither a code (which would sit unspent in the
	// history of a browser that cannot reach it) nor the browser sent on
	// (which would loop through logins).
	for _, rd := range []string{"https://app.example.com:1/y", "http://app.example.com/y", "https://app2.example.com/y"} {
		u, _ := url.Parse(rd)
		r := onHost(u.Hostname(), "/oauth2/start?rd="+url.QueryEscape(rd))
		next, _ := url.Parse(r.Header.Get("Location"))
		c := h.browser()
		c.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
			if req.URL.Hostname() != "127.0.0.1" {
				return http.ErrUseLastResponse
			}
			return nil
		}
		if r := h.get(c, next.RequestURI(), nil); r.StatusCode != http.StatusBadRequest || r.Header.Get("Location") != "" {
			t.Fatalf("%s: a hand-off off the host's origin: %d %q", rd, r.StatusCode, r.Header.Get("Location"))
		}
		if a := h.lastAudit("login"); a["decision"] != "deny" || !strings.Contains(fmt.Sprint(a["reason"]), "handoff_origin") {
			t.Fatalf("%s: audit %v", rd, a)
		}
		for _, ck := range c.Jar.Cookies(&url.URL{Scheme: "http", Host: strings.TrimPrefix(h.url, "http://")}) {
			if ck.Name == h.gw.cookieName("corp") {
				t.Fatalf("%s: a refused login left a session", rd)
			}
		}
	}
	ext, _ := url.Parse(h.url)
	defaultOrigin := "http://app2.example.com:" + ext.Port() + "/y"
	start, _ := url.Parse(onHost("app2.example.com", "/oauth2/start?rd="+url.QueryEscape(defaultOrigin)).Header.Get("Location"))
	if loc := follow(start.RequestURI()); loc.Host != "app2.example.com:"+ext.Port() || loc.Path != "/oauth2/handoff" {
		t.Fatalf("a hand-off to the default origin: %s", loc)
	}
	// A good code while the session store is down: 503 (try again), not
	// "expired"; the cookie stays, so trying again works.
	cookie, next = startOnApp()
	handoff = codeFrom(follow(next))
	st.down.Store(true)
	if r := onHost("app.example.com", handoff, cookie); r.StatusCode != http.StatusServiceUnavailable || len(r.Cookies()) != 0 {
		t.Fatalf("hand-off with the store down: %d %v", r.StatusCode, r.Cookies())
	}
	st.down.Store(false)
	if r := onHost("app.example.com", handoff, cookie); r.StatusCode != http.StatusFound {
		t.Fatalf("hand-off tried again once the store is back: %d", r.StatusCode)
	}
}

// TestLoginStartsLimitedPerClient: every login started is a pending ticket
// in the store, so one client cannot start them without bound.
func TestLoginStartsLimitedPerClient(t *testing.T) {
	h := newHarness(t, harnessOpts{mutate: func(c *Config) { c.Limits.LoginsPerMinute = 2 }})
	c := noFollow(h.browser())
	for i := 0; i < 2; i++ {
		if r := h.get(c, "/oauth2/start?rd=/x", nil); r.StatusCode != http.StatusFound {
			t.Fatalf("login %d: %d", i, r.StatusCode)
		}
	}
	r := h.get(c, "/oauth2/start?rd=/x", nil)
	if r.StatusCode != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" {
		t.Fatalf("third login in a minute: %d", r.StatusCode)
	}
	if n := counterValue(h.gw.metrics.logins.WithLabelValues("corp", "rate_limited")); n != 1 {
		t.Fatalf("rate_limited logins counted %v", n)
	}
	h.advance(time.Minute)
	if r := h.get(c, "/oauth2/start?rd=/x", nil); r.StatusCode != http.StatusFound {
		t.Fatalf("after a minute: %d", r.StatusCode)
	}
}

// TestHostPrefixedCookieName: under a __Host- cookie name every cookie
// the gateway sets (login binding, session, and their clearing) is
// Secure, Path=/ and without Domain, or browsers would drop it. The
// gateway sits behind a TLS terminator here (X-Forwarded-Proto from
// loopback); the browser is played by hand because a cookie jar never
// sends Secure cookies over the test's plain http.
func TestHostPrefixedCookieName(t *testing.T) {
	var external string
	h := newHarness(t, harnessOpts{mutate: func(c *Config) {
		external = strings.Replace(c.ExternalURL, "http://", "https://", 1)
		c.ExternalURL = external
		c.Session.CookieName = "__Host-tm"
	}})
	cookies := map[string]string{}
	var setCookies []*http.Cookie
	hop := func(target string) *http.Response {
		t.Helper()
		target = strings.Replace(target, external, h.url, 1)
		hdr := map[string]string{}
		if strings.HasPrefix(target, h.url) || strings.HasPrefix(target, "/") {
			hdr["X-Forwarded-Proto"] = "https"
			var parts []string
			for k, v := range cookies {
				parts = append(parts, k+"="+v)
			}
			hdr["Cookie"] = strings.Join(parts, "; ")
		}
		resp := h.get(noFollow(http.DefaultClient), target, hdr)
		for _, c := range resp.Cookies() {
			setCookies = append(setCookies, c)
			if c.MaxAge < 0 {
				delete(cookies, c.Name)
			} else {
				cookies[c.Name] = c.Value
			}
		}
		return resp
	}
	resp := hop("/dashboard")
	for i := 0; i < 5 && resp.StatusCode == http.StatusFound; i++ {
		resp = hop(resp.Header.Get("Location"))
	}
	if resp.StatusCode != http.StatusOK || bodyOf(resp) != "hello from upstream" {
		t.Fatalf("login ended with %d: %s", resp.StatusCode, bodyOf(resp))
	}
	if _, ok := cookies["__Host-tm"]; !ok || len(cookies) != 1 {
		t.Fatalf("cookies after login: %v", cookies)
	}
	if len(setCookies) < 3 { // binding cookie set, session set, binding cleared
		t.Fatalf("Set-Cookie seen: %v", setCookies)
	}
	for _, c := range setCookies {
		if !strings.HasPrefix(c.Name, "__Host-tm") || !c.Secure || c.Path != "/" || c.Domain != "" || !c.HttpOnly {
			t.Errorf("a browser drops this __Host- cookie: %s", c)
		}
	}
	if ck := h.up.header().Get("Cookie"); strings.Contains(ck, "__Host-tm") {
		t.Fatalf("the gateway's cookie reached the upstream: %q", ck)
	}
}

// TestEndpointRefusalsAreAudited: every refusal at the gateway's own
// endpoints is an audit line with its reason, not only a log line.
func TestEndpointRefusalsAreAudited(t *testing.T) {
	h := newHarness(t, harnessOpts{mutate: func(c *Config) { c.Limits.LoginsPerMinute = 2 }})
	c := h.login("/") // the first login start
	expect := func(event string, status int, reason string) {
		t.Helper()
		a := h.lastAudit(event)
		if a["decision"] != "deny" || a["status"] != float64(status) || !strings.Contains(fmt.Sprint(a["reason"]), reason) {
			t.Errorf("%s audit: %v, want deny %d with %q", event, a, status, reason)
		}
	}
	if r := h.get(h.browser(), "/oauth2/userinfo", nil); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("userinfo without a session: %d", r.StatusCode)
	}
	expect("userinfo", http.StatusUnauthorized, "no session")

	if r := h.get(noFollow(c), "/oauth2/sign_out?rd="+url.QueryEscape("https://evil.example"), nil); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("sign-out to evil: %d", r.StatusCode)
	}
	expect("logout", http.StatusBadRequest, "redirect target refused")

	if r, err := noFollow(c).PostForm(h.url+"/oauth2/sign_out", url.Values{"csrf": {"wrong"}}); err != nil || r.StatusCode != http.StatusForbidden {
		t.Fatalf("sign-out without the CSRF token: %v %v", err, r)
	}
	expect("logout", http.StatusForbidden, "CSRF")

	if r := h.get(noFollow(c), "/oauth2/handoff?code=forged", nil); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("forged hand-off: %d", r.StatusCode)
	}
	expect("handoff", http.StatusBadRequest, "hand-off refused")

	h.get(noFollow(c), "/oauth2/start", nil) // the second start of this minute
	if r := h.get(noFollow(c), "/oauth2/start", nil); r.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third login start in a minute: %d", r.StatusCode)
	}
	expect("login", http.StatusTooManyRequests, "logins_per_minute")
	if strings.Contains(readFile(t, h.audit), "forged") {
		t.Error("a hand-off code is in the audit log")
	}
}

// TestDiscoveredPlainHTTPEndpointRefused: an identity provider on
// loopback whose discovery document sends the code and client secret to
// a plain-http token endpoint elsewhere gets no login started. The
// document is served by hand: it is the attack input, which mockoidc
// cannot be made to emit.
func TestDiscoveredPlainHTTPEndpointRefused(t *testing.T) {
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer": srv.URL, "authorization_endpoint": srv.URL + "/authorize", "token_endpoint": "http://idp.example.com/token",
			"jwks_uri": srv.URL + "/jwks", "id_token_signing_alg_values_supported": []string{"RS256"},
		})
	}))
	t.Cleanup(srv.Close)
	h := newHarness(t, harnessOpts{mutate: func(c *Config) {
		c.IdentityProviders[0].Issuer = srv.URL
		c.BearerTokens = nil
	}})
	r := h.get(noFollow(h.browser()), "/oauth2/start", nil)
	if r.StatusCode != http.StatusBadGateway {
		t.Fatalf("login start with a plain-http token endpoint: %d %s", r.StatusCode, r.Header.Get("Location"))
	}
	if !strings.Contains(h.logs.String(), "token_endpoint") {
		t.Fatalf("the log does not say why:\n%s", h.logs)
	}
}
