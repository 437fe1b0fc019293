// Package gateway is Trustmesh's identity-aware access gateway for people
// (`trustmesh gateway run`): what oauth2-proxy or Pomerium do, with their
// conventions. Browsers sign in with OIDC (authorization code + PKCE S256,
// state and nonce, the ID token verified with go-oidc) into a server-side
// session whose cookie is only an opaque id; APIs present bearer JWTs.
// Requests for a route's host are proxied to its upstream with the
// caller's identity (X-Auth-Request-* and a signed
// X-Trustmesh-Jwt-Assertion); nginx's auth_request asks /oauth2/auth. Every
// request passes the same pipeline (see pipeline.go); every decision is an
// audit line and a metric.
package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/trustmesh/trustmesh/internal/accesslog"
	"github.com/trustmesh/trustmesh/internal/auditfile"
	"github.com/trustmesh/trustmesh/internal/gateway/assertion"
	"github.com/trustmesh/trustmesh/internal/gateway/bearer"
	"github.com/trustmesh/trustmesh/internal/gateway/session"
	"github.com/trustmesh/trustmesh/internal/httpx"
	"github.com/trustmesh/trustmesh/internal/policy"
	"github.com/trustmesh/trustmesh/internal/telemetry"
	"github.com/trustmesh/trustmesh/internal/tunnel"
)

// Options are what tests and embedders may inject.
type Options struct {
	Now        func() time.Time // the clock (time.Now)
	HTTPClient *http.Client     // for identity providers and JWKS
	// Listener, when set, is used instead of listening on Settings.Listen.
	Listener net.Listener
	// Checks run after each route's own (allow lists, policy), on every
	// route: device posture and continuous risk checks go here.
	Checks []Check
	// Store, when set, is used instead of opening Settings.Store.
	Store session.Store
}

// Gateway is one gateway process.
type Gateway struct {
	set        Settings
	log        *slog.Logger
	opts       Options
	now        func() time.Time
	httpClient *http.Client
	instance   string

	store           session.Store
	loginLimiter    *clientLimiter // logins started per client per minute
	providers       map[string]*oidcProvider
	verifier        *bearer.Verifier
	bearerCfg       map[string]BearerIssuer
	signer          *assertion.Signer
	routes          []*route
	audit           *auditLog
	auditFile       *auditfile.File
	metrics         *metrics
	refreshes       singleflight.Group
	tunnels         tunnel.Set // WebSockets, for the shutdown
	decodedSessions decodedCache

	ready     chan struct{}
	mu        sync.Mutex
	addr      net.Addr
	metricsLn net.Listener
	handler   http.Handler
}

// route is a Route ready to serve.
type route struct {
	Route
	checks []Check
	proxy  *httputil.ReverseProxy
	fast   *forwarder // body-less requests to a plain-HTTP/1.1 upstream; nil for h2c and https
}

// New prepares a gateway; Run starts it.
func New(set Settings, log *slog.Logger, opts Options) *Gateway {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	hc := opts.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 15 * time.Second}
	}
	g := &Gateway{set: set, log: log, opts: opts, now: opts.Now, httpClient: hc, instance: randomString(12), ready: make(chan struct{})}
	if set.LoginsPerMinute > 0 {
		g.loginLimiter = newClientLimiter(set.LoginsPerMinute, time.Minute, maxLimitedClients, opts.Now)
	}
	return g
}

// Ready is closed once the gateway accepts requests.
func (g *Gateway) Ready() <-chan struct{} { return g.ready }

// Addr is the listener's address (after Ready).
func (g *Gateway) Addr() net.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.addr
}

// MetricsAddr is the metrics listener's address, nil when off.
func (g *Gateway) MetricsAddr() net.Addr {
	if g.metricsLn == nil {
		return nil
	}
	return g.metricsLn.Addr()
}

// CompilePolicies compiles every route's policy, reporting what does not
// compile (for `gateway validate` and startup).
func CompilePolicies(ctx context.Context, set Settings) (map[string]*policy.Set, error) {
	out := map[string]*policy.Set{}
	var errs []string
	for _, r := range set.Routes {
		if len(r.PolicyPaths) == 0 {
			continue
		}
		ps, problems := policy.LoadAndCompile(ctx, r.PolicyPaths, nil, policy.Options{})
		for _, p := range problems {
			if p.Severity == policy.SeverityError {
				errs = append(errs, "route "+r.Name+": "+p.String())
			}
		}
		if ps != nil {
			out[r.Name] = ps
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("policy does not compile:\n  %s", strings.Join(errs, "\n  "))
	}
	return out, nil
}

// init builds everything but the listeners.
func (g *Gateway) init(ctx context.Context) error {
	af, err := auditfile.Open(g.set.AuditLog)
	if err != nil {
		return err
	}
	af.ReopenOnSignal(ctx, g.log) // log rotation: rename, then SIGUSR1
	g.auditFile = af
	g.audit = &auditLog{w: af, log: g.log, now: g.now}
	g.metrics = newMetrics(g.audit.failed.Load)

	policies, err := CompilePolicies(ctx, g.set)
	if err != nil {
		return err
	}
	g.providers = map[string]*oidcProvider{}
	for _, p := range g.set.Providers {
		g.providers[p.Name] = &oidcProvider{cfg: p, g: g}
	}
	g.bearerCfg = map[string]BearerIssuer{}
	var issuers []bearer.Issuer
	for _, b := range g.set.Bearer {
		g.bearerCfg[b.Issuer.Issuer] = b
		issuers = append(issuers, b.Issuer)
	}
	if g.verifier, err = bearer.New(issuers, bearer.Options{HTTPClient: g.httpClient, Now: g.now, MaxTokenBytes: g.set.MaxTokenBytes}); err != nil {
		return err
	}
	if g.signer, err = assertion.New(assertion.Options{Issuer: g.set.ExternalURL.String(), TTL: g.set.AssertionTTL, KeyFile: g.set.AssertionKeyFile, Now: g.now}); err != nil {
		return err
	}
	if g.set.AssertionKeyFile == "" {
		g.log.Warn("assertion.signing_key_file is not set: assertions are signed with a key made at start; replicas behind one name need a shared key file")
	}
	for i := range g.set.Routes {
		rt := &route{Route: g.set.Routes[i]}
		if !rt.Allow.empty() || (rt.Allow != nil && rt.Allow.Authenticated) {
			rt.checks = append(rt.checks, allowCheck{a: *rt.Allow, allowUnverifiedEmail: g.allowUnverified})
		}
		if ps := policies[rt.Name]; ps != nil {
			rt.checks = append(rt.checks, policyCheck{engine: policy.NewEngine(ps), route: &rt.Route})
		}
		rt.checks = append(rt.checks, g.opts.Checks...)
		if rt.Upstream != nil {
			if rt.proxy, err = g.newProxy(rt); err != nil {
				return err
			}
			if rt.Upstream.Scheme == "http" && !rt.H2C {
				rt.fast = newForwarder(g, rt)
			}
		}
		g.routes = append(g.routes, rt)
	}
	// Most specific first: exact hosts, then wildcards, then any host; in
	// each, the longest path prefix.
	sort.SliceStable(g.routes, func(i, j int) bool {
		a, b := g.routes[i], g.routes[j]
		if ra, rb := hostRank(a.Host), hostRank(b.Host); ra != rb {
			return ra < rb
		}
		return len(a.PathPrefix) > len(b.PathPrefix)
	})
	if g.opts.Store != nil {
		g.store = g.opts.Store
	} else if g.store, err = session.Open(ctx, g.set.Store, session.Options{Now: g.now}); err != nil {
		return err
	}
	g.handler = g.routesHandler()
	return nil
}

func hostRank(h string) int {
	switch {
	case h == "":
		return 2
	case strings.HasPrefix(h, "*."):
		return 1
	}
	return 0
}

// allowUnverified: the caller's email may match emails/domains rules
// without email_verified, as its provider's (or bearer issuer's)
// allow_unverified_email says.
func (g *Gateway) allowUnverified(id *Identity) bool {
	if id.Method == "bearer" {
		return g.bearerCfg[id.Issuer].AllowUnverifiedEmail
	}
	if p := g.providers[id.Provider]; p != nil {
		return p.cfg.AllowUnverifiedEmail
	}
	return false
}

// vouchedEmail is the caller's email as the gateway passes it on
// (identity headers, the signed assertion, /oauth2/userinfo): only when
// the token says email_verified, or allow_unverified_email trusts the
// issuer anyway. An upstream that keys accounts on X-Auth-Request-Email
// must never see an address the IdP let the user type in unchecked.
func (g *Gateway) vouchedEmail(id *Identity) string {
	if id.EmailVerified || g.allowUnverified(id) {
		return id.Email
	}
	return ""
}

// Handler is the gateway's HTTP handler (after Ready).
func (g *Gateway) Handler() http.Handler { return g.handler }

// Run serves until ctx ends, then drains in-flight requests.
func (g *Gateway) Run(ctx context.Context) error {
	if err := g.init(ctx); err != nil {
		return err
	}
	defer g.store.Close()
	defer g.auditFile.Close()
	ln := g.opts.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", g.set.Listen); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(true) // gRPC clients behind a TLS terminator
	srv := &http.Server{
		Handler:           g.handler,
		ReadHeaderTimeout: g.set.HeaderReadTimeout,
		IdleTimeout:       g.set.IdleConnTimeout,
		MaxHeaderBytes:    g.set.MaxHeaderBytes,
		Protocols:         protocols,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
	}
	if g.set.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(g.set.TLSCert, g.set.TLSKey)
		if err != nil {
			ln.Close()
			return fmt.Errorf("tls: %w", err)
		}
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
		ln = tls.NewListener(ln, srv.TLSConfig)
	}
	g.mu.Lock()
	g.addr = ln.Addr()
	g.mu.Unlock()
	if g.set.MetricsAddr != "" {
		mln, err := net.Listen("tcp", g.set.MetricsAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("metrics: %w", err)
		}
		g.metricsLn = mln
	}
	eg, gctx := errgroup.WithContext(ctx)
	eg.Go(func() error {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	eg.Go(func() error {
		<-gctx.Done()
		g.log.Info("shutting down: draining in-flight requests", "timeout", g.set.ShutdownTimeout.String())
		sctx, cancel := context.WithTimeout(context.Background(), g.set.ShutdownTimeout)
		defer cancel()
		// (Shutdown does not wait for hijacked connections: WebSockets
		// are drained beside it.)
		tunnelsDrained := make(chan struct{})
		go func() { g.tunnels.Drain(sctx); close(tunnelsDrained) }()
		defer func() { <-tunnelsDrained }()
		if srv.Shutdown(sctx) != nil {
			// Past the timeout, requests still running (streams) are cut
			// off: their client connections close (which cancels their
			// requests), and so do the fast path's upstream connections.
			_ = srv.Close()
		}
		for _, rt := range g.routes {
			if rt.fast != nil {
				rt.fast.pool.CloseBusy()
				rt.fast.pool.CloseAll()
			}
		}
		return nil
	})
	if g.metricsLn != nil {
		eg.Go(func() error { return telemetry.Serve(gctx, g.metricsLn, g.metrics.registry) })
	}
	if p, ok := g.store.(session.Purger); ok {
		eg.Go(func() error {
			t := time.NewTicker(time.Minute)
			defer t.Stop()
			for {
				select {
				case <-gctx.Done():
					return nil
				case <-t.C:
					if _, err := p.Purge(gctx); err != nil && gctx.Err() == nil {
						g.log.Warn("session purge failed", "err", err)
					}
				}
			}
		})
	}
	attrs := []any{"listen", ln.Addr().String(), "external_url", g.set.ExternalURL.String(), "store", session.Redact(g.set.Store), "routes", len(g.routes), "identity_providers", len(g.providers), "bearer_issuers", len(g.bearerCfg)}
	g.log.Info("gateway ready", attrs...)
	close(g.ready)
	err := eg.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// routesHandler is the top of the request tree.
func (g *Gateway) routesHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/oauth2/auth":
			g.forwardAuth(w, r)
		case "/oauth2/start", "/oauth2/sign_in":
			g.signIn(w, r)
		case "/oauth2/callback":
			g.callback(w, r)
		case "/oauth2/sign_out":
			g.signOut(w, r)
		case "/oauth2/handoff":
			g.serveHandoff(w, r)
		case "/oauth2/userinfo":
			g.userinfo(w, r)
		case "/.well-known/trustmesh/jwks.json":
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "public, max-age=300")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			_, _ = w.Write(g.signer.JWKS())
		default:
			if strings.HasPrefix(r.URL.Path, "/oauth2/") {
				g.errorPage(w, http.StatusNotFound, "Not found", "There is nothing here.")
				return
			}
			g.serveProxy(w, r)
		}
	})
}

// match finds the route for host (any form) and a normalized path.
func (g *Gateway) match(host, path string) *route {
	h := hostOnly(host)
	for _, rt := range g.routes {
		if rt.Host != "" && !hostMatches(rt.Host, h) {
			continue
		}
		if pathHasPrefix(path, rt.PathPrefix) {
			return rt
		}
	}
	return nil
}

// pathHasPrefix matches a route's path_prefix at a segment boundary. A
// ';' (or its escape %3B) ends a segment too: Tomcat, Jetty and Spring
// read /admin;jsessionid=x as /admin, so that request must get the
// /admin route's rules, not those of a broader route that happens to
// forward to the same backend.
func pathHasPrefix(path, prefix string) bool {
	if prefix == "/" || strings.HasSuffix(prefix, "/") {
		return strings.HasPrefix(path, prefix)
	}
	rest, ok := strings.CutPrefix(path, prefix)
	return ok && (rest == "" || rest[0] == '/' || rest[0] == ';' || strings.HasPrefix(rest, "%3B"))
}

// fromTrustedProxy reports whether the direct peer may set X-Forwarded-*.
func (g *Gateway) fromTrustedProxy(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	a := ap.Addr().Unmap()
	for _, p := range g.set.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientIP is the caller's address: the direct peer, or what a trusted
// proxy says (X-Real-IP, else the last X-Forwarded-For hop it added).
func (g *Gateway) clientIP(r *http.Request) netip.Addr {
	ap, _ := netip.ParseAddrPort(r.RemoteAddr)
	ip := ap.Addr().Unmap()
	if !g.fromTrustedProxy(r) {
		return ip
	}
	if v := r.Header.Get("X-Real-Ip"); v != "" {
		if a, err := netip.ParseAddr(strings.TrimSpace(v)); err == nil {
			return a.Unmap()
		}
	}
	if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
		parts := strings.Split(xff[len(xff)-1], ",")
		if a, err := netip.ParseAddr(strings.TrimSpace(parts[len(parts)-1])); err == nil {
			return a.Unmap()
		}
	}
	return ip
}

// schemeOf is how the browser reached us.
func (g *Gateway) schemeOf(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	if g.fromTrustedProxy(r) {
		if p := strings.ToLower(r.Header.Get("X-Forwarded-Proto")); p == "https" || p == "http" {
			return p
		}
	}
	if hostOnly(g.hostOf(r)) == g.set.ExternalURL.Hostname() {
		return g.set.ExternalURL.Scheme
	}
	return "http"
}

// hostOf is the host the browser used: X-Forwarded-Host from a trusted
// proxy, else Host. Of a list (a proxy that appends to what the client
// sent) the last value counts: the one the proxy next to the gateway
// added, as clientIP takes X-Forwarded-For's last hop.
func (g *Gateway) hostOf(r *http.Request) string {
	if g.fromTrustedProxy(r) {
		if vs := r.Header.Values("X-Forwarded-Host"); len(vs) > 0 {
			v := vs[len(vs)-1]
			if i := strings.LastIndexByte(v, ','); i >= 0 {
				v = v[i+1:]
			}
			if v = strings.TrimSpace(v); v != "" {
				return v
			}
		}
	}
	return r.Host
}

// baseURL is scheme://host of the request as the browser sees it; the
// external URL's when the host is the gateway's own.
func (g *Gateway) baseURL(r *http.Request) *url.URL {
	host := g.hostOf(r)
	if hostOnly(host) == g.set.ExternalURL.Hostname() {
		return &url.URL{Scheme: g.set.ExternalURL.Scheme, Host: g.set.ExternalURL.Host}
	}
	return &url.URL{Scheme: g.schemeOf(r), Host: host}
}

// authResult is the outcome of authentication.
type authResult struct {
	id *Identity
	// Failure, when id is nil.
	status    int    // 401, or 503 when the store fails
	reason    string // for the audit log
	rejection *bearer.Error
	bearer    bool // a bearer token was presented
}

func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:]), true
	}
	return "", false
}

// authenticate finds who is calling: a bearer JWT if one is presented
// (then only it counts), else the route provider's session.
func (g *Gateway) authenticate(ctx context.Context, r *http.Request, rt *route) authResult {
	if raw, ok := bearerToken(r); ok {
		if !rt.Bearer {
			g.metrics.tokenRejections.WithLabelValues("not_accepted_on_route").Inc()
			return authResult{status: http.StatusUnauthorized, reason: "bearer token rejected: not_accepted_on_route: route " + quote(rt.Name) + " does not take bearer tokens", bearer: true}
		}
		tok, err := g.verifier.Verify(ctx, raw)
		if err != nil {
			e, ok := bearer.AsError(err)
			if !ok {
				e = &bearer.Error{Reason: bearer.ReasonMalformed, Detail: err.Error()}
			}
			g.metrics.tokenRejections.WithLabelValues(string(e.Reason)).Inc()
			return authResult{status: http.StatusUnauthorized, reason: e.Error(), rejection: e, bearer: true}
		}
		bc := g.bearerCfg[tok.Issuer]
		if revoked, err := g.idTokenRevoked(ctx, bc, tok, raw); err != nil {
			g.log.Error("session store failed", "err", err)
			return authResult{status: http.StatusServiceUnavailable, reason: "session store unavailable: " + err.Error(), bearer: true}
		} else if revoked {
			e := &bearer.Error{Reason: bearer.ReasonRevoked, Detail: "an ID token its session's sign-out revoked"}
			g.metrics.tokenRejections.WithLabelValues(string(e.Reason)).Inc()
			return authResult{status: http.StatusUnauthorized, reason: e.Error(), rejection: e, bearer: true}
		}
		id := &Identity{
			Method: "bearer", Issuer: tok.Issuer, Subject: tok.Subject, User: claimString(tok.Claims, bc.UserClaim),
			Email: claimString(tok.Claims, bc.EmailClaim), PreferredUsername: claimString(tok.Claims, "preferred_username"),
			Groups: claimStrings(tok.Claims, bc.GroupsClaim), Scopes: tok.Scopes, Audiences: tok.Audiences,
			Presenter: tok.Presenter, Claims: tok.Claims,
		}
		id.EmailVerified, _ = tok.Claims["email_verified"].(bool)
		if id.User == "" {
			id.User = tok.Subject
		}
		return authResult{id: id}
	}
	if rt.Provider == "" {
		return authResult{status: http.StatusUnauthorized, reason: "no bearer token (route " + quote(rt.Name) + " takes bearer tokens only)"}
	}
	ls, err := g.loadSession(ctx, r, rt.Provider)
	if err != nil {
		if errors.Is(err, errNoSession) {
			return authResult{status: http.StatusUnauthorized, reason: err.Error()}
		}
		g.log.Error("session store failed", "err", err)
		return authResult{status: http.StatusServiceUnavailable, reason: "session store unavailable: " + err.Error()}
	}
	return authResult{id: ls.identity()}
}

// decision is the pipeline's answer for one request.
type decision struct {
	rq      *Request
	auth    authResult
	verdict Verdict
	check   string
	status  int // 200 (allowed), 401, 403, 404, 503
}

// decide runs the pipeline for rq (whose Route is set).
func (g *Gateway) decide(ctx context.Context, r *http.Request, rt *route, rq *Request) decision {
	d := decision{rq: rq}
	d.auth = g.authenticate(ctx, r, rt)
	if d.auth.id == nil {
		d.status = d.auth.status
		d.verdict = Verdict{Reason: d.auth.reason, Rule: -1}
		return d
	}
	rq.Identity = d.auth.id
	d.verdict, d.check = runChecks(ctx, rt.checks, rq)
	if !d.verdict.Allow {
		d.status = http.StatusForbidden
		return d
	}
	d.status = http.StatusOK
	return d
}

// auditRefusal is the audit line of a refusal at one of the gateway's own
// endpoints (login, logout, userinfo, hand-off): event names the
// endpoint's business, and doubles as the mode.
func (g *Gateway) auditRefusal(r *http.Request, event, idp, reason string, status int) {
	g.audit.write(&accesslog.Record{Event: event, Direction: "inbound", Listener: "gateway", Protocol: "http",
		SourceIP: g.clientIP(r).String(), Method: r.Method, Path: r.URL.Path, Host: r.Host, Decision: "deny",
		Reason: reason, Status: status, IdP: idp, Mode: event})
}

// record writes the audit line and metrics for a decision.
func (g *Gateway) record(d decision, mode, routeName string, status int, start time.Time, r *http.Request) {
	elapsed := g.now().Sub(start)
	if elapsed < 0 {
		elapsed = 0
	}
	rec := &accesslog.Record{
		RequestID: r.Header.Get("X-Request-Id"), Direction: "inbound", Listener: "gateway", Protocol: "http",
		SourceIP: d.rq.ClientIP.String(), Destination: routeName, Method: d.rq.Method, Path: d.rq.URI, Host: d.rq.Host,
		Decision: "deny", Reason: d.verdict.Reason, Status: status, LatencyMS: float64(elapsed.Microseconds()) / 1000,
		Route: routeName, Mode: mode, Check: d.check,
	}
	if !validRequestID(rec.RequestID) {
		rec.RequestID = ""
	}
	if d.verdict.Allow && d.status == http.StatusOK {
		rec.Decision = "allow"
	}
	if d.verdict.Policy != "" {
		p := d.verdict.Policy
		rec.Policy = &p
	}
	if d.verdict.Rule >= 0 {
		rule := d.verdict.Rule
		rec.Rule = &rule
	}
	if id := d.auth.id; id != nil {
		rec.SourcePrincipal, rec.Authenticated, rec.User, rec.Email = id.Principal(), true, id.User, id.Email
		rec.AuthMethod, rec.IdP, rec.Session = id.Method, orDefault(id.Provider, id.Issuer), id.SessionRef
	} else if d.auth.bearer {
		rec.AuthMethod = "bearer"
	}
	g.audit.write(rec)
	outcome := "allow"
	switch {
	case routeName == "":
		outcome = "no_route"
	case d.status == http.StatusUnauthorized:
		outcome = "unauthenticated"
	case d.status != http.StatusOK:
		outcome = "deny"
	}
	label := orDefault(routeName, "none")
	g.metrics.requests.WithLabelValues(label, mode, outcome).Inc()
	g.metrics.duration.WithLabelValues(label, mode).Observe(elapsed.Seconds())
	if rec.Decision == "deny" {
		g.log.Info("request denied", "route", routeName, "mode", mode, "status", status, "reason", d.verdict.Reason,
			"principal", rec.SourcePrincipal, "client_ip", rec.SourceIP, "host", rec.Host, "path", rec.Path)
	}
}

// newRequest builds the pipeline's Request for method/host/uri.
func (g *Gateway) newRequest(r *http.Request, mode, method, host, uri string) (*Request, error) {
	np, err := policy.NormalizePath(uri)
	if err != nil {
		return nil, err
	}
	return &Request{Mode: mode, Method: method, Host: host, Path: np, URI: uri, Header: r.Header, ClientIP: g.clientIP(r)}, nil
}

// identityHeaders are the oauth2-proxy headers an upstream trusts.
func (g *Gateway) identityHeaders(h http.Header, id *Identity, aud string) {
	h.Set("X-Auth-Request-User", id.User)
	email := g.vouchedEmail(id)
	if email != "" {
		h.Set("X-Auth-Request-Email", email)
	}
	if len(id.Groups) > 0 {
		h.Set("X-Auth-Request-Groups", strings.Join(id.Groups, ","))
	}
	if id.PreferredUsername != "" {
		h.Set("X-Auth-Request-Preferred-Username", id.PreferredUsername)
	}
	if a, err := g.signer.Sign(assertion.Claims{Subject: id.Principal(), User: id.User, Email: email, Groups: id.Groups, IdP: id.Issuer}, aud); err == nil {
		h.Set("X-Trustmesh-Jwt-Assertion", a)
	} else {
		g.log.Error("cannot sign the identity assertion", "err", err)
	}
}

// spoofable are identity headers a client must never get to an upstream;
// prefixes end in "-".
var spoofable = []string{
	"X-Auth-Request-", "X-Trustmesh-", "X-Authenticated-", "X-Forwarded-User", "X-Forwarded-Email",
	"X-Forwarded-Groups", "X-Forwarded-Preferred-Username", "X-Forwarded-Access-Token", "X-Remote-User",
	"X-Remote-Groups", "Remote-User", "X-Pomerium-",
}

// stripIdentityHeaders removes every identity header the client sent.
// Names are compared as a backend mapping '_' to '-' would read them, so
// X_Auth_Request_User goes too.
func stripIdentityHeaders(h http.Header) {
	for k := range h {
		name := httpx.CanonicalName(k)
		for _, s := range spoofable {
			if strings.HasSuffix(s, "-") && strings.HasPrefix(name, s) || name == s {
				delete(h, k)
				break
			}
		}
	}
}

// stripOurCookies keeps the gateway's cookies from the upstream.
func (g *Gateway) stripOurCookies(h http.Header) {
	cs := h.Values("Cookie")
	if len(cs) == 0 {
		return
	}
	var keep []string
	for _, line := range cs {
		for _, part := range strings.Split(line, ";") {
			name, _, _ := strings.Cut(strings.TrimSpace(part), "=")
			if name == "" || strings.HasPrefix(name, g.set.CookieName) {
				continue
			}
			keep = append(keep, strings.TrimSpace(part))
		}
	}
	h.Del("Cookie")
	if len(keep) > 0 {
		h.Set("Cookie", strings.Join(keep, "; "))
	}
}

func validRequestID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// isBrowser: a navigation a login redirect makes sense for.
func isBrowser(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if r.Header.Get("X-Requested-With") != "" || r.Header.Get("Upgrade") != "" {
		return false
	}
	return strings.Contains(r.Header.Get("Accept"), "text/html")
}

// forwardAuth is nginx auth_request's endpoint: 202 with the identity
// headers, 401 unauthenticated, 403 refused. The route comes from
// X-Forwarded-Host (or Host) and X-Original-URI (or X-Forwarded-Uri).
func (g *Gateway) forwardAuth(w http.ResponseWriter, r *http.Request) {
	start := g.now()
	setPageHeaders(w)
	host := g.hostOf(r)
	uri, uriOK := forwardedValue(r.Header, "X-Original-Uri", "X-Forwarded-Uri")
	method, methodOK := forwardedValue(r.Header, "X-Original-Method", "X-Forwarded-Method")
	if uri == "" {
		uri = "/"
	}
	if method == "" {
		method = http.MethodGet
	}
	// refuse answers 403 for a request no route's rules can judge.
	refuse := func(rq *Request, reason string) {
		if rq == nil {
			rq = &Request{Mode: "forward_auth", Method: method, Host: host, URI: uri, ClientIP: g.clientIP(r)}
		}
		w.WriteHeader(http.StatusForbidden)
		g.record(decision{rq: rq, verdict: Verdict{Reason: reason, Rule: -1}, status: http.StatusForbidden}, "forward_auth", "", http.StatusForbidden, start, r)
	}
	if !uriOK || !methodOK {
		// nginx sets X-Original-URI, Traefik and Caddy X-Forwarded-Uri,
		// and each passes the other name on from the client: a second,
		// different value is the client's, and which one is the real
		// request cannot be told here.
		refuse(nil, "conflicting values in X-Original-URI/X-Forwarded-Uri or X-Original-Method/X-Forwarded-Method")
		return
	}
	rq, err := g.newRequest(r, "forward_auth", method, host, uri)
	if err != nil {
		refuse(nil, "request path rejected: "+err.Error())
		return
	}
	rt := g.match(host, rq.Path)
	if rt == nil {
		refuse(rq, "no route for host "+quote(hostOnly(host))+" and path "+quote(rq.Path))
		return
	}
	rq.Route = &rt.Route
	d := g.decide(r.Context(), r, rt, rq)
	status := d.status
	switch status {
	case http.StatusOK:
		status = http.StatusAccepted
		g.identityHeaders(w.Header(), d.auth.id, hostOnly(host))
	case http.StatusUnauthorized:
		if d.auth.bearer {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		}
	}
	w.WriteHeader(status)
	g.record(d, "forward_auth", rt.Name, status, start, r)
}

// forwardedValue is the one value the headers named carry between them
// (each may be absent); ok is false when they carry different values.
func forwardedValue(h http.Header, names ...string) (v string, ok bool) {
	for _, name := range names {
		for _, x := range h.Values(name) {
			switch {
			case v == "":
				v = x
			case x != v:
				return v, false
			}
		}
	}
	return v, true
}

// serveProxy is reverse-proxy mode: the request's host and path pick the
// route; an allowed request goes upstream with the caller's identity.
func (g *Gateway) serveProxy(w http.ResponseWriter, r *http.Request) {
	start := g.now()
	rq, err := g.newRequest(r, "proxy", r.Method, r.Host, r.RequestURI)
	if err != nil {
		d := decision{rq: &Request{Mode: "proxy", Method: r.Method, Host: r.Host, URI: r.RequestURI, ClientIP: g.clientIP(r)}, verdict: Verdict{Reason: "request path rejected: " + err.Error(), Rule: -1}, status: http.StatusBadRequest}
		g.errorPage(w, http.StatusBadRequest, "Bad request", "The request path is not valid.")
		g.record(d, "proxy", "", http.StatusBadRequest, start, r)
		return
	}
	rt := g.match(r.Host, rq.Path)
	if rt == nil || rt.proxy == nil {
		if r.URL.Path == "/ping" || r.URL.Path == "/ready" {
			setPageHeaders(w)
			_, _ = io.WriteString(w, "OK")
			return
		}
		reason := "no route for host " + quote(hostOnly(r.Host)) + " and path " + quote(rq.Path)
		name := ""
		if rt != nil {
			reason, name = "route "+quote(rt.Name)+" has no upstream (forward-auth only)", rt.Name
		}
		g.errorPage(w, http.StatusNotFound, "Not found", "There is no application here.")
		g.record(decision{rq: rq, verdict: Verdict{Reason: reason, Rule: -1}, status: http.StatusNotFound}, "proxy", name, http.StatusNotFound, start, r)
		return
	}
	rq.Route = &rt.Route
	d := g.decide(r.Context(), r, rt, rq)
	switch d.status {
	case http.StatusOK:
	case http.StatusUnauthorized:
		if !d.auth.bearer && isBrowser(r) {
			rd := g.baseURL(r).String() + r.RequestURI
			login := "/oauth2/start?" + url.Values{"rd": {rd}}.Encode()
			setPageHeaders(w)
			http.Redirect(w, r, login, http.StatusFound)
			g.record(d, "proxy", rt.Name, http.StatusFound, start, r)
			return
		}
		if d.auth.bearer {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		} else {
			w.Header().Set("WWW-Authenticate", `Bearer realm="trustmesh"`)
		}
		g.jsonError(w, http.StatusUnauthorized, "unauthenticated")
		g.record(d, "proxy", rt.Name, http.StatusUnauthorized, start, r)
		return
	case http.StatusForbidden:
		if isBrowser(r) {
			g.errorPage(w, http.StatusForbidden, "Access denied", "You are signed in, but not allowed to use this application.")
		} else {
			g.jsonError(w, http.StatusForbidden, "access denied")
		}
		g.record(d, "proxy", rt.Name, http.StatusForbidden, start, r)
		return
	default:
		g.errorPage(w, d.status, "Unavailable", "Try again shortly.")
		g.record(d, "proxy", rt.Name, d.status, start, r)
		return
	}
	// Forward the path the route and policy decided on.
	if np := rq.Path; np != "*" {
		if unescaped, err := url.PathUnescape(np); err == nil {
			r.URL.Path, r.URL.RawPath = unescaped, np
		}
	}
	if g.set.MaxBodyBytes > 0 && r.Body != nil && r.Body != http.NoBody {
		r.Body = http.MaxBytesReader(w, r.Body, g.set.MaxBodyBytes)
	}
	// An upgrade other than WebSocket would be a tunnel past per-request
	// checks (h2c is dropped and the request served as HTTP/1.1).
	if err := httpx.CheckUpgrade(r.Header); err != nil {
		d.status, d.verdict.Allow, d.verdict.Reason, d.check = http.StatusBadRequest, false, err.Error(), "upgrade"
		g.jsonError(w, http.StatusBadRequest, "bad request")
		g.record(d, "proxy", rt.Name, http.StatusBadRequest, start, r)
		return
	}
	sw := &httpx.StatusWriter{ResponseWriter: w}
	if rt.fast.takes(r) {
		err := rt.fast.serve(sw, r, d.auth.id)
		g.record(d, "proxy", rt.Name, sw.Code(), start, r)
		if err != nil {
			panic(http.ErrAbortHandler) // the client must see the response break off
		}
		return
	}
	var rw http.ResponseWriter = sw
	out := r.WithContext(context.WithValue(r.Context(), identityKey{}, d.auth.id))
	if len(r.Header["Upgrade"]) > 0 { // a WebSocket (httpx.CheckUpgrade refused other upgrades)
		var release func()
		rw, out, release = tunnel.IdleAfterHijack(sw, out, g.set.TunnelIdleTimeout, &g.tunnels)
		defer release()
	}
	rt.proxy.ServeHTTP(rw, out)
	g.record(d, "proxy", rt.Name, sw.Code(), start, r)
}

type identityKey struct{}

func (g *Gateway) jsonError(w http.ResponseWriter, status int, msg string) {
	setPageHeaders(w)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, "{\"error\":%q}\n", msg)
}

func (g *Gateway) newProxy(rt *route) (*httputil.ReverseProxy, error) {
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   512,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: g.set.UpstreamTimeout,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
	if rt.H2C {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
	}
	if rt.Upstream.Scheme == "https" {
		tr.ForceAttemptHTTP2 = true
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		if rt.UpstreamCAFile != "" {
			pem, err := os.ReadFile(rt.UpstreamCAFile)
			if err != nil {
				return nil, fmt.Errorf("route %s: upstream_ca_file: %w", rt.Name, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("route %s: upstream_ca_file: no certificates", rt.Name)
			}
			tr.TLSClientConfig.RootCAs = pool
		}
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			id, _ := pr.In.Context().Value(identityKey{}).(*Identity)
			g.rewriteOut(rt, pr, id)
		},
		Transport:    tr,
		BufferPool:   httpx.BufferPool{},
		ErrorLog:     slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) { g.upstreamFailed(w, rt, err) },
	}, nil
}

// rewriteOut makes the upstream request from the client's, on both
// forwarding paths: the route's upstream, X-Forwarded-*, no identity
// header or gateway cookie of the client's, and the caller's identity
// (id, nil for none) as headers and a signed assertion.
func (g *Gateway) rewriteOut(rt *route, pr *httputil.ProxyRequest, id *Identity) {
	pr.SetURL(rt.Upstream)
	if rt.PreserveHost {
		pr.Out.Host = pr.In.Host
	}
	pr.SetXForwarded()
	if g.fromTrustedProxy(pr.In) {
		if xff := pr.In.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			pr.Out.Header["X-Forwarded-For"] = append(xff[:len(xff):len(xff)], g.clientIP(pr.In).String())
		}
	}
	pr.Out.Header.Set("X-Forwarded-Proto", g.schemeOf(pr.In))
	stripIdentityHeaders(pr.Out.Header)
	g.stripOurCookies(pr.Out.Header)
	if id != nil {
		g.identityHeaders(pr.Out.Header, id, hostOnly(pr.In.Host))
	}
}

// upstreamFailed answers a request whose upstream could not be reached
// (or refused its body as too large).
func (g *Gateway) upstreamFailed(w http.ResponseWriter, rt *route, err error) {
	g.metrics.upstreamErrors.WithLabelValues(rt.Name).Inc()
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		g.errorPage(w, http.StatusRequestEntityTooLarge, "Request too large", "The request body is over the limit.")
		return
	}
	if !errors.Is(err, context.Canceled) {
		g.log.Warn("upstream unreachable", "route", rt.Name, "upstream", rt.Upstream.Host, "err", err)
	}
	g.errorPage(w, http.StatusBadGateway, "Upstream unavailable", "The application did not answer. Try again shortly.")
}

// providerFor picks the identity provider for a login: the rd's route's,
// an explicit ?provider=, or the only one.
func (g *Gateway) providerFor(r *http.Request, rd *url.URL) *oidcProvider {
	if name := r.URL.Query().Get("provider"); name != "" {
		return g.providers[name]
	}
	if rd != nil {
		if np, err := policy.NormalizePath(rd.EscapedPath()); err == nil {
			if rt := g.match(rd.Host, np); rt != nil && rt.Provider != "" {
				return g.providers[rt.Provider]
			}
		}
	}
	if len(g.set.Providers) == 1 {
		return g.providers[g.set.Providers[0].Name]
	}
	return nil
}

// signIn is /oauth2/start and /oauth2/sign_in: check rd, then go to the
// identity provider (from the gateway's own host, where the callback
// lands).
func (g *Gateway) signIn(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		g.errorPage(w, http.StatusMethodNotAllowed, "Method not allowed", "Use GET.")
		return
	}
	base := g.baseURL(r)
	rawRD := r.URL.Query().Get("rd")
	if rawRD == "" {
		rawRD = r.Header.Get("X-Auth-Request-Redirect")
	}
	rd, ok := g.safeRedirect(rawRD, base)
	if !ok {
		g.log.Warn("redirect refused", "rd", truncateForLog(rawRD), "client_ip", g.clientIP(r).String())
		g.metrics.logins.WithLabelValues("unknown", "redirect_refused").Inc()
		g.auditRefusal(r, "login", "", "redirect target refused: "+truncateForLog(rawRD), http.StatusBadRequest)
		g.errorPage(w, http.StatusBadRequest, "Invalid redirect", "The address to return to after sign-in is not allowed.")
		return
	}
	rdURL, _ := url.Parse(rd)
	if g.isOwnEndpoint(rdURL) {
		// Back to /oauth2/sign_in (nginx's error_page for a request that was
		// itself for it) or /oauth2/start would start another login after
		// this one, for ever: land on the host's root instead.
		rdURL = &url.URL{Scheme: rdURL.Scheme, Host: rdURL.Host, Path: "/"}
		rd = rdURL.String()
	}
	p := g.providerFor(r, rdURL)
	if p == nil {
		g.errorPage(w, http.StatusBadRequest, "Unknown identity provider", "No identity provider is configured for this application.")
		return
	}
	if host := hostOnly(g.hostOf(r)); host != g.set.ExternalURL.Hostname() {
		q := url.Values{"rd": {rd}, "provider": {p.cfg.Name}}
		if hostOnly(rdURL.Host) == host && !g.coveredByCookie(host) {
			// The session will come back to this host through a one-time
			// hand-off code. A cookie set here, whose hash travels with the
			// login, binds that code to this browser: a code someone else
			// obtained (their own login) cannot sign this browser in as them.
			binding := randomString(32)
			g.setLoginCookie(w, r, g.handoffCookieName(), binding)
			q.Set("hb", hashString("handoff binding", binding))
		}
		u := *g.set.ExternalURL
		u.Path += "/oauth2/start"
		u.RawQuery = q.Encode()
		setPageHeaders(w)
		http.Redirect(w, r, u.String(), http.StatusFound)
		return
	}
	hb := r.URL.Query().Get("hb")
	if !isHexDigest(hb) {
		hb = "" // no hand-off for this login: the callback sends the browser to rd, which starts over from its host
	}
	g.startLogin(w, r, p, rd, hb)
}

// isHexDigest: s is a lowercase hex SHA-256, as hashString makes.
func isHexDigest(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// signOut ends the session. POST needs the session's CSRF token; a GET
// from the gateway's own pages or typed in (Sec-Fetch-Site same-origin or
// none) signs out directly, any other GET gets a confirmation form, so no
// other site can sign a user out. With an end_session_endpoint, the
// browser continues to the identity provider (RP-initiated logout).
func (g *Gateway) signOut(w http.ResponseWriter, r *http.Request) {
	base := g.baseURL(r)
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	var rawRD string
	if r.Method == http.MethodPost {
		if err := r.ParseForm(); err != nil {
			g.errorPage(w, http.StatusBadRequest, "Bad request", "The form could not be read.")
			return
		}
		rawRD = r.PostForm.Get("rd")
	} else {
		rawRD = r.URL.Query().Get("rd")
	}
	rd, ok := g.safeRedirect(rawRD, base)
	if !ok {
		g.log.Warn("sign-out redirect refused", "rd", truncateForLog(rawRD))
		g.auditRefusal(r, "logout", "", "redirect target refused: "+truncateForLog(rawRD), http.StatusBadRequest)
		g.errorPage(w, http.StatusBadRequest, "Invalid redirect", "The address to return to after sign-out is not allowed.")
		return
	}
	// The caller's sessions, one per provider cookie.
	type found struct {
		p   *oidcProvider
		ls  *liveSession
		val string
	}
	var sessions []found
	// storeDown: a session the cookie names could not be looked up. Then
	// sign-out fails (503): answering as if there were no session would
	// skip the CSRF check, clear the cookie and tell the user they are
	// signed out while the session lives on server-side.
	storeDown := func(err error) {
		g.log.Error("sign-out failed: session store unavailable", "err", err)
		g.auditRefusal(r, "logout", "", "sign-out failed: session store unavailable", http.StatusServiceUnavailable)
		g.errorPage(w, http.StatusServiceUnavailable, "Sign-out is unavailable", "You are still signed in. Try again shortly.")
	}
	for name, p := range g.providers {
		for _, c := range r.Cookies() {
			if c.Name != g.cookieName(name) {
				continue
			}
			if id, ok := parseSessionCookie(c.Value); ok {
				rec, err := g.store.Get(r.Context(), id.key)
				switch {
				case errors.Is(err, session.ErrNotFound):
					continue // ended already
				case err != nil:
					storeDown(err)
					return
				}
				if d, err := id.openData(rec.Data); err == nil {
					sessions = append(sessions, found{p: p, ls: &liveSession{id: id, rec: rec, data: d}, val: c.Value})
				}
			}
		}
	}
	switch r.Method {
	case http.MethodPost:
		token := r.PostForm.Get("csrf")
		valid := len(sessions) == 0 // nothing to protect
		for _, s := range sessions {
			if hmacEqual(token, s.ls.id.csrfToken()) {
				valid = true
			}
		}
		if !valid {
			g.log.Warn("sign-out refused: missing or wrong CSRF token", "client_ip", g.clientIP(r).String())
			g.auditRefusal(r, "logout", "", "sign-out refused: missing or wrong CSRF token", http.StatusForbidden)
			g.errorPage(w, http.StatusForbidden, "Sign-out refused", "The sign-out form expired. Open the sign-out page again.")
			return
		}
	case http.MethodGet, http.MethodHead:
		site := r.Header.Get("Sec-Fetch-Site")
		if len(sessions) > 0 && site != "same-origin" && site != "none" {
			var providers []*oidcProvider
			for _, s := range sessions {
				providers = append(providers, s.p)
			}
			renderPage(w, http.StatusOK, page{Title: "Sign out", Message: "Sign out of " + g.set.ExternalURL.Host + "?",
				Form: "/oauth2/sign_out", CSRF: sessions[0].ls.id.csrfToken(), RD: rawRD, Button: "Sign out"}, signOutFormAction(r.Context(), providers, rd)...)
			return
		}
	default:
		g.errorPage(w, http.StatusMethodNotAllowed, "Method not allowed", "Use GET or POST.")
		return
	}
	// Every revocation before any deletion: a session gone but its ID
	// token not revoked would leave nothing to retry the revocation from.
	for _, s := range sessions {
		if err := g.revokeIDToken(r.Context(), s.ls.data.IDToken); err != nil {
			storeDown(err)
			return
		}
	}
	for _, s := range sessions {
		if err := g.store.Delete(r.Context(), s.ls.id.key); err != nil && !errors.Is(err, session.ErrNotFound) {
			storeDown(err)
			return
		}
	}
	endSession := ""
	for _, s := range sessions {
		g.metrics.logouts.WithLabelValues(s.p.cfg.Name).Inc()
		g.log.Info("logout", "provider", s.p.cfg.Name, "principal", s.ls.data.Issuer+"/"+s.ls.data.Subject, "session", s.ls.id.ref())
		g.audit.write(&accesslog.Record{Event: "logout", Direction: "inbound", Listener: "gateway", Protocol: "http",
			SourcePrincipal: s.ls.data.Issuer + "/" + s.ls.data.Subject, SourceIP: g.clientIP(r).String(), Method: r.Method,
			Path: "/oauth2/sign_out", Host: r.Host, Decision: "allow", Reason: "signed out", Status: http.StatusFound,
			Authenticated: true, User: s.ls.data.User, Email: s.ls.data.Email, AuthMethod: "session", IdP: s.p.cfg.Name,
			Session: s.ls.id.ref(), Mode: "logout"})
		if endSession == "" {
			if d, err := s.p.get(r.Context()); err == nil && d.endSession != "" {
				if u, err := url.Parse(d.endSession); err == nil {
					q := u.Query()
					q.Set("id_token_hint", s.ls.data.IDToken)
					q.Set("client_id", s.p.cfg.ClientID)
					q.Set("post_logout_redirect_uri", rd)
					u.RawQuery = q.Encode()
					endSession = u.String()
				}
			}
		}
	}
	for name := range g.providers {
		g.clearCookie(w, r, g.cookieName(name), "/")
	}
	setPageHeaders(w)
	target := rd
	if endSession != "" {
		target = endSession
	}
	http.Redirect(w, r, target, http.StatusFound)
}

// signOutFormAction lists the origins the sign-out form's POST goes on
// to: the sessions' providers' logout endpoints and then rd. The page's
// form-action must allow them, since browsers apply it to the redirects
// after a form submission too.
func signOutFormAction(ctx context.Context, providers []*oidcProvider, rd string) []string {
	var out []string
	add := func(raw string) {
		if u, err := url.Parse(raw); err == nil && u.Scheme != "" && u.Host != "" {
			out = append(out, u.Scheme+"://"+u.Host)
		}
	}
	for _, p := range providers {
		if d, err := p.get(ctx); err == nil && d.endSession != "" {
			add(d.endSession)
		}
	}
	add(rd)
	slices.Sort(out)
	return slices.Compact(out)
}

func hmacEqual(a, b string) bool {
	return len(a) == len(b) && subtleEqual(a, b)
}

// userinfo is oauth2-proxy's /oauth2/userinfo: the caller's identity as JSON.
func (g *Gateway) userinfo(w http.ResponseWriter, r *http.Request) {
	rq, err := g.newRequest(r, "userinfo", r.Method, g.hostOf(r), "/")
	if err != nil {
		g.jsonError(w, http.StatusBadRequest, "bad request")
		return
	}
	rt := g.match(g.hostOf(r), rq.Path)
	if rt == nil {
		rt = &route{Route: Route{Name: "userinfo", Bearer: len(g.set.Bearer) > 0}}
		if len(g.set.Providers) == 1 {
			rt.Provider = g.set.Providers[0].Name
		}
	}
	a := g.authenticate(r.Context(), r, rt)
	if a.id == nil {
		g.auditRefusal(r, "userinfo", "", a.reason, http.StatusUnauthorized)
		g.jsonError(w, http.StatusUnauthorized, "unauthenticated")
		return
	}
	setPageHeaders(w)
	w.Header().Set("Content-Type", "application/json")
	groups := a.id.Groups
	if groups == nil {
		groups = []string{}
	}
	_ = jsonEncode(w, map[string]any{"user": a.id.User, "email": g.vouchedEmail(a.id), "groups": groups, "preferredUsername": a.id.PreferredUsername})
}
