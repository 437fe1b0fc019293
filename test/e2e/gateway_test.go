package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauth2-proxy/mockoidc"
)

// TestGatewayValidate: the example config is valid; a broken one is
// reported with every problem and exit 1; no --config is a usage error.
func TestGatewayValidate(t *testing.T) {
	out, warnings, code := run(t, "gateway", "validate", "--config", "../../examples/gateway/gateway.yaml")
	if code != 0 || !strings.Contains(out, "configuration is valid") {
		t.Fatalf("validate: exit %d: %s%s", code, out, warnings)
	}
	// The example's bearer audience is its login client's ID (as in the
	// issue's config): valid, with a warning that ID tokens pass too.
	if !strings.Contains(warnings, "warning: bearer_tokens[0]: audiences include identity provider corp's client_id") {
		t.Fatalf("validate warnings: %q", warnings)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte(`external_url: http://gateway.example.com
identity_providers:
  - {name: corp, issuer: "http://idp.example.com", client_id: x, client_secret: y}
bearer_tokens:
  - {issuer: "https://idp.example.com", audiences: [a], algorithms: [HS256], token_types: [at+jwt, ""]}
routes:
  - {name: tool, upstream: "ftp://x"}
unknown_key: 1
`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := run(t, "gateway", "validate", "--config", bad)
	for _, want := range []string{"unknown_key", "plain http is refused", "HS256", "token_types: an empty type", "allows nobody", "ftp://x", "external_url"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("validate output lacks %q:\n%s", want, errOut)
		}
	}
	if code != 1 {
		t.Fatalf("exit %d", code)
	}
	if _, _, code := run(t, "gateway", "validate"); code != 2 {
		t.Fatalf("no --config: exit %d, want 2", code)
	}

	// What run refuses on start, validate refuses too: a signing key that
	// others may read, an audit log in a directory that is not there. And
	// it creates nothing.
	dir := t.TempDir()
	key := filepath.Join(dir, "assertion-key.pem")
	if err := os.WriteFile(key, []byte("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(key, 0o644); err != nil { // past the umask
		t.Fatal(err)
	}
	files := filepath.Join(dir, "files.yaml")
	if err := os.WriteFile(files, []byte(`external_url: http://127.0.0.1:4180
identity_providers:
  - {name: corp, issuer: "http://127.0.0.1:5556", client_id: x, client_secret: y}
routes:
  - {name: tool, upstream: "http://127.0.0.1:8080", allow: {authenticated: true}}
assertion: {signing_key_file: assertion-key.pem, ttl: 60s}
audit_log: missing/audit.log
`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = run(t, "gateway", "validate", "--config", files)
	for _, want := range []string{"signing_key_file", "chmod 600", "audit_log", "does not exist"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("validate output lacks %q:\n%s", want, errOut)
		}
	}
	if code != 1 {
		t.Fatalf("exit %d", code)
	}
	if _, err := os.Stat(filepath.Join(dir, "missing")); err == nil {
		t.Error("validate created the audit log's directory")
	}
	help := mustRun(t, "gateway", "validate", "--help")
	if strings.Contains(help, "--metrics-addr") || !strings.Contains(help, "--config") {
		t.Errorf("validate --help lists run's flags:\n%s", help)
	}
}

// nginxBinary finds nginx, skipping (or failing with
// TRUSTMESH_TEST_REQUIRE_NGINX) when it is not installed.
func nginxBinary(t *testing.T) string {
	for _, p := range []string{"nginx", "/usr/sbin/nginx"} {
		if bin, err := exec.LookPath(p); err == nil {
			return bin
		}
	}
	if os.Getenv("TRUSTMESH_TEST_REQUIRE_NGINX") != "" {
		t.Fatal("nginx not found and TRUSTMESH_TEST_REQUIRE_NGINX is set (apt-get install nginx-light)")
	}
	t.Skip("nginx not installed (apt-get install nginx-light); set TRUSTMESH_TEST_REQUIRE_NGINX=1 to fail instead")
	return ""
}

func selfSigned(t *testing.T, dir, host string) (certFile, keyFile string, pool *x509.CertPool) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func waitHTTP(t *testing.T, what, url string, c *http.Client, p *childProc) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			return
		}
		if p != nil {
			select {
			case err := <-p.done:
				t.Fatalf("%s exited: %v\n%s", what, err, p.log)
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not answering at %s after 30s: %v", what, url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestGatewayNginxAuthRequest runs seed 001's nginx config
// (examples/nginx, ports and paths templated) with a real nginx in front
// of a backend, the gateway binary behind auth_request and a real OIDC
// provider (mockoidc): sign-in through error_page, identity headers at the
// backend, spoofed headers dropped, open redirects refused, sign-out.
func TestGatewayNginxAuthRequest(t *testing.T) {
	nginx := nginxBinary(t)
	dir := t.TempDir()
	const host = "internal-tool.example.com"

	idp, err := mockoidc.Run()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = idp.Shutdown() })

	var mu sync.Mutex
	var seen http.Header
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Header.Clone()
		mu.Unlock()
		_, _ = io.WriteString(w, "internal tool: "+r.URL.Path)
	}))
	t.Cleanup(backend.Close)

	nginxAddr, gwAddr := freeAddr(t), freeAddr(t)
	_, nginxPort, _ := net.SplitHostPort(nginxAddr)
	external := "https://" + host + ":" + nginxPort
	certFile, keyFile, pool := selfSigned(t, dir, host)

	cfg := fmt.Sprintf(`listen: %s
external_url: %s
identity_providers:
  - name: corp
    issuer: %s
    client_id: %s
    client_secret: %s
    scopes: [openid, profile, email, groups]
session:
  store: sqlite://%s
routes:
  - name: internal-tool
    host: %s
    identity_provider: corp
    allow: {groups: [engineering]}
  - name: admin
    host: %s
    path_prefix: /admin
    identity_provider: corp
    allow: {groups: [admins]}
  - name: other-route
    host: other-route.example.com
    identity_provider: corp
    allow: {groups: [engineering]}
audit_log: %s
assertion:
  signing_key_file: %s
`, gwAddr, external, idp.Issuer(), idp.ClientID, idp.ClientSecret, filepath.Join(dir, "sessions.db"), host, host,
		filepath.Join(dir, "audit.log"), filepath.Join(dir, "assertion.pem"))
	cfgFile := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	gw := startChild(t, binary, "gateway", "run", "--config", cfgFile, "--log-level", "debug")
	waitHTTP(t, "gateway", "http://"+gwAddr+"/ping", http.DefaultClient, gw)

	// The example, templated for ports and paths only.
	example, err := os.ReadFile("../../examples/nginx/internal-tool.conf")
	if err != nil {
		t.Fatal(err)
	}
	site := strings.NewReplacer(
		"listen 443 ssl;", "listen "+nginxAddr+" ssl;",
		"listen 443 ssl default_server;", "listen "+nginxAddr+" ssl default_server;",
		"/etc/nginx/certs/internal-tool.crt", certFile,
		"/etc/nginx/certs/internal-tool.key", keyFile,
		"http://internal-tool:8080", backend.URL,
		"http://127.0.0.1:4180", "http://"+gwAddr,
	).Replace(string(example))
	if !strings.Contains(site, backend.URL) || !strings.Contains(site, gwAddr) || !strings.Contains(site, nginxAddr) {
		t.Fatal("the example changed: the templating no longer applies")
	}
	if err := os.WriteFile(filepath.Join(dir, "internal-tool.conf"), []byte(site), 0o600); err != nil {
		t.Fatal(err)
	}
	var tmp strings.Builder
	for _, k := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		fmt.Fprintf(&tmp, "    %s_temp_path %s;\n", k, filepath.Join(dir, k))
	}
	main := fmt.Sprintf(`daemon off;
master_process off;
pid %s;
error_log %s info;
events { worker_connections 256; }
http {
    access_log %s;
%s    include %s;
}
`, filepath.Join(dir, "nginx.pid"), filepath.Join(dir, "error.log"), filepath.Join(dir, "access.log"), tmp.String(), filepath.Join(dir, "internal-tool.conf"))
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(main), 0o600); err != nil {
		t.Fatal(err)
	}
	ng := startChild(t, nginx, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log"))
	t.Cleanup(func() {
		if t.Failed() {
			el, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("gateway log:\n%s\nnginx error log:\n%s", gw.log, el)
		}
	})

	jar, _ := cookiejar.New(nil)
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if strings.HasPrefix(addr, host+":") {
				addr = nginxAddr
			}
			return dialer.DialContext(ctx, network, addr)
		},
	}
	browser := &http.Client{Jar: jar, Transport: tr, Timeout: 30 * time.Second}
	noRedirect := &http.Client{Jar: jar, Transport: tr, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	waitHTTP(t, "nginx", external+"/", noRedirect, ng)

	get := func(c *http.Client, u string, hdr map[string]string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}

	// Unauthenticated: nginx's error_page sends the browser to sign in.
	resp, _ := get(noRedirect, external+"/app?x=1", nil)
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(resp.Header.Get("Location"), idp.AuthorizationEndpoint()) {
		t.Fatalf("unauthenticated: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	// The application's own cookie, set before the login.
	appURL, _ := url.Parse(external)
	jar.SetCookies(appURL, []*http.Cookie{{Name: "app", Value: "1", Path: "/"}})
	// The whole flow, as a browser, with spoofed identity headers.
	spoof := map[string]string{"X-Auth-Request-User": "admin", "X-Authenticated-User": "admin", "X-Authenticated-Groups": "admins",
		"X-Trustmesh-Jwt-Assertion": "forged", "X-Forwarded-User": "admin"}
	resp, body := get(browser, external+"/app?x=1", spoof)
	if resp.StatusCode != http.StatusOK || body != "internal tool: /app" || resp.Request.URL.String() != external+"/app?x=1" {
		t.Fatalf("after sign-in: %d %q at %s", resp.StatusCode, body, resp.Request.URL)
	}
	mu.Lock()
	got := seen.Clone()
	mu.Unlock()
	if got.Get("X-Authenticated-User") != "1234567890" || got.Get("X-Authenticated-Email") != "jane.doe@example.com" ||
		got.Get("X-Authenticated-Groups") != "engineering,design" {
		t.Fatalf("backend identity headers: %v", got)
	}
	if got.Get("X-Auth-Request-User") != "" || got.Get("X-Forwarded-User") != "" || got.Get("X-Trustmesh-Jwt-Assertion") == "forged" ||
		strings.Count(got.Get("X-Trustmesh-Jwt-Assertion"), ".") != 2 {
		t.Fatalf("spoofed headers reached the backend: %v", got)
	}
	u, _ := url.Parse(external)
	var sc *http.Cookie
	for _, c := range jar.Cookies(u) {
		if c.Name == "_trustmesh_session" {
			sc = c
		}
	}
	if sc == nil || len(sc.Value) != 43 {
		t.Fatalf("session cookie: %+v", sc)
	}
	// The example's map keeps the session cookie from the backend and
	// passes the application's cookies, wherever the session cookie sits.
	if got.Get("Cookie") != "app=1" {
		t.Fatalf("backend Cookie header %q, want only the app's cookie", got.Get("Cookie"))
	}
	for _, tc := range []struct{ cookie, want string }{
		{"_trustmesh_session=" + sc.Value + "; late=2", "late=2"},
		{"a=1; _trustmesh_session=" + sc.Value + "; b=2", "a=1; b=2"},
		{"_trustmesh_session=" + sc.Value, ""},
	} {
		jarless := &http.Client{Transport: tr, Timeout: 30 * time.Second}
		if resp, _ := get(jarless, external+"/app", map[string]string{"Cookie": tc.cookie}); resp.StatusCode != http.StatusOK {
			t.Fatalf("Cookie %q: %d", tc.cookie, resp.StatusCode)
		}
		mu.Lock()
		c := seen.Get("Cookie")
		mu.Unlock()
		if c != tc.want {
			t.Errorf("Cookie %q reached the backend as %q, want %q", tc.cookie, c, tc.want)
		}
	}
	// A refused path is 403 from nginx (the gateway's 403).
	if resp, _ := get(noRedirect, external+"/admin/users", nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("refused path: %d", resp.StatusCode)
	}
	// Open redirects are refused at /oauth2/start.
	for _, rd := range []string{"https://evil.example", "//evil.example", "/\\evil.example"} {
		if resp, _ := get(noRedirect, external+"/oauth2/start?rd="+url.QueryEscape(rd), nil); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("rd=%s: %d %s", rd, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	// Another Host never gets to the gateway's checks: the example's
	// default server closes the connection.
	req, _ := http.NewRequest(http.MethodGet, external+"/app", nil)
	req.Host = "other-route.example.com"
	if resp, err := noRedirect.Do(req); err == nil {
		resp.Body.Close()
		t.Errorf("Host: other-route.example.com got %d from nginx, want the connection closed", resp.StatusCode)
	}
	// Nor in an absolute-form request line, where nginx picks the server
	// by the line's host and ignores Host: the gateway judges the request
	// by the host nginx served it for (the example sends $host), so the
	// admin route's rules apply, not the laxer other-route's.
	if resp := absoluteForm(t, nginxAddr, host, pool, "https://"+host+"/admin/users", "other-route.example.com",
		"_trustmesh_session="+sc.Value); resp.StatusCode != http.StatusForbidden {
		t.Errorf("absolute-form request with another Host: %d, want 403 (the admin route's rules)", resp.StatusCode)
	}
	// The auth endpoint is internal to nginx.
	if resp, _ := get(noRedirect, external+"/oauth2/auth", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("/oauth2/auth from outside: %d", resp.StatusCode)
	}
	// Sign out: the confirmation form, then POST with its token.
	resp, body = get(noRedirect, external+"/oauth2/sign_out", nil)
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body)
	if resp.StatusCode != http.StatusOK || m == nil {
		t.Fatalf("sign-out page: %d %s", resp.StatusCode, body)
	}
	presp, err := noRedirect.PostForm(external+"/oauth2/sign_out", url.Values{"csrf": {m[1]}})
	if err != nil || presp.StatusCode != http.StatusFound {
		t.Fatalf("sign out: %v %v", err, presp)
	}
	presp.Body.Close()
	resp, _ = get(noRedirect, external+"/app", nil)
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(resp.Header.Get("Location"), idp.AuthorizationEndpoint()) {
		t.Fatalf("after sign-out: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	// The decisions are in the audit log, in the proxy's format, without
	// the cookie.
	audit, _ := os.ReadFile(filepath.Join(dir, "audit.log"))
	for _, want := range []string{`"event":"login"`, `"event":"logout"`, `"decision":"allow"`, `"mode":"forward_auth"`, `"source_principal":"` + idp.Issuer() + `/1234567890"`} {
		if !strings.Contains(string(audit), want) {
			t.Errorf("audit log lacks %s", want)
		}
	}
	if strings.Contains(string(audit)+gw.log.String(), sc.Value) {
		t.Error("the session cookie is in a log")
	}
}

// absoluteForm sends one GET with target in absolute form (RFC 9112 3.2.2)
// and a Host header of its own, which net/http's client cannot write.
func absoluteForm(t *testing.T, addr, serverName string, roots *x509.CertPool, target, hostHeader, cookie string) *http.Response {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{RootCAs: roots, ServerName: serverName})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nCookie: %s\r\nConnection: close\r\n\r\n", target, hostHeader, cookie); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("absolute-form request: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}
