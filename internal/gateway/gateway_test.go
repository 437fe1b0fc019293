package gateway

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/oauth2-proxy/mockoidc"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/trustmesh/trustmesh/internal/configfile"
	"github.com/trustmesh/trustmesh/internal/gateway/session"
	"github.com/trustmesh/trustmesh/internal/gateway/session/sessiontest"
)

func b64json(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (h *harness) bearerGet(path, token string, hdr map[string]string) *http.Response {
	h.t.Helper()
	all := map[string]string{"Authorization": "Bearer " + token, "Accept": "application/json"}
	for k, v := range hdr {
		all[k] = v
	}
	return h.get(noFollow(h.browser()), path, all)
}

// TestTokenAttackTable: every forged, broken or out-of-date bearer token
// gets 401 and an audit line saying why; the upstream never sees it.
func TestTokenAttackTable(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	p := h.idp
	now := h.clock.Now()
	with := func(k string, v any) map[string]any { c := p.claims(now); c[k] = v; return c }
	without := func(k string) map[string]any { c := p.claims(now); delete(c, k); return c }
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pubDER, _ := x509.MarshalPKIXPublicKey(&p.key.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	good := p.token(t, p.claims(now))
	parts := strings.Split(good, ".")

	if r := h.bearerGet("/", good, nil); r.StatusCode != http.StatusOK {
		t.Fatalf("the good token: %d %s", r.StatusCode, bodyOf(r))
	}
	cases := []struct{ name, token, reason string }{
		{"alg none", b64json(map[string]string{"alg": "none", "typ": "JWT"}) + "." + b64json(p.claims(now)) + ".", "alg_not_allowed"},
		{"HS256 signed with the RSA public key", signJWT(t, jose.HS256, pubPEM, p.kid, p.claims(now)), "alg_not_allowed"},
		{"unknown kid", signJWT(t, jose.RS256, p.key, "kid-nobody-has", p.claims(now)), "unknown_kid"},
		{"signature from another key", signJWT(t, jose.RS256, other, p.kid, p.claims(now)), "bad_signature"},
		{"ES256 key, RSA kid", signJWT(t, jose.ES256, ec, p.kid, p.claims(now)), "unknown_kid"},
		{"tampered payload", parts[0] + "." + b64json(with("groups", []string{"admin-group"})) + "." + parts[2], "bad_signature"},
		{"expired", p.token(t, with("exp", now.Add(-time.Minute).Unix())), "expired"},
		{"nbf in the future", p.token(t, with("nbf", now.Add(5*time.Minute).Unix())), "not_yet_valid"},
		{"wrong iss", p.token(t, with("iss", "https://evil.example")), "wrong_issuer"},
		{"wrong aud", p.token(t, with("aud", "someone-else")), "wrong_audience"},
		{"missing exp", p.token(t, without("exp")), "missing_claim"},
		{"missing iat", p.token(t, without("iat")), "missing_claim"},
		{"missing sub", p.token(t, without("sub")), "missing_claim"},
		{"oversized", p.token(t, with("pad", strings.Repeat("x", 17<<10))), "oversized"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hits := h.up.hits.Load()
			r := h.bearerGet("/", tc.token, nil)
			if r.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401", r.StatusCode)
			}
			if !strings.Contains(r.Header.Get("WWW-Authenticate"), "invalid_token") {
				t.Errorf("WWW-Authenticate %q", r.Header.Get("WWW-Authenticate"))
			}
			if b := bodyOf(r); strings.Contains(b, tc.reason) {
				t.Errorf("the reason leaked to the client: %s", b)
			}
			if h.up.hits.Load() != hits {
				t.Fatal("the upstream saw the request")
			}
			a := h.lastAudit("access_decision")
			if a["decision"] != "deny" || a["status"] != float64(401) || !strings.Contains(a["reason"].(string), "bearer token rejected: "+tc.reason) {
				t.Fatalf("audit: %v", a)
			}
			if strings.Contains(readFile(t, h.audit)+h.logs.String(), tc.token) {
				t.Fatal("the token is in a log line")
			}
		})
	}
	if v := counterValue(h.gw.metrics.tokenRejections.WithLabelValues("expired")); v != 1 {
		t.Errorf("token_rejections{expired} = %v", v)
	}
}

// TestBearer403: a valid token the route refuses is 403, not 401.
func TestBearer403(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.idp.claims(h.clock.Now())
	c["groups"] = []string{"marketing"}
	r := h.bearerGet("/", h.idp.token(t, c), nil)
	if r.StatusCode != http.StatusForbidden {
		t.Fatalf("refused token: %d", r.StatusCode)
	}
	if a := h.lastAudit("access_decision"); a["check"] != "allow" || !strings.Contains(a["reason"].(string), "groups") || a["authenticated"] != true {
		t.Fatalf("audit: %v", a)
	}
	// The IdP's own access token (aud = client id) is a bearer token too.
	if got := counterValue(h.gw.metrics.requests.WithLabelValues("tool", "proxy", "deny")); got != 1 {
		t.Fatalf("requests{deny} = %v", got)
	}
}

// TestAllowLists: ORed within a key, ANDed across keys.
func TestAllowLists(t *testing.T) {
	h := newHarness(t, harnessOpts{mutate: func(c *Config) {
		c.Routes[0].Allow = &AllowConfig{Groups: []string{"data-team", "ops"}, Scopes: []string{"read:sensitive"}, Domains: []string{"example.com"}}
	}})
	now := h.clock.Now()
	for _, tc := range []struct {
		name   string
		mutate func(map[string]any)
		want   int
	}{
		{"all keys match", func(map[string]any) {}, 200},
		{"other group of the list", func(c map[string]any) { c["groups"] = []string{"ops"} }, 200},
		{"no listed group", func(c map[string]any) { c["groups"] = []string{"x"} }, 403},
		{"no scope", func(c map[string]any) { c["scope"] = "read:public" }, 403},
		{"other domain", func(c map[string]any) { c["email"] = "svc@evil.example" }, 403},
		{"domain suffix trick", func(c map[string]any) { c["email"] = "svc@notexample.com" }, 403},
		{"email not verified", func(c map[string]any) { c["email_verified"] = false }, 403},
		{"no email_verified claim", func(c map[string]any) { delete(c, "email_verified") }, 403},
	} {
		c := h.idp.claims(now)
		tc.mutate(c)
		if r := h.bearerGet("/", h.idp.token(t, c), nil); r.StatusCode != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, r.StatusCode, tc.want)
		}
	}
}

// An issuer whose tokens carry no email_verified claim can be trusted for
// email rules only when the config says so.
func TestBearerAllowUnverifiedEmail(t *testing.T) {
	h := newHarness(t, harnessOpts{mutate: func(c *Config) {
		c.Routes[0].Allow = &AllowConfig{Emails: []string{"svc@example.com"}}
		c.BearerTokens[0].AllowUnverifiedEmail = true
	}})
	c := h.idp.claims(h.clock.Now())
	delete(c, "email_verified")
	if r := h.bearerGet("/", h.idp.token(t, c), nil); r.StatusCode != http.StatusOK {
		t.Fatalf("allow_unverified_email: %d", r.StatusCode)
	}
}

// TestPolicyRoute: request.auth.* from the token reaches the policy engine.
func TestPolicyRoute(t *testing.T) {
	h := newHarness(t, harnessOpts{mutate: func(c *Config) {
		c.Routes[0].Allow = nil
		c.Routes[0].Policy = StringList{"testdata/admin-policy.yaml"}
	}})
	now := h.clock.Now()
	admin := h.idp.claims(now)
	admin["groups"] = []string{"admin-group"}
	user := h.idp.claims(now)
	for _, tc := range []struct {
		path   string
		claims map[string]any
		want   int
	}{
		{"/public/x", user, 200},
		{"/admin/x", admin, 200},
		{"/admin/x", user, 403},
		{"/public/../admin/x", user, 403},
		{"/other", admin, 403},
	} {
		if r := h.bearerGet(tc.path, h.idp.token(t, tc.claims), nil); r.StatusCode != tc.want {
			t.Errorf("%s: %d, want %d", tc.path, r.StatusCode, tc.want)
		}
	}
	if a := h.lastAudit("access_decision"); a["check"] != "policy" {
		t.Fatalf("audit: %v", a)
	}
}

// TestPolicyThatDoesNotApplyDenies: Istio allows when no policy applies;
// the gateway must not.
func TestPolicyThatDoesNotApplyDenies(t *testing.T) {
	h := newHarness(t, harnessOpts{mutate: func(c *Config) {
		c.Routes[0].Allow = nil
		c.Routes[0].Policy = StringList{"testdata/admin-policy.yaml"}
		c.Routes[0].PolicyLabels = map[string]string{"app": "something-else"}
	}})
	if r := h.bearerGet("/public/x", h.idp.token(t, h.idp.claims(h.clock.Now())), nil); r.StatusCode != http.StatusForbidden {
		t.Fatalf("a policy that does not select the route: %d", r.StatusCode)
	}
}

// TestSpoofedIdentityHeadersNeverReachUpstream.
func TestSpoofedIdentityHeadersNeverReachUpstream(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	spoof := map[string]string{
		"X-Auth-Request-User": "admin", "X-Auth-Request-Email": "admin@example.com", "X-Auth-Request-Groups": "admin-group",
		"X-Auth-Request-Preferred-Username": "root", "X-Trustmesh-Jwt-Assertion": "forged", "X-Forwarded-User": "admin",
		"X-Forwarded-Email": "admin@example.com", "X-Authenticated-User": "admin", "X-Forwarded-Access-Token": "x",
		// Read as X-Auth-Request-* by frameworks that map '_' to '-'.
		"X_Auth_Request_User": "admin", "X_Auth_Request_Email": "admin@example.com", "X-Trustmesh_Jwt_Assertion": "forged",
	}
	c := h.idp.claims(h.clock.Now())
	c["email"] = ""
	delete(c, "groups")
	c["groups"] = []string{"data-team"}
	r := h.bearerGet("/", h.idp.token(t, c), spoof)
	if r.StatusCode != http.StatusOK {
		t.Fatalf("%d", r.StatusCode)
	}
	hdr := h.up.header()
	if hdr.Get("X-Auth-Request-User") != "api-client-1" || hdr.Get("X-Auth-Request-Groups") != "data-team" ||
		hdr.Get("X-Auth-Request-Email") != "" || hdr.Get("X-Auth-Request-Preferred-Username") != "" ||
		hdr.Get("X-Forwarded-User") != "" || hdr.Get("X-Authenticated-User") != "" || hdr.Get("X-Forwarded-Email") != "" ||
		hdr.Get("X-Forwarded-Access-Token") != "" || hdr.Get("X-Trustmesh-Jwt-Assertion") == "forged" {
		t.Fatalf("upstream saw: %v", hdr)
	}
	for k := range hdr {
		if strings.Contains(k, "_") {
			t.Errorf("upstream saw %s: %q", k, hdr[k])
		}
	}
	// Unauthenticated requests with spoofed headers never reach it at all.
	hits := h.up.hits.Load()
	if r := h.get(noFollow(h.browser()), "/", map[string]string{"X-Auth-Request-User": "admin", "Accept": "application/json"}); r.StatusCode != 401 || h.up.hits.Load() != hits {
		t.Fatalf("unauthenticated spoof: %d", r.StatusCode)
	}
}

// TestForwardAuth: oauth2-proxy's /oauth2/auth for nginx auth_request.
func TestForwardAuth(t *testing.T) {
	h := newHarness(t, harnessOpts{mutate: func(c *Config) {
		c.Routes = []RouteConfig{
			{Name: "tool", Host: "tool.example.com", IdentityProvider: "corp", Allow: &AllowConfig{Groups: []string{"engineering"}}},
			{Name: "admin", Host: "tool.example.com", PathPrefix: "/admin", IdentityProvider: "corp", Allow: &AllowConfig{Groups: []string{"admins"}}},
		}
	}})
	fa := func(c *http.Client, host, uri string) *http.Response {
		return h.get(noFollow(c), "/oauth2/auth", map[string]string{"X-Forwarded-Host": host, "X-Original-URI": uri, "Accept": "*/*"})
	}
	anon := h.browser()
	if r := fa(anon, "tool.example.com", "/"); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no session: %d", r.StatusCode)
	}
	if r := fa(anon, "unknown.example.com", "/"); r.StatusCode != http.StatusForbidden {
		t.Fatalf("no route: %d", r.StatusCode)
	}
	// Sign in through /oauth2/start, as nginx's error_page sends the browser.
	c := h.browser()
	r := h.get(c, "/oauth2/start?rd=/after", nil)
	if r.Request.URL.Path != "/after" {
		t.Fatalf("login ended at %s", r.Request.URL)
	}
	r = fa(c, "tool.example.com", "/docs?x=1")
	if r.StatusCode != http.StatusAccepted || r.Header.Get("X-Auth-Request-User") != "1234567890" ||
		r.Header.Get("X-Auth-Request-Email") != "jane.doe@example.com" || r.Header.Get("X-Auth-Request-Groups") != "engineering,design" {
		t.Fatalf("with a session: %d %v", r.StatusCode, r.Header)
	}
	verifyAssertion(t, h, r.Header.Get("X-Trustmesh-Jwt-Assertion"), "tool.example.com", h.idp.m.Issuer()+"/1234567890")
	if r := fa(c, "tool.example.com", "/admin/users"); r.StatusCode != http.StatusForbidden {
		t.Fatalf("refused path: %d", r.StatusCode)
	}
	if r := fa(c, "tool.example.com", "/x/../admin/users"); r.StatusCode != http.StatusForbidden {
		t.Fatalf("dot-dot to the refused path: %d", r.StatusCode)
	}
	// X-Forwarded-Uri works as X-Original-URI does (Traefik, Caddy).
	r = h.get(noFollow(c), "/oauth2/auth", map[string]string{"X-Forwarded-Host": "tool.example.com", "X-Forwarded-Uri": "/admin/x"})
	if r.StatusCode != http.StatusForbidden {
		t.Fatalf("X-Forwarded-Uri: %d", r.StatusCode)
	}
	if a := h.lastAudit("access_decision"); a["mode"] != "forward_auth" || a["route"] != "admin" {
		t.Fatalf("audit: %v", a)
	}
	// A proxy that sets one of the two names passes the other on from the
	// client: two different values are refused, whichever is first.
	for _, hdr := range []map[string]string{
		{"X-Forwarded-Uri": "/admin/x", "X-Original-URI": "/docs"},
		{"X-Original-URI": "/admin/x", "X-Forwarded-Uri": "/docs"},
		{"X-Original-URI": "/docs", "X-Original-Method": "GET", "X-Forwarded-Method": "POST"},
	} {
		hdr["X-Forwarded-Host"] = "tool.example.com"
		if r := h.get(noFollow(c), "/oauth2/auth", hdr); r.StatusCode != http.StatusForbidden {
			t.Fatalf("%v: %d", hdr, r.StatusCode)
		}
		if a := h.lastAudit("access_decision"); !strings.Contains(fmt.Sprint(a["reason"]), "conflicting values") {
			t.Fatalf("%v: audit %v", hdr, a)
		}
	}
	same := map[string]string{"X-Forwarded-Host": "tool.example.com", "X-Original-URI": "/docs", "X-Forwarded-Uri": "/docs"}
	if r := h.get(noFollow(c), "/oauth2/auth", same); r.StatusCode != http.StatusAccepted {
		t.Fatalf("the same URI under both names: %d", r.StatusCode)
	}
	// Of an appended X-Forwarded-Host list the last value (the nearest
	// proxy's) picks the route, not the client's first.
	if r := fa(c, "tool.example.com, unknown.example.com", "/"); r.StatusCode != http.StatusForbidden {
		t.Fatalf("appended X-Forwarded-Host: %d", r.StatusCode)
	}
	if r := fa(c, "unknown.example.com,tool.example.com", "/"); r.StatusCode != http.StatusAccepted {
		t.Fatalf("appended X-Forwarded-Host, route last: %d", r.StatusCode)
	}
	// A bearer token answers too.
	tok := h.idp.claims(h.clock.Now())
	tok["groups"] = []string{"engineering"}
	r = h.get(noFollow(h.browser()), "/oauth2/auth", map[string]string{"X-Forwarded-Host": "tool.example.com", "X-Original-URI": "/", "Authorization": "Bearer " + h.idp.token(t, tok)})
	if r.StatusCode != http.StatusAccepted || r.Header.Get("X-Auth-Request-User") != "api-client-1" {
		t.Fatalf("bearer forward auth: %d", r.StatusCode)
	}
}

// TestRedisSharedSessions: two gateways on one real redis-server share
// sessions: login on one, use and sign out on the other; a refresh due on
// both happens once.
func TestRedisSharedSessions(t *testing.T) {
	addr := sessiontest.StartRedis(t)
	p := startIdP(t)
	up := startUpstream(t)
	clock := sessiontest.NewClock(time.Now())
	open := func() session.Store {
		s, err := session.Open(context.Background(), "redis://"+addr+"/0", session.Options{Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	keyFile := t.TempDir() + "/assertion.pem"
	mutate := func(c *Config) {
		c.Session.IdleTimeout.Raw = "1h"
		c.Assertion.SigningKeyFile = keyFile
	}
	a := newHarness(t, harnessOpts{idp: p, up: up, clock: clock, store: open(), mutate: mutate})
	b := newHarness(t, harnessOpts{idp: p, up: up, clock: clock, store: open(), mutate: mutate})
	c := a.login("/")
	cookie := sessionCookie(c, a.url, DefaultCookieName)
	onB := func() *http.Response {
		return b.get(noFollow(b.browser()), "/", map[string]string{"Cookie": DefaultCookieName + "=" + cookie.Value, "Accept": "application/json"})
	}
	if r := onB(); r.StatusCode != http.StatusOK {
		t.Fatalf("the session on the other replica: %d", r.StatusCode)
	}
	if a.gw.signer.KeyID() != b.gw.signer.KeyID() {
		t.Fatal("replicas with one key file must sign with one key")
	}
	// A refresh due on both replicas at once happens once.
	a.advance(9*time.Minute + 30*time.Second)
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(2)
		go func() { defer wg.Done(); _ = a.get(noFollow(c), "/", nil) }()
		go func() { defer wg.Done(); _ = onB() }()
	}
	wg.Wait()
	if n := p.refreshes.Load(); n != 1 {
		t.Fatalf("%d refresh grants across two replicas, want 1", n)
	}
	if r := onB(); r.StatusCode != http.StatusOK {
		t.Fatalf("after the shared refresh: %d", r.StatusCode)
	}
	// Sign out on B; A no longer knows the session.
	r := b.get(noFollow(b.browser()), "/oauth2/sign_out", map[string]string{"Cookie": DefaultCookieName + "=" + cookie.Value, "Sec-Fetch-Site": "same-origin"})
	if r.StatusCode != http.StatusFound {
		t.Fatalf("sign out on B: %d", r.StatusCode)
	}
	if r := a.get(noFollow(c), "/", map[string]string{"Accept": "application/json"}); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("on A after sign-out on B: %d", r.StatusCode)
	}
}

// TestWebSocketUpgrade: an upgrade passes through to the upstream, and
// the tunnel is closed, on both sides, once nothing has moved through it
// for limits.tunnel_idle_timeout; also when the upstream is the one that
// stopped reading (/silent), which closing the client's side alone would
// not end.
func TestWebSocketUpgrade(t *testing.T) {
	const idle = time.Second
	upstreamEnded := make(chan struct{}, 1)
	hold := make(chan struct{})
	defer close(hold)
	ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" || r.Header.Get("X-Auth-Request-User") == "" {
			http.Error(w, "want an authenticated upgrade", 400)
			return
		}
		conn, brw, ok := switchToWebSocket(w)
		if !ok {
			return
		}
		defer conn.Close()
		if r.URL.Path == "/silent" {
			<-hold // neither reads nor writes
			return
		}
		for { // until the gateway closes the tunnel
			line, err := brw.ReadString('\n')
			if err != nil {
				upstreamEnded <- struct{}{}
				return
			}
			_, _ = brw.WriteString("echo:" + line)
			_ = brw.Flush()
		}
	}))
	defer ws.Close()
	h := newHarness(t, harnessOpts{mutate: func(c *Config) {
		c.Routes[0].Upstream = ws.URL
		c.Limits.TunnelIdleTimeout = configfile.Duration{Value: idle}
	}})
	conn, br := dialWebSocket(t, h, "/ws")
	for i := 0; i < 8; i++ { // twice idle of traffic: the tunnel lives on
		fmt.Fprintf(conn, "ping %d\n", i)
		if line, err := br.ReadString('\n'); err != nil || line != fmt.Sprintf("echo:ping %d\n", i) {
			t.Fatalf("after the upgrade: %q %v", line, err)
		}
		time.Sleep(idle / 4)
	}
	start := time.Now()
	if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("an idle WebSocket stayed open: %v", err)
	}
	if waited := time.Since(start); waited < idle/2 {
		t.Fatalf("closed after %v, before it was idle", waited)
	}
	select {
	case <-upstreamEnded:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream side of the idle tunnel stayed open")
	}

	// The client floods an upstream that does not read: once the buffers
	// between them fill nothing moves, the tunnel is closed, and the relay
	// ends (its audit line is written when it does).
	silent, _ := dialWebSocket(t, h, "/silent")
	flood := make([]byte, 64<<10)
	for {
		if _, err := silent.Write(flood); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the tunnel to an upstream that stopped reading stayed open")
			}
			break
		}
	}
	h.waitForAudit(t, "/silent") // the relay to /silent to end
}

// TestShutdownEndsWebSockets: the gateway's shutdown ends WebSockets still
// open at its deadline (net/http's Shutdown does not wait for hijacked
// connections) and writes their audit records.
func TestShutdownEndsWebSockets(t *testing.T) {
	ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, ok := switchToWebSocket(w)
		if !ok {
			return
		}
		defer conn.Close()
		_, _ = io.Copy(conn, brw)
	}))
	defer ws.Close()
	h := newHarness(t, harnessOpts{mutate: func(c *Config) {
		c.Routes[0].Upstream = ws.URL
		c.Limits.ShutdownTimeout = configfile.Duration{Value: time.Second}
	}})
	_, br := dialWebSocket(t, h, "/drained")
	h.cancel()
	if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the WebSocket outlived the shutdown: %v", err)
	}
	h.waitForAudit(t, "/drained") // the drained WebSocket's audit record
}

// An upgrade other than WebSocket would make a tunnel past the per-request
// checks: h2c is dropped and the request served as HTTP/1.1, others get 400.
func TestUpgradeOtherThanWebSocketNotForwarded(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	tok := h.idp.token(t, h.idp.claims(h.clock.Now()))
	exchange := func(extra string) (*http.Response, string) {
		conn, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "GET /x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n%s\r\n", tok, extra)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp, bodyOf(resp)
	}
	before := h.up.hits.Load()
	resp, body := exchange("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n")
	if resp.StatusCode != http.StatusOK || body != "hello from upstream" || h.up.hits.Load() != before+1 {
		t.Fatalf("h2c upgrade: %d %q", resp.StatusCode, body)
	}
	if hdr := h.up.header(); hdr.Get("Upgrade") != "" || hdr.Get("Http2-Settings") != "" {
		t.Fatalf("the h2c upgrade reached the upstream: %v", hdr)
	}
	for _, up := range []string{"TLS/1.2", "foo", "websocket, h2c"} {
		resp, _ = exchange("Connection: Upgrade\r\nUpgrade: " + up + "\r\n")
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("Upgrade: %s: %d", up, resp.StatusCode)
		}
	}
	if h.up.hits.Load() != before+1 {
		t.Fatal("a refused upgrade reached the upstream")
	}
	if a := h.lastAudit("access_decision"); a["decision"] != "deny" || a["check"] != "upgrade" || !strings.Contains(fmt.Sprint(a["reason"]), "upgrade refused") {
		t.Fatalf("audit: %v", a)
	}
}

// TestGRPCUpstream: gRPC over h2c to the gateway, h2c to the upstream.
func TestGRPCUpstream(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	h := newHarness(t, harnessOpts{mutate: func(c *Config) { c.Routes[0].Upstream = "h2c://" + ln.Addr().String() }})
	cc, err := grpc.NewClient(strings.TrimPrefix(h.url, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok := h.idp.token(t, h.idp.claims(h.clock.Now()))
	resp, err := healthpb.NewHealthClient(cc).Check(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok), &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC through the gateway: %v %v", resp, err)
	}
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err == nil {
		t.Fatal("gRPC without a token must fail")
	}
}

// denyCheck stands for a later per-request check (device posture, risk).
type denyCheck struct{}

func (denyCheck) Name() string { return "device_posture" }
func (denyCheck) Check(_ context.Context, rq *Request) Verdict {
	if rq.Identity.Subject == "api-client-1" {
		return Verdict{Reason: "device_posture: disk not encrypted", Rule: -1}
	}
	return Verdict{Allow: true, Reason: "device_posture: ok", Rule: -1}
}

// TestExtraChecksSlotIn: a further check refuses what the route allows.
func TestExtraChecksSlotIn(t *testing.T) {
	h := newHarness(t, harnessOpts{checks: []Check{denyCheck{}}})
	if r := h.bearerGet("/", h.idp.token(t, h.idp.claims(h.clock.Now())), nil); r.StatusCode != http.StatusForbidden {
		t.Fatalf("%d", r.StatusCode)
	}
	if a := h.lastAudit("access_decision"); a["check"] != "device_posture" || !strings.Contains(a["reason"].(string), "disk") {
		t.Fatalf("audit: %v", a)
	}
}

func TestBodyLimit(t *testing.T) {
	h := newHarness(t, harnessOpts{mutate: func(c *Config) { c.Limits.MaxBodyBytes = 1024 }})
	tok := h.idp.token(t, h.idp.claims(h.clock.Now()))
	req, _ := http.NewRequest(http.MethodPost, h.url+"/upload", strings.NewReader(strings.Repeat("x", 4096)))
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The test upstream does not read the body, so the limit shows when
	// the proxy copies it: 413, or the upstream answered before reading.
	if resp.StatusCode != http.StatusRequestEntityTooLarge && resp.StatusCode != http.StatusOK {
		t.Fatalf("oversized body: %d", resp.StatusCode)
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

// assertionEmail reads the email claim of an identity assertion, without
// checking it (verifyAssertion does that).
func assertionEmail(t *testing.T, raw string) (string, bool) {
	t.Helper()
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("assertion %q: %v", raw, err)
	}
	var c map[string]any
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		t.Fatal(err)
	}
	e, ok := c["email"].(string)
	return e, ok
}

// TestUnverifiedEmailNotPassedOn: an email the IdP has not verified never
// reaches the upstream (header, assertion) or /oauth2/userinfo, for
// sessions and bearer tokens alike, unless allow_unverified_email says
// the issuer is trusted anyway. An upstream keying accounts on the email
// would otherwise let anyone claim anyone's address.
func TestUnverifiedEmailNotPassedOn(t *testing.T) {
	for _, trust := range []bool{false, true} {
		h := newHarness(t, harnessOpts{mutate: func(c *Config) {
			c.IdentityProviders[0].AllowUnverifiedEmail = trust
			c.BearerTokens[0].AllowUnverifiedEmail = trust
		}})
		check := func(via string, verified bool) {
			t.Helper()
			hdr := h.up.header()
			want := ""
			if verified || trust {
				want = "x@example.com"
			}
			got, _ := assertionEmail(t, hdr.Get("X-Trustmesh-Jwt-Assertion"))
			if hdr.Get("X-Auth-Request-Email") != want || got != want {
				t.Errorf("%s, verified %v, trusted %v: header %q, assertion %q, want %q", via, verified, trust,
					hdr.Get("X-Auth-Request-Email"), got, want)
			}
		}
		for _, verified := range []bool{false, true} {
			claims := h.idp.claims(h.clock.Now())
			claims["email"], claims["email_verified"] = "x@example.com", verified
			if r := h.bearerGet("/", h.idp.token(t, claims), nil); r.StatusCode != http.StatusOK {
				t.Fatalf("bearer: %d", r.StatusCode)
			}
			check("bearer", verified)

			h.idp.m.QueueUser(&mockoidc.MockUser{Subject: "u1", Email: "x@example.com", EmailVerified: verified, Groups: []string{"engineering"}})
			c := h.login("/")
			check("session", verified)
			var info struct{ Email string }
			if err := jsonDecode(h.get(c, "/oauth2/userinfo", nil), &info); err != nil || (info.Email != "") != (verified || trust) {
				t.Errorf("userinfo, verified %v, trusted %v: %+v %v", verified, trust, info, err)
			}
		}
	}
}

// downStore is a session store that fails every call while down is set
// (a Redis or SQLite outage), the memory store otherwise.
type downStore struct {
	session.Store
	down atomic.Bool
}

var errStoreDown = errors.New("connection refused")

func (s *downStore) Get(ctx context.Context, key string) (session.Record, error) {
	if s.down.Load() {
		return session.Record{}, errStoreDown
	}
	return s.Store.Get(ctx, key)
}

func (s *downStore) Delete(ctx context.Context, key string) error {
	if s.down.Load() {
		return errStoreDown
	}
	return s.Store.Delete(ctx, key)
}

func (s *downStore) TakeTicket(ctx context.Context, key string) ([]byte, error) {
	if s.down.Load() {
		return nil, errStoreDown
	}
	return s.Store.TakeTicket(ctx, key)
}

// TestStoreOutageFailsClosed: while the session store is down, sign-out
// says it failed (not "signed out" while the session lives on), and a
// login's callback gets 503, not "expired" (a hand-off:
// TestHandoffOnlyToServedHosts).
func TestStoreOutageFailsClosed(t *testing.T) {
	st := &downStore{Store: session.NewMemory(session.Options{})}
	h := newHarness(t, harnessOpts{store: st})
	c := h.login("/")
	cookie := sessionCookie(c, h.url, DefaultCookieName)
	st.down.Store(true)
	r := h.get(noFollow(c), "/oauth2/sign_out", map[string]string{"Sec-Fetch-Site": "same-origin"})
	if r.StatusCode != http.StatusServiceUnavailable || len(r.Cookies()) != 0 {
		t.Fatalf("sign-out with the store down: %d, cookies %v", r.StatusCode, r.Cookies())
	}
	if a := h.lastAudit("logout"); a["reason"] != "sign-out failed: session store unavailable" || a["decision"] != "deny" {
		t.Fatalf("audit %v", a)
	}
	// A login that reaches its callback while the store is down.
	b := noFollow(h.browser())
	r = h.get(b, "/oauth2/start?rd=/", nil)
	r = h.get(b, r.Header.Get("Location"), nil) // the provider answers at once
	callback := r.Header.Get("Location")
	if !strings.Contains(callback, "/oauth2/callback?") {
		t.Fatalf("the provider sent the browser to %q", callback)
	}
	r = h.get(b, callback, nil)
	if r.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("callback with the store down: %d", r.StatusCode)
	}
	if n := counterValue(h.gw.metrics.logins.WithLabelValues("unknown", "store_error")); n != 1 {
		t.Fatalf("logins{store_error} = %v", n)
	}
	// Back up: the session was never ended, and sign-out now works.
	st.down.Store(false)
	if r := h.get(noFollow(c), "/", nil); r.StatusCode != http.StatusOK {
		t.Fatalf("the session after the outage: %d", r.StatusCode)
	}
	if r := h.get(noFollow(c), "/oauth2/sign_out", map[string]string{"Sec-Fetch-Site": "same-origin"}); r.StatusCode != http.StatusFound {
		t.Fatalf("sign-out after the outage: %d", r.StatusCode)
	}
	jarless := noFollow(h.browser())
	if r := h.get(jarless, "/", map[string]string{"Cookie": DefaultCookieName + "=" + cookie.Value, "Accept": "application/json"}); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the signed-out cookie replayed: %d", r.StatusCode)
	}
}

// dialWebSocket opens a connection to the gateway (20 s deadline, closed
// when the test ends) and switches it to WebSocket at path with a valid
// bearer token.
func dialWebSocket(t *testing.T, h *harness, path string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	tok := h.idp.token(t, h.idp.claims(h.clock.Now()))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n", path, tok)
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade %s: %v %v", path, err, resp)
	}
	return c, br
}

// waitForAudit waits for an audit record of a request for path.
func (h *harness) waitForAudit(t *testing.T, path string) {
	t.Helper()
	waitFor(t, "an audit record for "+path, func() bool {
		for _, a := range h.auditLines() {
			if a["path"] == path {
				return true
			}
		}
		return false
	})
}

// switchToWebSocket is a test upstream's side of a WebSocket handshake:
// it hijacks the connection and answers 101.
func switchToWebSocket(w http.ResponseWriter) (net.Conn, *bufio.ReadWriter, bool) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, nil, false
	}
	_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	if err := brw.Flush(); err != nil {
		conn.Close()
		return nil, nil, false
	}
	return conn, brw, true
}
