package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
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

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var (
	idpKeyOnce sync.Once
	idpKey     *rsa.PrivateKey
)

// idp is a real OIDC provider (mockoidc), counting token requests.
type idp struct {
	m         *mockoidc.MockOIDC
	key       *rsa.PrivateKey
	kid       string
	refreshes atomic.Int32
	codes     atomic.Int32
}

func startIdP(t *testing.T) *idp {
	t.Helper()
	idpKeyOnce.Do(func() {
		var err error
		if idpKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
	m, err := mockoidc.NewServer(idpKey)
	if err != nil {
		t.Fatal(err)
	}
	p := &idp{m: m, key: idpKey}
	_ = m.AddMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == mockoidc.TokenEndpoint {
				_ = r.ParseForm()
				switch r.PostForm.Get("grant_type") {
				case "refresh_token":
					if r.PostForm.Get("client_secret") != "" { // the retry auto-detection makes with the secret in the form
						p.refreshes.Add(1)
					}
				case "authorization_code":
					if r.PostForm.Get("client_secret") != "" {
						p.codes.Add(1)
					}
				}
			}
			next.ServeHTTP(w, r)
		})
	})
	serveIdP(t, p)
	return p
}

// serveIdP starts p's provider on a loopback port until the test ends.
func serveIdP(t *testing.T, p *idp) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.m.Start(ln, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.m.Shutdown() })
	p.kid, _ = p.m.Keypair.KeyID()
}

// token signs claims with the IdP's key (or another alg/key for attacks).
func (p *idp) token(t *testing.T, claims map[string]any) string {
	t.Helper()
	return signJWT(t, jose.RS256, p.key, p.kid, claims)
}

func signJWT(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
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

func (p *idp) claims(now time.Time) map[string]any {
	return map[string]any{
		"iss": p.m.Issuer(), "sub": "api-client-1", "aud": []string{"my-api"},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		"scope": "read:sensitive", "groups": []string{"data-team"}, "email": "svc@example.com", "email_verified": true,
	}
}

// upstream records what reached it.
type upstream struct {
	srv  *httptest.Server
	mu   sync.Mutex
	last http.Header
	hits atomic.Int32
}

func startUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		u.mu.Lock()
		u.last = r.Header.Clone()
		u.last.Set("X-Test-Path", r.URL.Path)
		u.last.Set("X-Test-Host", r.Host)
		u.mu.Unlock()
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "hello from upstream")
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) header() http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last.Clone()
}

type harness struct {
	t      *testing.T
	idp    *idp
	up     *upstream
	clock  *sessiontest.Clock
	gw     *Gateway
	url    string
	logs   *syncBuffer
	audit  string
	cancel context.CancelFunc
	done   chan error
}

type harnessOpts struct {
	mutate func(*Config)
	store  session.Store
	idp    *idp
	clock  *sessiontest.Clock
	up     *upstream
	checks []Check
}

func baseConfig(p *idp, up *upstream) Config {
	return Config{
		IdentityProviders: []ProviderConfig{{
			Name: "corp", Issuer: p.m.Issuer(), ClientID: p.m.ClientID, ClientSecret: p.m.ClientSecret,
			Scopes: []string{"openid", "profile", "email", "groups"},
		}},
		BearerTokens: []BearerConfig{{Issuer: p.m.Issuer(), Audiences: []string{"my-api", p.m.ClientID}}},
		Routes: []RouteConfig{{
			Name: "tool", Upstream: up.srv.URL, IdentityProvider: "corp",
			Allow: &AllowConfig{Groups: []string{"engineering", "data-team"}},
		}},
	}
}

func newHarness(t *testing.T, o harnessOpts) *harness {
	t.Helper()
	h := &harness{t: t, idp: o.idp, up: o.up, clock: o.clock, logs: &syncBuffer{}, done: make(chan error, 1)}
	if h.idp == nil {
		h.idp = startIdP(t)
	}
	if h.up == nil {
		h.up = startUpstream(t)
	}
	if h.clock == nil {
		h.clock = sessiontest.NewClock(time.Now())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.url = "http://" + ln.Addr().String()
	cfg := baseConfig(h.idp, h.up)
	cfg.ExternalURL = h.url
	h.audit = filepath.Join(t.TempDir(), "audit.log")
	cfg.AuditLog = h.audit
	if o.mutate != nil {
		o.mutate(&cfg)
	}
	set, err := cfg.Resolve()
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.gw = New(set, log, Options{Now: h.clock.Now, Listener: ln, Store: o.store, Checks: o.checks})
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.gw.Run(ctx) }()
	select {
	case <-h.gw.Ready():
	case err := <-h.done:
		t.Fatalf("gateway exited: %v\n%s", err, h.logs)
	case <-time.After(20 * time.Second):
		t.Fatal("gateway not ready after 20s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				t.Errorf("gateway: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("gateway did not stop")
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", h.logs)
		}
	})
	return h
}

// advance moves the gateway's and the IdP's clocks together.
func (h *harness) advance(d time.Duration) {
	h.clock.Advance(d)
	h.idp.m.FastForward(d)
}

// browser is a client with a cookie jar that follows redirects, as a
// browser does.
func (h *harness) browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 30 * time.Second}
}

func noFollow(c *http.Client) *http.Client {
	cc := *c
	cc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &cc
}

func (h *harness) get(c *http.Client, path string, hdr map[string]string) *http.Response {
	h.t.Helper()
	target := path
	if !strings.HasPrefix(path, "http://") && !strings.HasPrefix(path, "https://") {
		target = h.url + path
	}
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Accept", "text/html")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		h.t.Fatalf("GET %s: %v", path, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp
}

func bodyOf(resp *http.Response) string {
	b, _ := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return string(b)
}

// login runs the browser flow to the upstream and returns the browser.
func (h *harness) login(path string) *http.Client {
	h.t.Helper()
	c := h.browser()
	resp := h.get(c, path, nil)
	if resp.StatusCode != http.StatusOK || bodyOf(resp) != "hello from upstream" {
		h.t.Fatalf("login flow ended with %d at %s: %s\nlog:\n%s", resp.StatusCode, resp.Request.URL, bodyOf(resp), h.logs)
	}
	return c
}

// auditLines returns the audit records written so far.
func (h *harness) auditLines() []map[string]any {
	data, _ := os.ReadFile(h.audit)
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			h.t.Fatalf("audit line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func (h *harness) lastAudit(event string) map[string]any {
	lines := h.auditLines()
	for i := len(lines) - 1; i >= 0; i-- {
		if lines[i]["event"] == event {
			return lines[i]
		}
	}
	h.t.Fatalf("no %s audit line in %v", event, lines)
	return nil
}

func sessionCookie(c *http.Client, rawURL, name string) *http.Cookie {
	u, _ := url.Parse(rawURL)
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == name {
			return ck
		}
	}
	return nil
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readFile(t *testing.T, path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func jsonDecode(resp *http.Response, v any) error { return json.Unmarshal([]byte(bodyOf(resp)), v) }
