package proxy

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/trustmesh/trustmesh/internal/accesslog"
	"github.com/trustmesh/trustmesh/internal/server"
	"github.com/trustmesh/trustmesh/internal/testenv"
)

const (
	idFrontend = "spiffe://example.org/ns/default/sa/frontend"
	idAPI      = "spiffe://example.org/ns/default/sa/api"
	idBatch    = "spiffe://example.org/ns/default/sa/batch"
)

// upstreamCA is a root the test holds the key of; the control plane signs
// under it, so the test can also forge certificates that chain to the
// trust bundle (expired, not yet valid, CA as leaf).
type upstreamCA struct {
	cert *x509.Certificate
	key  crypto.Signer
	dir  string
}

func newUpstreamCA(t *testing.T) *upstreamCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test upstream root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	dir := t.TempDir()
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	writeFile(t, filepath.Join(dir, "ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	writeFile(t, filepath.Join(dir, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	return &upstreamCA{cert: cert, key: key, dir: dir}
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

// forge signs a client certificate with parent (the upstream root, or any
// other) for the given SPIFFE ID.
func forge(t *testing.T, parent *x509.Certificate, parentKey crypto.Signer, id string, mutate func(*x509.Certificate)) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if mutate != nil {
		mutate(tmpl)
	}
	signer, signerCert := parentKey, parent
	if parent == nil { // self-signed
		signer, signerCert = key, tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// echo is the application behind the API's sidecar: it reports what it
// received, and serves WebSocket-style upgrades by echoing bytes.
type echoApp struct {
	srv     *http.Server
	addr    string
	mu      sync.Mutex
	last    *http.Request
	release chan struct{} // /slow blocks until closed
	hold    chan struct{} // a WebSocket to /public/silent neither reads nor writes until the test ends
}

type echoReply struct {
	Path    string      `json:"path"`
	RawPath string      `json:"raw_path"`
	Headers http.Header `json:"headers"`
	Trailer http.Header `json:"trailer"` // the request's trailers, once its body is read
}

func startEcho(t *testing.T) *echoApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoApp{addr: ln.Addr().String(), release: make(chan struct{}), hold: make(chan struct{})}
	t.Cleanup(func() { close(e.hold) })
	e.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		e.last = r
		e.mu.Unlock()
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			_ = brw.Flush()
			if r.URL.Path == "/public/silent" {
				<-e.hold
				return
			}
			_, _ = io.Copy(conn, brw)
			return
		}
		if r.URL.Path == "/slow" {
			<-e.release
		}
		if r.URL.Path == "/public/pause" { // a stream that goes quiet twice, once before its end
			pause, _ := time.ParseDuration(r.URL.Query().Get("ms") + "ms")
			for _, part := range []string{"first", "second"} {
				_, _ = io.WriteString(w, part)
				_ = http.NewResponseController(w).Flush()
				time.Sleep(pause)
			}
			return
		}
		if r.URL.Path == "/public/big" { // more than the sockets between here and a client that does not read hold
			w.Header().Set("Content-Length", strconv.Itoa(bigResponse))
			_, _ = io.Copy(w, io.LimitReader(zeros{}, bigResponse))
			return
		}
		if r.Method == http.MethodPost {
			_, _ = io.Copy(io.Discard, r.Body) // (the trailers come after it)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(echoReply{Path: r.URL.Path, RawPath: r.URL.RawPath, Headers: r.Header, Trailer: r.Trailer})
	})}
	go func() { _ = e.srv.Serve(ln) }()
	t.Cleanup(func() { e.srv.Close() })
	return e
}

const bigResponse = 64 << 20

// tcpEcho echoes bytes (the application behind a TCP listener). A
// connection that starts with "hold\n" is an application that does not
// close when its client does: it reads to EOF, then keeps the connection
// until the test ends.
func tcpEcho(t *testing.T) (addr string, held <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	holding := make(chan struct{}, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				if b, err := br.Peek(5); err == nil && string(b) == "hold\n" {
					holding <- struct{}{}
					_, _ = io.Copy(io.Discard, br)
					<-hold
					return
				}
				_, _ = io.Copy(c, br)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String(), holding
}

// apiPolicy is the API workload's policy: the frontend may call it; nobody
// reaches /admin; /public is open on the PERMISSIVE port 9090; STRICT mTLS
// everywhere else.
const apiPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-allow, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/frontend"]}
  - to:
    - operation: {ports: ["9090"], paths: ["/public*"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
  # ports keep this HTTP rule off the TCP port: on TCP a DENY rule ignores
  # its HTTP-only fields (paths) and would deny every connection.
  - to:
    - operation: {ports: ["8080", "9090"], paths: ["/admin", "/admin/*"]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: api, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  mtls: {mode: STRICT}
  portLevelMtls:
    9090: {mode: PERMISSIVE}
`

// mesh is a control plane, an agent, the API behind its sidecar and the
// frontend's sidecar, all real, in this process. Both workloads are this
// test process: the agent offers it every SVID registered for its uid, and
// each proxy picks its own with SVIDID.
type mesh struct {
	ca        *upstreamCA
	srv       *testenv.Server
	agent     *testenv.Agent
	echo      *echoApp
	tcpHeld   <-chan struct{} // a connection to the TCP app began holding (tcpEcho)
	policyDir string
	api       *Proxy
	front     *Proxy
	apiAudit  string
	apiCancel context.CancelFunc
	apiDone   func() error // waits for the API proxy's Run to return
}

type meshOpts struct {
	x509TTL int64 // API SVID TTL (seconds); 0 default
	limits  func(*Settings)
}

func newMesh(t *testing.T, o meshOpts) *mesh {
	t.Helper()
	m := &mesh{ca: newUpstreamCA(t)}
	m.srv = testenv.StartServer(t, func(c *server.Config) {
		c.CA.Upstream = &server.UpstreamConfig{CertFile: filepath.Join(m.ca.dir, "ca.pem"), KeyFile: filepath.Join(m.ca.dir, "ca.key")}
	})
	m.agent = testenv.StartAgent(t, m.srv)
	m.srv.Entry(t, idFrontend, m.agent.ID, 0, testenv.UIDSelector())
	m.srv.Entry(t, idAPI, m.agent.ID, o.x509TTL, testenv.UIDSelector())
	m.srv.Entry(t, idBatch, m.agent.ID, 0, testenv.UIDSelector())
	m.echo = startEcho(t)
	m.policyDir = t.TempDir()
	writeFile(t, filepath.Join(m.policyDir, "api.yaml"), []byte(apiPolicy), 0o644)
	m.apiAudit = filepath.Join(t.TempDir(), "audit.log")

	tcpAddr, held := tcpEcho(t)
	m.tcpHeld = held
	apiSet := m.settings(t, Config{
		SVIDID: idAPI, Labels: map[string]string{"app": "api"},
		Policy:   PolicyConfig{Paths: []string{m.policyDir}},
		AuditLog: m.apiAudit,
		Inbound: []ListenerSpec{
			{Name: "http", Listen: "127.0.0.1:0", Forward: m.echo.addr, Port: 8080},
			{Name: "permissive", Listen: "127.0.0.1:0", Forward: m.echo.addr, Port: 9090},
			{Name: "tcp", Listen: "127.0.0.1:0", Forward: tcpAddr, Port: 5432, Protocol: "tcp"},
		},
	}, o.limits)
	m.api, m.apiCancel, m.apiDone = startProxy(t, apiSet)
	frontSet := m.settings(t, Config{
		SVIDID: idFrontend, Labels: map[string]string{"app": "frontend"},
		Policy: PolicyConfig{Paths: []string{m.policyDir}},
		Outbound: []ListenerSpec{
			{Name: "api", Listen: "127.0.0.1:0", Upstream: m.api.Addr("http").String(), SPIFFEIDs: []string{idAPI}},
			{Name: "api-tcp", Listen: "127.0.0.1:0", Upstream: m.api.Addr("tcp").String(), SPIFFEIDs: []string{idAPI}, Protocol: "tcp"},
			{Name: "wrong-id", Listen: "127.0.0.1:0", Upstream: m.api.Addr("http").String(), SPIFFEIDs: []string{idBatch}},
		},
		AuditLog: filepath.Join(t.TempDir(), "front-audit.log"),
	}, o.limits)
	m.front, _, _ = startProxy(t, frontSet)
	return m
}

func (m *mesh) settings(t *testing.T, c Config, limits func(*Settings)) Settings {
	t.Helper()
	c.Socket = m.agent.Socket
	set, err := c.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	set.PolicyDebounce = 50 * time.Millisecond
	set.SVIDWait = 30 * time.Second
	if limits != nil {
		limits(&set)
	}
	return set
}

// startProxy runs a proxy until the test ends; wait returns Run's result
// (or fails the test if Run does not return in time).
func startProxy(t *testing.T, set Settings) (p *Proxy, cancel context.CancelFunc, wait func() error) {
	t.Helper()
	p = New(set, testenv.Log())
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	var runErr error
	go func() { runErr = p.Run(ctx); close(stopped) }()
	select {
	case <-p.Ready():
	case <-stopped:
		cancel()
		t.Fatalf("proxy exited: %v", runErr)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("proxy not ready")
	}
	wait = func() error {
		select {
		case <-stopped:
			return runErr
		case <-time.After(30 * time.Second):
			t.Error("proxy did not stop")
			return nil
		}
	}
	t.Cleanup(func() {
		cancel()
		_ = wait()
	})
	return p, cancel, wait
}

// frontURL is a URL through the frontend's outbound listener.
func (m *mesh) frontURL(listener, path string) string {
	return "http://" + m.front.Addr(listener).String() + path
}

// get sends a GET through the frontend's sidecar.
func get(t *testing.T, u string, header http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// svidTLS is a client TLS config holding this process's SVID for id, from
// the agent's Workload API.
func (m *mesh) svidTLS(t *testing.T, id string) *tls.Config {
	t.Helper()
	want := spiffeid.RequireFromString(id)
	src, err := workloadapi.NewX509Source(testenv.Ctx(t), workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+m.agent.Socket)),
		workloadapi.WithDefaultX509SVIDPicker(func(s []*x509svid.SVID) *x509svid.SVID {
			for _, v := range s {
				if v.ID == want {
					return v
				}
			}
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: svid.PrivateKey}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13} //nolint:gosec // the test client does not check the server
}

// rawExchange connects with cfg (nil: plaintext), sends request and returns
// the first response line, or the error that ended the connection.
func rawExchange(t *testing.T, addr string, cfg *tls.Config, request string) (string, error) {
	t.Helper()
	var c net.Conn
	var err error
	d := &net.Dialer{Timeout: 5 * time.Second}
	if cfg != nil {
		c, err = tls.DialWithDialer(d, "tcp", addr, cfg)
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, request); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return line, err
	}
	return strings.TrimSpace(line), nil
}

// auditRecords reads a proxy's audit log.
func auditRecords(t *testing.T, path string) []accesslog.Record {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []accesslog.Record
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line == "" {
			continue
		}
		var r accesslog.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// counter reads a counter's value from a proxy's registry.
func counter(t *testing.T, p *Proxy, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := p.metrics.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			if c := m.GetCounter(); c != nil {
				sum += c.GetValue()
			}
			if g := m.GetGauge(); g != nil {
				sum += g.GetValue()
			}
		}
	}
	return sum
}

var _ prometheus.Collector = (*prometheus.CounterVec)(nil)
