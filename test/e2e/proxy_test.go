package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for a child process and the test.
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

// workloadBinary gives a workload its own copy of the binary (a hard link
// where possible), so the agent tells workloads apart by unix:path, as it
// would two different programs.
func workloadBinary(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name, "trustmesh")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(binary, p); err != nil {
		data, err := os.ReadFile(binary)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

type childProc struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan error
}

func startChild(t *testing.T, bin string, args ...string) *childProc {
	t.Helper()
	c := &childProc{cmd: exec.Command(bin, args...), log: &syncBuffer{}, done: make(chan error, 1)}
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.done <- c.cmd.Wait() }()
	t.Cleanup(func() { c.stop(t) })
	return c
}

// stop sends SIGTERM and expects a clean exit (idempotent).
func (c *childProc) stop(t *testing.T) {
	if c.done == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-c.done:
		if err != nil {
			t.Errorf("%s did not exit cleanly: %v\n%s", c.cmd.Path, err, c.log)
		}
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		t.Errorf("%s ignored SIGTERM", c.cmd.Path)
	}
	c.done = nil
}

// waitListening waits until addr accepts TCP connections.
func waitListening(t *testing.T, addr string, c *childProc) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return
		}
		select {
		case err := <-c.done:
			t.Fatalf("%s exited: %v\n%s", c.cmd.Path, err, c.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening on %s:\n%s", c.cmd.Path, addr, c.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestProxyPair runs the real server, agent and two proxies (two
// workloads, two identities told apart by the agent's unix:path
// attestation) and attacks the inbound side.
func TestProxyPair(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, filepath.Join(dir, "server"))
	sock := []string{"--admin-socket", srv.socket}
	bundleFile := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundleFile, []byte(mustRun(t, append([]string{"bundle", "show"}, sock...)...)), 0o644); err != nil {
		t.Fatal(err)
	}
	var tok struct {
		Token         string `json:"token"`
		AgentSPIFFEID string `json:"agent_spiffe_id"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, append([]string{"token", "generate", "-o", "json"}, sock...)...)), &tok); err != nil {
		t.Fatal(err)
	}
	frontBin := workloadBinary(t, dir, "frontend")
	apiBin := workloadBinary(t, dir, "api")
	for id, bin := range map[string]string{"frontend": frontBin, "api": apiBin} {
		mustRun(t, append([]string{"entry", "create", "--spiffe-id", "spiffe://example.org/ns/default/sa/" + id,
			"--parent-id", tok.AgentSPIFFEID, "--selector", "unix:path:" + bin}, sock...)...)
	}
	agentSock := filepath.Join(dir, "agent.sock")
	startChild(t, binary, "agent", "run", "--server", srv.listen, "--trust-bundle", bundleFile, "--join-token", tok.Token,
		"--socket", agentSock, "--data-dir", filepath.Join(dir, "agent"))

	// The application behind the API's sidecar reports what it received.
	var mu sync.Mutex
	var lastHeaders http.Header
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		lastHeaders = r.Header.Clone()
		mu.Unlock()
		io.WriteString(w, "hello from api "+r.URL.Path)
	}))
	defer app.Close()

	policyDir := filepath.Join(dir, "policy")
	os.MkdirAll(policyDir, 0o755)
	os.WriteFile(filepath.Join(policyDir, "api.yaml"), []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-allow, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/frontend"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
`), 0o644)
	inboundAddr, outboundAddr := freeAddr(t), freeAddr(t)
	auditLog := filepath.Join(dir, "api-audit.log")
	apiProxy := startChild(t, apiBin, "proxy", "run", "--socket", agentSock, "--label", "app=api",
		"--inbound-listen", inboundAddr, "--inbound-forward", strings.TrimPrefix(app.URL, "http://"),
		"--policy", policyDir, "--audit-log", auditLog)
	frontProxy := startChild(t, frontBin, "proxy", "run", "--socket", "unix://"+agentSock,
		"--outbound-listen", outboundAddr, "--outbound-upstream", inboundAddr,
		"--outbound-spiffe-id", "spiffe://example.org/ns/default/sa/api", "--audit-log", filepath.Join(dir, "front-audit.log"))
	waitListening(t, inboundAddr, apiProxy)
	waitListening(t, outboundAddr, frontProxy)

	get := func(path string, h http.Header) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+outboundAddr+path, nil)
		for k, v := range h {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v\napi proxy:\n%s\nfrontend proxy:\n%s", path, err, apiProxy.log, frontProxy.log)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	// Allowed: 200, with the caller's identity and without spoofed headers.
	if code, body := get("/api/users", http.Header{"X-Forwarded-Client-Cert": {"URI=spiffe://example.org/ns/default/sa/admin"}}); code != 200 || body != "hello from api /api/users" {
		t.Fatalf("allowed: %d %q\n%s", code, body, apiProxy.log)
	}
	mu.Lock()
	xfcc := lastHeaders.Values("X-Forwarded-Client-Cert")
	mu.Unlock()
	if len(xfcc) != 1 || !strings.HasPrefix(xfcc[0], "By=spiffe://example.org/ns/default/sa/api;Hash=") || !strings.HasSuffix(xfcc[0], ";URI=spiffe://example.org/ns/default/sa/frontend") {
		t.Fatalf("XFCC at the app: %q", xfcc)
	}
	// Denied, however the path is spelt: 403 and an audit line naming the policy.
	for _, p := range []string{"/admin", "/a%64min", "//admin", "/x/../admin"} {
		if code, body := get(p, nil); code != 403 || body != "RBAC: access denied" {
			t.Errorf("%s: %d %q", p, code, body)
		}
	}
	data, err := os.ReadFile(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	var denied int
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		if rec["decision"] == "deny" {
			denied++
			if rec["policy"] != "default/api-deny-admin" || rec["source_principal"] != "spiffe://example.org/ns/default/sa/frontend" || rec["mtls"] != true {
				t.Errorf("audit %v", rec)
			}
		}
		for _, k := range []string{"timestamp", "request_id", "source_principal", "source_ip", "destination", "method", "path", "decision", "policy", "rule", "reason", "mtls", "latency_ms"} {
			if _, ok := rec[k]; !ok {
				t.Errorf("audit line lacks %q: %s", k, sc.Text())
			}
		}
	}
	if denied != 4 {
		t.Fatalf("%d denials in the audit log:\n%s", denied, data)
	}

	// No client certificate: the handshake is refused (TLS 1.3 reports it
	// on the first read). Plaintext on a STRICT port: refused.
	conn, err := tls.Dial("tcp", inboundAddr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // attacker client
	if err == nil {
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: api\r\n\r\n")
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if line, err := bufio.NewReader(conn).ReadString('\n'); err == nil {
			t.Fatalf("served without a client certificate: %q", line)
		}
		conn.Close()
	}
	pc, err := net.Dial("tcp", inboundAddr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(pc, "GET / HTTP/1.1\r\nHost: api\r\n\r\n")
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := bufio.NewReader(pc).ReadString('\n'); err == nil {
		t.Fatalf("plaintext served on a STRICT port: %q", line)
	}
	pc.Close()

	// SIGTERM: both proxies exit cleanly (checked by stop).
	apiProxy.stop(t)
	frontProxy.stop(t)
}

// TestProxyConfigExample validates examples/proxy's config file.
func TestProxyConfigExample(t *testing.T) {
	out := mustRun(t, "proxy", "validate", "--config", filepath.Join("..", "..", "examples", "proxy", "proxy.yaml"))
	if !strings.Contains(out, "configuration is valid") {
		t.Fatal(out)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("inbound:\n  - listen: 127.0.0.1:1\n    forward: nowhere\n    protocol: udp\n"), 0o644)
	if _, errOut, code := run(t, "proxy", "validate", "--config", bad); code == 0 || !strings.Contains(errOut, `inbound[0].protocol "udp"`) || !strings.Contains(errOut, `inbound[0].forward "nowhere"`) {
		t.Fatalf("bad config: exit %d: %s", code, errOut)
	}
}

// TestDeployExamples validates examples/deploy's configs with the real
// commands (file paths that only exist on a deployed host are pointed at
// stand-ins).
func TestDeployExamples(t *testing.T) {
	dir := t.TempDir()
	examples := filepath.Join("..", "..", "examples", "deploy")
	// A CA certificate to stand in for the node CA, trust bundle and node cert.
	srv := startServer(t, filepath.Join(dir, "server"))
	pem := mustRun(t, "bundle", "show", "--admin-socket", srv.socket)
	for _, f := range []string{"node-ca.pem", "bundle.pem", "cert.pem", "key.pem"} {
		os.WriteFile(filepath.Join(dir, f), []byte(pem), 0o600)
	}
	rewrite := func(name string, repl ...string) string {
		data, err := os.ReadFile(filepath.Join(examples, name))
		if err != nil {
			t.Fatal(err)
		}
		s := strings.NewReplacer(repl...).Replace(string(data))
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(s), 0o600)
		return p
	}
	server := rewrite("server.yaml", "/etc/trustmesh/node-ca.pem", filepath.Join(dir, "node-ca.pem"),
		"/var/lib/trustmesh/server", filepath.Join(dir, "srv"), "/run/trustmesh/admin.sock", filepath.Join(dir, "admin.sock"))
	if out := mustRun(t, "server", "validate", "--config", server); !strings.Contains(out, "valid") {
		t.Fatalf("server validate: %s", out)
	}
	agent := rewrite("agent.yaml", "/etc/trustmesh/bundle.pem", filepath.Join(dir, "bundle.pem"),
		"/etc/trustmesh/node/cert.pem", filepath.Join(dir, "cert.pem"), "/etc/trustmesh/node/key.pem", filepath.Join(dir, "key.pem"),
		"/var/lib/trustmesh/agent", filepath.Join(dir, "agent"))
	if out := mustRun(t, "agent", "validate", "--config", agent); !strings.Contains(out, "valid") {
		t.Fatalf("agent validate: %s", out)
	}
	if out := mustRun(t, "proxy", "validate", "--config", filepath.Join(examples, "proxy.yaml")); !strings.Contains(out, "valid") {
		t.Fatalf("proxy validate: %s", out)
	}
}
