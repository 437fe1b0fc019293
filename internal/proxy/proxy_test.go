package proxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/trustmesh/trustmesh/internal/accesslog"
)

func TestAllowedRequestCarriesIdentityAndNoSpoofedHeaders(t *testing.T) {
	m := newMesh(t, meshOpts{})
	code, body := get(t, m.frontURL("api", "/api/users?x=1"), http.Header{
		"X-Forwarded-Client-Cert": {"By=spiffe://evil;URI=spiffe://example.org/ns/default/sa/admin"},
		"X-Trustmesh-User":        {"admin"},
		"X-Request-Id":            {"req-123"},
	})
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, body)
	}
	var got echoReply
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	xfcc := got.Headers.Values("X-Forwarded-Client-Cert")
	if len(xfcc) != 1 || !strings.HasPrefix(xfcc[0], "By="+idAPI+";Hash=") || !strings.HasSuffix(xfcc[0], ";URI="+idFrontend) {
		t.Fatalf("XFCC = %q", xfcc)
	}
	if got.Headers.Get("X-Trustmesh-User") != "" {
		t.Fatal("a client-sent X-Trustmesh-* header reached the application")
	}
	if got.Headers.Get("X-Request-Id") != "req-123" || got.Path != "/api/users" {
		t.Fatalf("request id %q, path %q", got.Headers.Get("X-Request-Id"), got.Path)
	}
	// An invalid request ID is replaced.
	_, body = get(t, m.frontURL("api", "/"), http.Header{"X-Request-Id": {"bad id!"}})
	_ = json.Unmarshal([]byte(body), &got)
	if id := got.Headers.Get("X-Request-Id"); !validRequestID(id) || len(id) != 36 {
		t.Fatalf("generated request id %q", id)
	}
	recs := auditRecords(t, m.apiAudit)
	r := recs[0]
	if r.Decision != "allow" || r.SourcePrincipal != idFrontend || r.Destination != idAPI || r.Policy == nil || *r.Policy != "default/api-allow" ||
		r.Rule == nil || *r.Rule != 0 || !r.MTLS || r.Method != "GET" || r.Path != "/api/users?x=1" || r.RequestID != "req-123" || r.Status != 200 || r.SourceIP == "" || r.Timestamp == "" {
		t.Fatalf("audit record %+v", r)
	}
	if n := counter(t, m.api, "trustmesh_requests_total", map[string]string{"source_principal": idFrontend, "destination_principal": idAPI, "response_code": "200", "decision": "allow"}); n != 2 {
		t.Fatalf("requests_total = %v", n)
	}
	// The frontend's sidecar reuses its connection to the API's: many
	// requests, one mTLS connection (HTTP/2).
	for i := 0; i < 20; i++ {
		if code, _ := get(t, m.frontURL("api", "/again"), nil); code != 200 {
			t.Fatal(code)
		}
	}
	if n := counter(t, m.api, "trustmesh_active_connections", map[string]string{"direction": "inbound", "listener": "http"}); n != 1 {
		t.Fatalf("%v inbound connections for 22 requests, want 1 reused", n)
	}
}

func TestDeniedRequestsAndPathTricks(t *testing.T) {
	m := newMesh(t, meshOpts{})
	for _, p := range []string{"/admin", "/a%64min", "//admin", "/x/../admin", "/admin%2Fusers", "/api/..%2Fadmin/x", "/%61dmin/", "/admin;x", "/admin;/users", "/api/..;/admin"} {
		code, body := get(t, m.frontURL("api", p), nil)
		if code != http.StatusForbidden || body != "RBAC: access denied" {
			t.Errorf("%s: %d %q", p, code, body)
		}
	}
	recs := auditRecords(t, m.apiAudit)
	if len(recs) != 10 {
		t.Fatalf("%d audit records", len(recs))
	}
	for _, r := range recs {
		if r.Decision != "deny" || r.Policy == nil || *r.Policy != "default/api-deny-admin" || r.Status != 403 || !strings.Contains(r.Reason, "denied by DENY policy default/api-deny-admin rule 0") {
			t.Errorf("audit %+v", r)
		}
	}
	// A caller the policy does not allow: 403, the reason in the log only.
	cfg := m.svidTLS(t, idBatch)
	line, err := rawExchange(t, m.api.Addr("http").String(), cfg, "GET /api HTTP/1.1\r\nHost: api\r\n\r\n")
	if err != nil || line != "HTTP/1.1 403 Forbidden" {
		t.Fatalf("batch: %q %v", line, err)
	}
	last := auditRecords(t, m.apiAudit)[10]
	if last.SourcePrincipal != idBatch || !strings.Contains(last.Reason, "rule 0: principal mismatch") {
		t.Fatalf("audit %+v", last)
	}
	// A path that cannot be normalized is a bad request.
	line, _ = rawExchange(t, m.api.Addr("http").String(), m.svidTLS(t, idFrontend), "GET /a%00b HTTP/1.1\r\nHost: api\r\n\r\n")
	if line != "HTTP/1.1 400 Bad Request" {
		t.Fatalf("NUL path: %q", line)
	}
	// The application gets the normalized path.
	code, body := get(t, m.frontURL("api", "/api//v1/./%69tems/%3Aid"), nil)
	var got echoReply
	_ = json.Unmarshal([]byte(body), &got)
	if code != 200 || got.Path != "/api/v1/items/:id" || got.RawPath != "/api/v1/items/%3Aid" {
		t.Fatalf("normalized forward: %d %+v", code, got)
	}
}

func TestHandshakeRefusals(t *testing.T) {
	m := newMesh(t, meshOpts{})
	addr := m.api.Addr("http").String()
	req := "GET /api HTTP/1.1\r\nHost: api\r\n\r\n"
	root, rootKey := m.ca.cert, m.ca.key
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherTmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "evil root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	otherDER, _ := x509.CreateCertificate(rand.Reader, otherTmpl, otherTmpl, otherKey.Public(), otherKey)
	otherRoot, _ := x509.ParseCertificate(otherDER)

	cases := []struct {
		name   string
		cert   *tls.Certificate
		reason string
	}{
		{"no client certificate", nil, "no_client_certificate"},
		{"another trust domain", ptr(forge(t, otherRoot, otherKey, "spiffe://evil.example/ns/default/sa/frontend", nil)), "untrusted_domain"},
		{"our trust domain, another CA", ptr(forge(t, otherRoot, otherKey, idFrontend, nil)), "unknown_authority"},
		{"expired", ptr(forge(t, root, rootKey, idFrontend, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
		})), "expired"},
		{"not yet valid", ptr(forge(t, root, rootKey, idFrontend, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(time.Hour), time.Now().Add(2*time.Hour)
		})), "not_yet_valid"},
		{"self-signed", ptr(forge(t, nil, nil, idFrontend, nil)), "unknown_authority"},
		{"a CA certificate as leaf", ptr(forge(t, root, rootKey, idFrontend, func(c *x509.Certificate) {
			c.IsCA, c.KeyUsage = true, x509.KeyUsageCertSign|x509.KeyUsageDigitalSignature
		})), "not_an_svid"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(t, m.api, "trustmesh_tls_handshake_errors_total", map[string]string{"reason": tc.reason})
			cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13} //nolint:gosec // attacker client
			if tc.cert != nil {
				cfg.Certificates = []tls.Certificate{*tc.cert}
			}
			line, err := rawExchange(t, addr, cfg, req)
			if err == nil || strings.HasPrefix(line, "HTTP/") {
				t.Fatalf("served: %q %v", line, err)
			}
			waitFor(t, 5*time.Second, "the handshake error metric", func() bool {
				return counter(t, m.api, "trustmesh_tls_handshake_errors_total", map[string]string{"reason": tc.reason}) == before+1
			})
		})
	}
	// TLS 1.2 is refused.
	if _, err := rawExchange(t, addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}, req); err == nil { //nolint:gosec // attacker client
		t.Fatal("TLS 1.2 accepted")
	}
	// The outbound side refuses an upstream with an unexpected SPIFFE ID.
	code, _ := get(t, m.frontURL("wrong-id", "/api"), nil)
	if code != http.StatusBadGateway {
		t.Fatalf("wrong upstream identity: %d", code)
	}
	if n := counter(t, m.front, "trustmesh_tls_handshake_errors_total", map[string]string{"reason": "upstream_unexpected_identity"}); n == 0 {
		t.Fatal("upstream identity refusal not counted")
	}
	// None of these reached the application.
	if recs := auditRecords(t, m.apiAudit); len(recs) != 0 {
		t.Fatalf("refused handshakes produced decisions: %+v", recs)
	}
}

func ptr[T any](v T) *T { return &v }

func TestPeerAuthenticationModes(t *testing.T) {
	m := newMesh(t, meshOpts{})
	// STRICT: plaintext is refused before any request.
	line, err := rawExchange(t, m.api.Addr("http").String(), nil, "GET /public HTTP/1.1\r\nHost: api\r\n\r\n")
	if err == nil || strings.HasPrefix(line, "HTTP/") {
		t.Fatalf("plaintext on STRICT: %q %v", line, err)
	}
	if n := counter(t, m.api, "trustmesh_tls_handshake_errors_total", map[string]string{"reason": "plaintext_rejected"}); n != 1 {
		t.Fatalf("plaintext_rejected = %v", n)
	}
	// PERMISSIVE (port 9090): plaintext served, as unauthenticated.
	perm := m.api.Addr("permissive").String()
	if line, err := rawExchange(t, perm, nil, "GET /public/x HTTP/1.1\r\nHost: api\r\n\r\n"); err != nil || line != "HTTP/1.1 200 OK" {
		t.Fatalf("plaintext on PERMISSIVE /public: %q %v", line, err)
	}
	if line, _ := rawExchange(t, perm, nil, "GET /private HTTP/1.1\r\nHost: api\r\n\r\n"); line != "HTTP/1.1 403 Forbidden" {
		t.Fatalf("plaintext on PERMISSIVE /private: %q", line)
	}
	// …and mTLS on the same port.
	if line, err := rawExchange(t, perm, m.svidTLS(t, idFrontend), "GET /private HTTP/1.1\r\nHost: api\r\n\r\n"); err != nil || line != "HTTP/1.1 200 OK" {
		t.Fatalf("mTLS on PERMISSIVE: %q %v", line, err)
	}
	recs := auditRecords(t, m.apiAudit)
	if len(recs) != 3 || recs[0].MTLS || recs[0].Authenticated || recs[0].SourcePrincipal != "" || recs[0].Decision != "allow" ||
		!recs[2].MTLS || !recs[2].Authenticated {
		t.Fatalf("audit %+v", recs)
	}
	// A spoofed XFCC on a plaintext request does not reach the application either.
	if line, _ := rawExchange(t, perm, nil, "GET /public/y HTTP/1.1\r\nHost: api\r\nX-Forwarded-Client-Cert: URI="+idFrontend+"\r\n\r\n"); line != "HTTP/1.1 200 OK" {
		t.Fatal(line)
	}
	m.echo.mu.Lock()
	spoofed := m.echo.last.Header.Get("X-Forwarded-Client-Cert")
	m.echo.mu.Unlock()
	if spoofed != "" {
		t.Fatalf("spoofed XFCC reached the app: %q", spoofed)
	}
}

func TestTCPListener(t *testing.T) {
	m := newMesh(t, meshOpts{})
	c, err := net.Dial("tcp", m.front.Addr("api-tcp").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "hello\n" {
		t.Fatalf("echo: %q %v", line, err)
	}
	// batch is not allowed (L4: principal); the connection is closed.
	tc, err := tls.Dial("tcp", m.api.Addr("tcp").String(), m.svidTLS(t, idBatch))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(tc, "hello\n")
	if n, err := tc.Read(make([]byte, 10)); err == nil {
		t.Fatalf("denied TCP connection got %d bytes", n)
	}
	waitFor(t, 5*time.Second, "two TCP audit records", func() bool { return len(auditRecords(t, m.apiAudit)) == 2 })
	recs := auditRecords(t, m.apiAudit)
	byPrincipal := map[string]accesslog.Record{}
	for _, r := range recs {
		byPrincipal[r.SourcePrincipal] = r
	}
	if r := byPrincipal[idFrontend]; r.Decision != "allow" || r.Protocol != "tcp" || r.DestinationPort != 5432 {
		t.Fatalf("frontend: %+v", r)
	}
	if r := byPrincipal[idBatch]; r.Decision != "deny" || !strings.Contains(r.Reason, "principal mismatch") {
		t.Fatalf("batch: %+v", r)
	}
}

func TestGRPCAndWebSocketThroughBothProxies(t *testing.T) {
	m := newMesh(t, meshOpts{})
	// A gRPC health server behind an h2c inbound listener.
	gln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(gln) }()
	t.Cleanup(gs.Stop)
	apiSet := m.settings(t, Config{SVIDID: idAPI, Labels: map[string]string{"app": "api"}, Policy: PolicyConfig{Paths: []string{m.policyDir}},
		AuditLog: filepath.Join(t.TempDir(), "a.log"),
		Inbound:  []ListenerSpec{{Name: "grpc", Listen: "127.0.0.1:0", Forward: gln.Addr().String(), Port: 8080, Backend: "h2c"}}}, nil)
	api, _, _ := startProxy(t, apiSet)
	frontSet := m.settings(t, Config{SVIDID: idFrontend, AuditLog: filepath.Join(t.TempDir(), "f.log"),
		Outbound: []ListenerSpec{{Name: "grpc", Listen: "127.0.0.1:0", Upstream: api.Addr("grpc").String(), SPIFFEIDs: []string{idAPI}}}}, nil)
	front, _, _ := startProxy(t, frontSet)
	cc, err := grpc.NewClient(front.Addr("grpc").String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	resp, err := healthpb.NewHealthClient(cc).Check(testenvCtx(t), &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health through the mesh: %v %v", resp, err)
	}

	// A WebSocket upgrade through both proxies.
	c, err := net.Dial("tcp", m.front.Addr("api").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(c)
	resp101, err := http.ReadResponse(br, nil)
	if err != nil || resp101.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp101, err)
	}
	_, _ = io.WriteString(c, "ping\n")
	if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("websocket echo: %q %v", line, err)
	}
	// The tunnel holds its connection slot (and shows as active) until it
	// closes, though the http.Server no longer tracks it.
	active := func() float64 {
		return counter(t, m.api, "trustmesh_active_connections", map[string]string{"direction": "inbound", "listener": "http"})
	}
	if n := active(); n != 1 {
		t.Fatalf("%v active inbound connections during the WebSocket tunnel, want 1", n)
	}
	c.Close()
	waitFor(t, 10*time.Second, "the closed tunnel's connection to be released", func() bool { return active() == 0 })
}

// Sockets that connect and send nothing are closed after the first-byte
// timeout, long before handshake_timeout, so they cannot keep real clients
// out; and inbound connections never use up the outbound budget.
func TestIdleSocketsDoNotHoldSlots(t *testing.T) {
	const slots = 8
	m := newMesh(t, meshOpts{limits: func(s *Settings) {
		s.MaxConnections = slots
		s.HandshakeTimeout = time.Minute
	}})
	var idle []net.Conn
	for i := 0; i < slots; i++ {
		c, err := net.Dial("tcp", m.api.Addr("http").String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	waitFor(t, 10*time.Second, "the idle sockets to take every inbound slot", func() bool { return len(m.api.slots["inbound"]) == slots })
	if n := len(m.api.slots["outbound"]); n != 0 {
		t.Fatalf("inbound connections took %d outbound slots", n)
	}
	// A real client gets through once they are cut off (well within the
	// minute of handshake_timeout).
	code, body := get(t, m.frontURL("api", "/api/x"), nil)
	if code != http.StatusOK {
		t.Fatalf("a real client behind idle sockets: %d %s", code, body)
	}
	for _, c := range idle {
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("an idle socket was not closed by the proxy: %v", err)
		}
	}
	if n := counter(t, m.api, "trustmesh_tls_handshake_errors_total", map[string]string{"reason": "timeout"}); n < slots {
		t.Fatalf("%v first-byte timeouts counted, want %d", n, slots)
	}
}

// TestListenersShareSlots: a listener waiting for connections holds no
// slot, so with max_connections below the number of listeners each
// still serves, one connection at a time.
func TestListenersShareSlots(t *testing.T) {
	m := newMesh(t, meshOpts{limits: func(s *Settings) { s.MaxConnections = 1 }})
	for i := 0; i < 2; i++ {
		if line, err := rawExchange(t, m.api.Addr("http").String(), m.svidTLS(t, idFrontend), "GET /api HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"); line != "HTTP/1.1 200 OK" {
			t.Fatalf("mTLS listener: %q %v", line, err)
		}
		if line, err := rawExchange(t, m.api.Addr("permissive").String(), nil, "GET /public HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"); line != "HTTP/1.1 200 OK" {
			t.Fatalf("plaintext listener: %q %v", line, err)
		}
	}
}

func testenvCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestLimitsCutOffAbusiveClients(t *testing.T) {
	m := newMesh(t, meshOpts{limits: func(s *Settings) {
		s.HeaderReadTimeout = 300 * time.Millisecond
		s.HandshakeTimeout = 500 * time.Millisecond
		s.MaxHeaderBytes = 4096
	}})
	perm := m.api.Addr("permissive").String()
	// Slowloris: connections that never finish their headers, and one that
	// never starts a handshake.
	var slow []net.Conn
	for i := 0; i < 20; i++ {
		c, err := net.Dial("tcp", perm)
		if err != nil {
			t.Fatal(err)
		}
		slow = append(slow, c)
		if i > 0 {
			_, _ = io.WriteString(c, "GET /public HTTP/1.1\r\nHost: api\r\nX-Slow: ")
		}
	}
	// Other clients are still served meanwhile.
	if line, err := rawExchange(t, perm, nil, "GET /public HTTP/1.1\r\nHost: api\r\n\r\n"); err != nil || line != "HTTP/1.1 200 OK" {
		t.Fatalf("a normal client was starved: %q %v", line, err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, c := range slow {
		wg.Add(1)
		go func(c net.Conn) {
			defer wg.Done()
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := io.ReadAll(c) // the proxy closes the connection
			if err != nil {
				t.Errorf("slow client not cut off: %v", err)
			}
		}(c)
	}
	wg.Wait()
	if time.Since(start) > 9*time.Second {
		t.Fatal("slow clients held on")
	}
	// Oversized headers: 431 from the inbound side, over mTLS.
	big := strings.Repeat("a", 8192)
	line, _ := rawExchange(t, m.api.Addr("http").String(), m.svidTLS(t, idFrontend), "GET /api HTTP/1.1\r\nHost: api\r\nX-Big: "+big+"\r\n\r\n")
	if line != "HTTP/1.1 431 Request Header Fields Too Large" {
		t.Fatalf("oversized headers: %q", line)
	}
}

func TestPolicyHotReload(t *testing.T) {
	m := newMesh(t, meshOpts{})
	if code, _ := get(t, m.frontURL("api", "/reports"), nil); code != 200 {
		t.Fatalf("before: %d", code)
	}
	extra := filepath.Join(m.policyDir, "deny-reports.yaml")
	writeFile(t, extra, []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-reports, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/reports*"]}}]}]
`), 0o644)
	waitFor(t, 10*time.Second, "the new DENY policy", func() bool {
		code, _ := get(t, m.frontURL("api", "/reports"), nil)
		return code == http.StatusForbidden
	})
	// A broken change is refused; the last good policy stays.
	writeFile(t, extra, []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec: {action: NOPE}\n"), 0o644)
	waitFor(t, 10*time.Second, "the refused reload", func() bool {
		return counter(t, m.api, "trustmesh_policy_reloads_total", map[string]string{"result": "error"}) >= 1
	})
	if code, _ := get(t, m.frontURL("api", "/reports"), nil); code != http.StatusForbidden {
		t.Fatalf("after a broken change: %d", code)
	}
	if code, _ := get(t, m.frontURL("api", "/admin"), nil); code != http.StatusForbidden {
		t.Fatalf("old policy lost: %d", code)
	}
	if err := os.Remove(extra); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the DENY policy to go", func() bool {
		code, _ := get(t, m.frontURL("api", "/reports"), nil)
		return code == http.StatusOK
	})
}

func TestGracefulShutdownDrainsInFlight(t *testing.T) {
	m := newMesh(t, meshOpts{})
	result := make(chan int, 1)
	go func() {
		resp, err := http.Get(m.frontURL("api", "/slow"))
		if err != nil {
			result <- -1
			return
		}
		resp.Body.Close()
		result <- resp.StatusCode
	}()
	// Wait until the request is in the application, then stop the API proxy.
	waitFor(t, 10*time.Second, "the request to reach the app", func() bool {
		m.echo.mu.Lock()
		defer m.echo.mu.Unlock()
		return m.echo.last != nil && m.echo.last.URL.Path == "/slow"
	})
	m.apiCancel()
	// New connections are refused while the old request drains.
	waitFor(t, 10*time.Second, "the listener to close", func() bool {
		c, err := net.DialTimeout("tcp", m.api.Addr("http").String(), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	close(m.echo.release)
	select {
	case code := <-result:
		if code != http.StatusOK {
			t.Fatalf("in-flight request: %d", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("in-flight request never finished")
	}
	if err := m.apiDone(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestShutdownEndsTunnels: a graceful shutdown also ends the tunnels
// still open at its deadline, the WebSockets net/http's path relays
// (which its Server.Shutdown does not wait for) included, and their audit
// records are written before Run returns.
func TestShutdownEndsTunnels(t *testing.T) {
	m := newMesh(t, meshOpts{limits: func(s *Settings) { s.ShutdownTimeout = time.Second }})
	c, br := dialWebSocket(t, m.api.Addr("permissive").String(), "/public/ws")
	_, _ = io.WriteString(c, "ping\n")
	if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo: %q %v", line, err)
	}
	m.apiCancel()
	if err := m.apiDone(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := br.ReadByte(); err == nil || isTimeout(err) {
		t.Fatalf("the WebSocket outlived the shutdown: %v", err)
	}
	found := false
	for _, r := range auditRecords(t, m.apiAudit) {
		found = found || r.Path == "/public/ws"
	}
	if !found {
		t.Fatal("no audit record for the WebSocket ended by the shutdown")
	}
}

// TestShutdownEndsTCPTunnelToStubbornApp: at the shutdown deadline a TCP
// tunnel ends on both sides, even when the application does not close
// its end when the client's closes (both ends are tracked), so Run
// returns at the deadline, not at tunnel_idle_timeout.
func TestShutdownEndsTCPTunnelToStubbornApp(t *testing.T) {
	m := newMesh(t, meshOpts{limits: func(s *Settings) { s.ShutdownTimeout = time.Second }})
	c, err := net.Dial("tcp", m.front.Addr("api-tcp").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "hold\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.tcpHeld: // the tunnel reaches the application
	case <-time.After(10 * time.Second):
		t.Fatal("the tunnel never reached the application")
	}
	m.apiCancel()
	done := make(chan error, 1)
	go func() { done <- m.apiDone() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("shutdown waited on a tunnel past its deadline")
	}
}

func TestRotationKeepsConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for an SVID rotation")
	}
	m := newMesh(t, meshOpts{x509TTL: 10})
	serial := func() string {
		c, err := tls.Dial("tcp", m.api.Addr("tcp").String(), m.svidTLS(t, idFrontend))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	first := serial()
	c, err := net.Dial("tcp", m.front.Addr("api-tcp").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	roundTrip := func(msg string) {
		t.Helper()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, msg+"\n"); err != nil {
			t.Fatal(err)
		}
		if line, err := br.ReadString('\n'); err != nil || line != msg+"\n" {
			t.Fatalf("echo %q: %q %v", msg, line, err)
		}
	}
	roundTrip("before")
	waitFor(t, 30*time.Second, "the API's SVID to rotate", func() bool { return serial() != first })
	roundTrip("after") // the established connection survived
	if code, _ := get(t, m.frontURL("api", "/api"), nil); code != 200 {
		t.Fatalf("new handshake after rotation: %d", code)
	}
}

func TestConfigValidation(t *testing.T) {
	_, err := Config{
		Socket: "relative.sock", SVIDID: "nope", Labels: map[string]string{"": "x"},
		Inbound: []ListenerSpec{
			{Name: "a", Listen: "127.0.0.1", Forward: "127.0.0.1:8080", Protocol: "udp", Backend: "h3"},
			{Name: "a", Listen: "127.0.0.1:9000", Forward: "x", Upstream: "y:1"},
		},
		Outbound:     []ListenerSpec{{Listen: "127.0.0.1:9000", Upstream: "api", SPIFFEIDs: []string{"http://x"}}},
		Limits:       LimitsConfig{MaxHeaderBytes: 10},
		Policy:       PolicyConfig{Paths: []string{"/does/not/exist"}, DefaultMTLS: "LOOSE"},
		StripHeaders: []string{"bad header"},
		AuditLog:     "/no/such/dir/audit.log",
	}.Resolve()
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		`socket "relative.sock"`, `svid_id "nope"`, "empty label key", `inbound[0].listen "127.0.0.1"`, `inbound[0].protocol "udp"`,
		`inbound[0].backend "h3"`, `inbound[1].name "a": used twice`, `inbound[1].forward "x"`, "inbound[1]: upstream and spiffe_ids are outbound settings",
		`outbound[0].listen "127.0.0.1:9000": also used by inbound[1]`, `outbound[0].upstream "api"`, `outbound[0].spiffe_ids "http://x"`,
		"limits.max_header_bytes 10", "/does/not/exist", `unknown mTLS mode "LOOSE"`, `strip_headers "bad header"`,
		"audit log /no/such/dir/audit.log: directory /no/such/dir does not exist",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	if _, err := (Config{}).Resolve(); err == nil || !strings.Contains(err.Error(), "no listeners") {
		t.Fatalf("no listeners: %v", err)
	}
	// A config file: unknown keys are errors, with their line.
	p := filepath.Join(t.TempDir(), "proxy.yaml")
	writeFile(t, p, []byte("socket: /tmp/x.sock\ninbound:\n  - listen: 127.0.0.1:1\n    forward: 127.0.0.1:2\n    forwrd: x\n"), 0o644)
	if _, err := LoadSettings(p, nil); err == nil || !strings.Contains(err.Error(), "line 5") || !strings.Contains(err.Error(), "forwrd") {
		t.Fatalf("unknown key: %v", err)
	}
}

func TestNoPolicyDeniesEverything(t *testing.T) {
	m := newMesh(t, meshOpts{})
	set := m.settings(t, Config{SVIDID: idAPI, AuditLog: filepath.Join(t.TempDir(), "a.log"),
		Inbound: []ListenerSpec{{Name: "http", Listen: "127.0.0.1:0", Forward: m.echo.addr}}}, nil)
	p, _, _ := startProxy(t, set)
	line, err := rawExchange(t, p.Addr("http").String(), m.svidTLS(t, idFrontend), "GET / HTTP/1.1\r\nHost: api\r\n\r\n")
	if err != nil || line != "HTTP/1.1 403 Forbidden" {
		t.Fatalf("no policy: %q %v", line, err)
	}
	recs := auditRecords(t, set.AuditLog)
	if len(recs) != 1 || !strings.Contains(recs[0].Reason, "trustmesh-system/no-policy-configured") {
		t.Fatalf("audit %+v", recs)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	m := newMesh(t, meshOpts{})
	set := m.settings(t, Config{SVIDID: idAPI, Labels: map[string]string{"app": "api"}, Policy: PolicyConfig{Paths: []string{m.policyDir}},
		MetricsAddr: "127.0.0.1:0", AuditLog: filepath.Join(t.TempDir(), "a.log"),
		Inbound: []ListenerSpec{{Name: "http", Listen: "127.0.0.1:0", Forward: m.echo.addr, Port: 8080}}}, nil)
	p, _, _ := startProxy(t, set)
	cfg := m.svidTLS(t, idFrontend)
	if line, _ := rawExchange(t, p.Addr("http").String(), cfg, "GET /admin HTTP/1.1\r\nHost: api\r\n\r\n"); line != "HTTP/1.1 403 Forbidden" {
		t.Fatal(line)
	}
	resp, err := http.Get("http://" + p.MetricsAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		fmt.Sprintf(`trustmesh_requests_total{decision="deny",destination_principal=%q,response_code="403",source_principal=%q} 1`, idAPI, idFrontend),
		"trustmesh_request_duration_seconds_bucket", "trustmesh_svid_expiry_timestamp_seconds ", "trustmesh_active_connections",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// exchange sends one raw HTTP/1.1 request straight to the API's inbound
// listener with the frontend's SVID and reads the response.
func exchange(t *testing.T, m *mesh, request string) (*http.Response, string) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", m.api.Addr("http").String(), m.svidTLS(t, idFrontend))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// Identity headers spelled with underscores (which CGI, WSGI, Rack and
// many frameworks read as the dashed name) are stripped too.
func TestUnderscoreIdentityHeadersStripped(t *testing.T) {
	m := newMesh(t, meshOpts{})
	resp, body := exchange(t, m, "GET /api/x HTTP/1.1\r\nHost: api\r\n"+
		"X_Forwarded_Client_Cert: By=spiffe://evil;URI=spiffe://example.org/ns/default/sa/admin\r\n"+
		"x_trustmesh_user: admin\r\nX-Trustmesh_Role: admin\r\nX_Other: kept\r\n\r\n")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var got echoReply
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	for k, v := range got.Headers {
		name := strings.ToLower(strings.ReplaceAll(k, "_", "-"))
		if strings.HasPrefix(name, "x-trustmesh-") || name == "x-forwarded-client-cert" && (len(v) != 1 || strings.Contains(v[0], "evil")) {
			t.Errorf("spoofed %s: %q reached the application", k, v)
		}
	}
	if got.Headers.Get("X_other") != "kept" {
		t.Errorf("an unrelated underscore header was dropped: %v", got.Headers)
	}
}

// An upgrade other than WebSocket would turn the connection into a tunnel
// past per-request authorization: h2c is dropped (served as HTTP/1.1),
// anything else refused.
func TestUpgradeOtherThanWebSocketNotForwarded(t *testing.T) {
	m := newMesh(t, meshOpts{})
	resp, body := exchange(t, m, "GET /api/x HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, HTTP2-Settings\r\n"+
		"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("h2c upgrade: status %d: %s", resp.StatusCode, body)
	}
	var got echoReply
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if got.Headers.Get("Upgrade") != "" || got.Headers.Get("Http2-Settings") != "" {
		t.Fatalf("the h2c upgrade reached the application: %v", got.Headers)
	}
	for _, up := range []string{"TLS/1.2", "foo", "websocket, h2c"} {
		resp, body = exchange(t, m, "GET /api/x HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: "+up+"\r\n\r\n")
		if resp.StatusCode != http.StatusBadRequest || body != "Bad Request" {
			t.Errorf("Upgrade: %s: %d %q", up, resp.StatusCode, body)
		}
	}
	recs := auditRecords(t, m.apiAudit)
	last := recs[len(recs)-1]
	if last.Decision != "deny" || last.Status != http.StatusBadRequest || !strings.Contains(last.Reason, "upgrade refused") {
		t.Fatalf("audit %+v", last)
	}
}

// A client's Connection header may name only its own hop-by-hop headers:
// naming the ones the proxy sets does not take them away.
func TestConnectionHeaderCannotRemoveProxyHeaders(t *testing.T) {
	m := newMesh(t, meshOpts{})
	resp, body := exchange(t, m, "GET /api/x HTTP/1.1\r\nHost: api\r\n"+
		"Connection: keep-alive, X-Forwarded-Client-Cert, X-Forwarded-For, X-Forwarded-Proto, X-Request-Id\r\n"+
		"X-Request-Id: client-chosen-id\r\n\r\n")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var got echoReply
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if xfcc := got.Headers.Get("X-Forwarded-Client-Cert"); !strings.Contains(xfcc, "URI="+idFrontend) {
		t.Errorf("X-Forwarded-Client-Cert at the application: %q", xfcc)
	}
	if got.Headers.Get("X-Forwarded-For") == "" || got.Headers.Get("X-Forwarded-Proto") != "https" {
		t.Errorf("X-Forwarded-* at the application: %v", got.Headers)
	}
	id := got.Headers.Get("X-Request-Id")
	if id == "" || id == "client-chosen-id" {
		t.Errorf("X-Request-Id at the application: %q (the client's was a hop-by-hop header)", id)
	}
}

// svidClient calls the API's inbound listener directly, as the frontend
// (its SVID), over HTTP/1.1 or HTTP/2.
func (m *mesh) svidClient(t *testing.T, alpn string) *http.Client {
	cfg := m.svidTLS(t, idFrontend)
	cfg.NextProtos = []string{alpn}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: alpn == "h2"}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// TestRequestTrailersNotForwarded: identity headers sent as request
// trailers (declared or not) never reach the application, on either
// path; Envoy too drops request trailers by default.
func TestRequestTrailersNotForwarded(t *testing.T) {
	m := newMesh(t, meshOpts{})
	for _, alpn := range []string{"http/1.1", "h2"} {
		t.Run(alpn, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, "https://"+m.api.Addr("http").String()+"/api/upload", strings.NewReader("body"))
			req.ContentLength = -1 // chunked on HTTP/1.1, so that trailers can follow
			req.Trailer = http.Header{
				"X-Forwarded-Client-Cert": {"By=spiffe://evil;URI=spiffe://example.org/ns/default/sa/admin"},
				"X-Trustmesh-User":        {"admin"},
				"X-App-Checksum":          {"abc"},
			}
			resp, err := m.svidClient(t, alpn).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var got echoReply
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != http.StatusOK || resp.Proto[:6] != map[string]string{"h2": "HTTP/2", "http/1.1": "HTTP/1"}[alpn] {
				t.Fatalf("%s %d: %v", resp.Proto, resp.StatusCode, err)
			}
			for k, v := range got.Trailer {
				if len(v) > 0 && v[0] != "" {
					t.Errorf("trailer %s: %q reached the application", k, v)
				}
			}
			if xfcc := got.Headers.Values("X-Forwarded-Client-Cert"); len(xfcc) != 1 || !strings.HasSuffix(xfcc[0], ";URI="+idFrontend) {
				t.Errorf("XFCC %q", xfcc)
			}
		})
	}
}

// TestPolicySeesOnlyTheProxysIdentityHeaders: a rule on an identity
// header matches the value the proxy sets, never one the client forged.
func TestPolicySeesOnlyTheProxysIdentityHeaders(t *testing.T) {
	m := newMesh(t, meshOpts{})
	writeFile(t, filepath.Join(m.policyDir, "header-rules.yaml"), []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: header-rules, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/reports*"]}}]
    when: [{key: "request.headers[x-trustmesh-user]", values: ["*"]}]
  - to: [{operation: {paths: ["/reports*"]}}]
    when: [{key: "request.headers[x-forwarded-client-cert]", values: ["*sa/admin"]}]
  - to: [{operation: {paths: ["/frontend-only*"]}}]
    when: [{key: "request.headers[x-forwarded-client-cert]", notValues: ["*;URI=`+idFrontend+`"]}]
`), 0o644)
	// (Reloads count changes after the first load.)
	waitFor(t, 10*time.Second, "the header rules", func() bool {
		return counter(t, m.api, "trustmesh_policy_reloads_total", map[string]string{"result": "ok"}) >= 1
	})
	forged := http.Header{
		"X-Trustmesh-User":        {"admin"},
		"X-Forwarded-Client-Cert": {"By=spiffe://evil;URI=spiffe://example.org/ns/default/sa/admin"},
	}
	for _, alpn := range []string{"http/1.1", "h2"} {
		c := m.svidClient(t, alpn)
		for _, path := range []string{"/reports", "/frontend-only"} {
			req, _ := http.NewRequest(http.MethodGet, "https://"+m.api.Addr("http").String()+path, nil)
			req.Header = forged.Clone()
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("%s %s with forged identity headers: %d (the policy saw the forgery)", alpn, path, resp.StatusCode)
			}
		}
	}
}

// TestSlowBodiesAndReadersCutOff: a request body, and a response, may
// take their time while they keep moving, but one that stalls for
// idle_timeout ends the exchange (408 for a stalled body), on the
// HTTP/1.1 fast path (mTLS) and on net/http's (plaintext, PERMISSIVE).
func TestSlowBodiesAndReadersCutOff(t *testing.T) {
	const idle = time.Second
	m := newMesh(t, meshOpts{limits: func(s *Settings) { s.IdleTimeout = idle }})
	paths := []struct {
		name, addr string
		tls        *tls.Config
	}{
		{"mtls", m.api.Addr("http").String(), m.svidTLS(t, idFrontend)},
		{"plaintext", m.api.Addr("permissive").String(), nil},
	}
	dial := func(t *testing.T, addr string, cfg *tls.Config) net.Conn {
		d := &net.Dialer{Timeout: 5 * time.Second}
		var c net.Conn
		var err error
		if cfg != nil {
			c, err = tls.DialWithDialer(d, "tcp", addr, cfg)
		} else {
			c, err = d.Dial("tcp", addr)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		return c
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			// A body that trickles in, each byte well within idle_timeout
			// but the whole longer than it, is served.
			c := dial(t, p.addr, p.tls)
			const n = 6
			fmt.Fprintf(c, "POST /public/upload HTTP/1.1\r\nHost: api\r\nContent-Length: %d\r\n\r\n", n)
			for i := 0; i < n; i++ {
				time.Sleep(idle / 4)
				if _, err := c.Write([]byte("x")); err != nil {
					t.Fatal(err)
				}
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("trickled body: %v %v", resp, err)
			}
			// A body that stops: 408, and the connection ends.
			c = dial(t, p.addr, p.tls)
			fmt.Fprint(c, "POST /public/upload HTTP/1.1\r\nHost: api\r\nContent-Length: 100\r\n\r\nx")
			br := bufio.NewReader(c)
			resp, err = http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusRequestTimeout {
				t.Fatalf("stalled body: %v %v", resp, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			if _, err := br.ReadByte(); err == nil {
				t.Fatal("the connection stayed open after the 408")
			}
			// A stream that goes quiet for longer than idle_timeout
			// (between writes, and before its end) is no slow reader: it
			// arrives whole, and the connection stays usable.
			c = dial(t, p.addr, p.tls)
			br = bufio.NewReader(c)
			for i := 0; i < 2; i++ {
				fmt.Fprintf(c, "GET /public/pause?ms=%d HTTP/1.1\r\nHost: api\r\n\r\n", (3 * idle / 2).Milliseconds())
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(resp.Body)
				if err != nil || string(body) != "firstsecond" {
					t.Fatalf("paused stream %d: %q %v", i, body, err)
				}
			}
			// A client that stops reading a large response is cut off: it
			// gets no more than the sockets held when it stopped.
			c = dial(t, p.addr, p.tls)
			fmt.Fprint(c, "GET /public/big HTTP/1.1\r\nHost: api\r\n\r\n")
			time.Sleep(3 * idle)
			got, _ := io.Copy(io.Discard, c)
			if got >= bigResponse {
				t.Fatalf("the whole response (%d bytes) reached a client that stopped reading", got)
			}
		})
	}
	// The cut-off exchanges are in the audit log as what the client got.
	var statuses []int
	for _, r := range auditRecords(t, m.apiAudit) {
		if r.Path == "/public/upload" {
			statuses = append(statuses, r.Status)
		}
	}
	if !slices.Equal(statuses, []int{200, 408, 200, 408}) {
		t.Fatalf("audit statuses %v", statuses)
	}
}

// TestIdleTunnelsClosed: a tunnel in which bytes keep moving lives on past
// tunnel_idle_timeout; one in which nothing moves either way for it is
// closed, giving its slot back. Both for a TCP listener and for a
// WebSocket on the plaintext PERMISSIVE port, which net/http's
// ReverseProxy relays rather than h1.go.
func TestIdleTunnelsClosed(t *testing.T) {
	const idle = time.Second
	m := newMesh(t, meshOpts{limits: func(s *Settings) { s.TunnelIdleTimeout = idle }})
	t.Run("tcp", func(t *testing.T) {
		c, err := net.Dial("tcp", m.front.Addr("api-tcp").String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		idleTunnelClosed(t, m, c, bufio.NewReader(c), idle)
	})
	t.Run("websocket on net/http's path", func(t *testing.T) {
		c, br := dialWebSocket(t, m.api.Addr("permissive").String(), "/public/ws")
		idleTunnelClosed(t, m, c, br, idle)
	})
	t.Run("websocket to an application that stopped reading", func(t *testing.T) {
		// Closing the client's side alone would leave net/http's relay
		// blocked on the application; its audit line is written when
		// the relay ends.
		c, _ := dialWebSocket(t, m.api.Addr("permissive").String(), "/public/silent")
		flood := make([]byte, 64<<10)
		for {
			if _, err := c.Write(flood); err != nil {
				if isTimeout(err) {
					t.Fatal("the tunnel to an application that stopped reading stayed open")
				}
				break
			}
		}
		waitFor(t, 10*time.Second, "the relay to /public/silent to end", func() bool {
			for _, r := range auditRecords(t, m.apiAudit) {
				if r.Path == "/public/silent" {
					return true
				}
			}
			return false
		})
	})
}

// idleTunnelClosed talks over the echoing tunnel c for twice idle, then
// waits for the proxies to close it and give its slots back.
func idleTunnelClosed(t *testing.T, m *mesh, c net.Conn, br *bufio.Reader, idle time.Duration) {
	t.Helper()
	for i := 0; i < 8; i++ { // 2 s of traffic, a message every quarter of idle
		if _, err := fmt.Fprintf(c, "ping %d\n", i); err != nil {
			t.Fatal(err)
		}
		if line, err := br.ReadString('\n'); err != nil || line != fmt.Sprintf("ping %d\n", i) {
			t.Fatalf("echo %d: %q %v", i, line, err)
		}
		time.Sleep(idle / 4)
	}
	start := time.Now()
	_, err := br.ReadByte() // nothing more is sent: the proxies close the tunnel
	if err == nil || isTimeout(err) {
		t.Fatalf("an idle tunnel stayed open: %v", err)
	}
	if waited := time.Since(start); waited < idle/2 {
		t.Fatalf("closed after %v, before it was idle", waited)
	}
	waitFor(t, 10*time.Second, "the tunnel's slots back", func() bool {
		return len(m.front.slots["outbound"]) == 0 && len(m.api.slots["inbound"]) == 0
	})
}

// dialWebSocket opens a connection to addr (20 s deadline, closed when the
// test ends) and switches it to WebSocket at path; the echo app echoes
// bytes after that.
func dialWebSocket(t *testing.T, addr, path string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, br := dialH1(t, addr)
	_, _ = io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade %s: %v %v", path, resp, err)
	}
	return c, br
}
