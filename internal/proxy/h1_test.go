package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/upstream"
	"github.com/trustmesh/trustmesh/internal/upstream/upstreamtest"
)

// The HTTP/1.1 path's mechanics, with a recording h1Side in place of the
// inbound and outbound sides (the mesh tests run those through it).

type recordingSide struct {
	mu       sync.Mutex
	prepared []string // method and URI of every request decided
	finished []int
	failed   int
}

func (s *recordingSide) prepare(x *h1Exchange) (int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prepared = append(s.prepared, x.req.Method+" "+x.req.RequestURI)
	if x.req.URL.Path == "/deny" {
		return http.StatusForbidden, "RBAC: access denied"
	}
	return 0, ""
}

func (s *recordingSide) finish(_ *h1Exchange, status int) {
	s.mu.Lock()
	s.finished = append(s.finished, status)
	s.mu.Unlock()
}

func (s *recordingSide) upstreamFailed(error) {
	s.mu.Lock()
	s.failed++
	s.mu.Unlock()
}

func (s *recordingSide) decided() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.prepared...)
}

// startH1 serves the HTTP/1.1 path on a loopback port, forwarding to
// upstream.
// startH1 serves a forwarder on a loopback port. tune, when given, adjusts
// the settings before the first connection is accepted: the race detector
// sees no ordering through a TCP connection, so settings must not change
// after serving starts.
func startH1(t testing.TB, upstream string, tune ...func(*Settings)) (string, *recordingSide, *h1Forwarder) {
	t.Helper()
	side := &recordingSide{}
	p := &Proxy{set: Settings{IdleTimeout: time.Minute, HeaderReadTimeout: 5 * time.Second, MaxHeaderBytes: 8192, HandshakeTimeout: 5 * time.Second}}
	for _, f := range tune {
		f(&p.set)
	}
	var d net.Dialer
	f := &h1Forwarder{p: p, side: side, dial: func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", upstream) }}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				br, lr, release := newH1Reader(c)
				defer release()
				f.serve(ctx, c, br, lr)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		f.shutdown(sctx)
		cancel()
	})
	return ln.Addr().String(), side, f
}

// upstreamRecorder is an upstream that records every request it parses.
type upstreamRecorder struct {
	mu   sync.Mutex
	reqs []recordedRequest
}

type recordedRequest struct {
	method, uri string
	header      http.Header
	body        string
	te          []string
}

func (u *upstreamRecorder) all() []recordedRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]recordedRequest(nil), u.reqs...)
}

func startUpstreamH1(t *testing.T, handler func(w http.ResponseWriter, r *http.Request)) (*httptest.Server, *upstreamRecorder) {
	t.Helper()
	rec := &upstreamRecorder{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, recordedRequest{r.Method, r.RequestURI, r.Header.Clone(), string(body), r.TransferEncoding})
		rec.mu.Unlock()
		if handler != nil {
			handler(w, r)
			return
		}
		_, _ = io.WriteString(w, "ok:"+string(body))
	}))
	t.Cleanup(srv.Close)
	return srv, rec
}

// dialH1 opens a client connection to the forwarder.
func dialH1(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return c, bufio.NewReader(c)
}

func readResp(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return resp, string(body)
}

func TestH1KeepAliveBodiesAndLocalAnswers(t *testing.T) {
	up, rec := startUpstreamH1(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/chunked" {
			w.(http.Flusher).Flush() // no Content-Length: chunked
		}
		_, _ = io.WriteString(w, "ok:"+r.URL.Path)
	})
	addr, side, _ := startH1(t, up.Listener.Addr().String())
	c, br := dialH1(t, addr)
	// Three requests on one connection: a chunked request body, a chunked
	// response, a HEAD, and a denial answered here.
	fmt.Fprint(c, "POST /upload HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
	if resp, body := readResp(t, br, "POST"); resp.StatusCode != 200 || body != "ok:/upload" {
		t.Fatalf("chunked upload: %d %q", resp.StatusCode, body)
	}
	fmt.Fprint(c, "GET /chunked HTTP/1.1\r\nHost: api\r\n\r\n")
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "ok:/chunked" || len(resp.TransferEncoding) != 1 {
		t.Fatalf("chunked response: %d %q %v", resp.StatusCode, body, resp.TransferEncoding)
	}
	fmt.Fprint(c, "HEAD /head HTTP/1.1\r\nHost: api\r\n\r\n")
	if resp, body := readResp(t, br, "HEAD"); resp.StatusCode != 200 || body != "" {
		t.Fatalf("HEAD: %d %q", resp.StatusCode, body)
	}
	fmt.Fprint(c, "GET /deny HTTP/1.1\r\nHost: api\r\n\r\n")
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 403 || body != "RBAC: access denied" || resp.Close {
		t.Fatalf("denied: %d %q close=%v", resp.StatusCode, body, resp.Close)
	}
	fmt.Fprint(c, "GET /after HTTP/1.1\r\nHost: api\r\n\r\n")
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "ok:/after" {
		t.Fatalf("after a denial: %d %q", resp.StatusCode, body)
	}
	got := rec.all()
	if len(got) != 4 || got[0].body != "hello world" || got[0].method != "POST" || got[3].uri != "/after" {
		t.Fatalf("upstream saw %+v", got)
	}
	if n := len(side.decided()); n != 5 {
		t.Fatalf("%d requests decided, want 5", n)
	}
}

// Bodies larger than the buffers, arriving over many reads in both
// directions, go through intact (with and without a Content-Length).
func TestH1LargeBodiesIntact(t *testing.T) {
	payload := make([]byte, 300<<10)
	for i := range payload {
		payload[i] = byte('a' + i%23 + i/4096%3)
	}
	up, rec := startUpstreamH1(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cl" {
			w.Header().Set("Content-Length", fmt.Sprint(len(payload)))
		}
		for off := 0; off < len(payload); off += 10 << 10 {
			_, _ = w.Write(payload[off:min(off+10<<10, len(payload))])
			w.(http.Flusher).Flush()
		}
	})
	addr, _, _ := startH1(t, up.Listener.Addr().String())
	c, br := dialH1(t, addr)
	for _, path := range []string{"/cl", "/chunked"} {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: api\r\n\r\n", path)
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != string(payload) {
			t.Fatalf("%s: %d, %d bytes, intact %v", path, resp.StatusCode, len(body), body == string(payload))
		}
	}
	// An upload in pieces.
	fmt.Fprintf(c, "POST /up HTTP/1.1\r\nHost: api\r\nContent-Length: %d\r\n\r\n", len(payload))
	go func() {
		for off := 0; off < len(payload); off += 7 << 10 {
			_, _ = c.Write(payload[off:min(off+7<<10, len(payload))])
		}
	}()
	readResp(t, br, "POST")
	got := rec.all()
	if last := got[len(got)-1]; last.method != "POST" || last.body != string(payload) {
		t.Fatalf("upload: %d bytes, intact %v", len(last.body), last.body == string(payload))
	}
}

// A response whose second part the upstream sends only once the client
// has the first (the proxy must flush what it has while it waits) arrives
// intact, with a Content-Length and to an HTTP/1.0 client.
func TestH1ResponseInTwoParts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	gotFirst := make(chan struct{}, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nfirst;")
					select {
					case <-gotFirst:
					case <-time.After(10 * time.Second):
						return
					}
					fmt.Fprint(c, "second")
				}
			}()
		}
	}()
	addr, _, _ := startH1(t, ln.Addr().String())
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		c, br := dialH1(t, addr)
		fmt.Fprintf(c, "GET /two HTTP/%s\r\nHost: api\r\n\r\n", strings.TrimPrefix(proto, "HTTP/"))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		first := make([]byte, 6)
		if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first;" {
			t.Fatalf("%s: first part %q %v", proto, first, err)
		}
		gotFirst <- struct{}{}
		if rest, _ := io.ReadAll(resp.Body); string(rest) != "second" {
			t.Fatalf("%s: second part %q", proto, rest)
		}
	}
}

// Whatever framing tricks a client sends, every request the upstream
// parses is one the side decided: the proxy re-frames each message rather
// than relay its bytes.
func TestH1NoRequestSmuggling(t *testing.T) {
	for name, raw := range map[string]string{
		"CL.TE":          "POST /a HTTP/1.1\r\nHost: api\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n",
		"TE.CL":          "POST /a HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
		"two CL":         "POST /a HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nbodyGET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n",
		"obfuscated TE":  "POST /a HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\nbody",
		"TE list":        "POST /a HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
		"obs-fold":       "GET /a HTTP/1.1\r\nHost: api\r\nX-A: b\r\n c\r\n\r\n",
		"bare LF CL":     "POST /a HTTP/1.1\nHost: api\nContent-Length: 5\n\nhello",
		"space in name":  "GET /a HTTP/1.1\r\nHost: api\r\nTransfer-Encoding : chunked\r\n\r\n",
		"no Host":        "GET /a HTTP/1.1\r\n\r\n",
		"HTTP/2 preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"CONNECT":        "CONNECT api:443 HTTP/1.1\r\nHost: api:443\r\n\r\n",
		"NUL in value":   "GET /a HTTP/1.1\r\nHost: api\r\nX-A: a\x00b\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			up, rec := startUpstreamH1(t, nil)
			addr, side, _ := startH1(t, up.Listener.Addr().String())
			c, br := dialH1(t, addr)
			fmt.Fprint(c, raw)
			// Read whatever comes back until the proxy closes or goes quiet.
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, _ = io.Copy(io.Discard, br)
			decided := side.decided()
			for _, r := range rec.all() {
				if r.uri == "/smuggled" && !contains(decided, "GET /smuggled") {
					t.Errorf("the upstream parsed a request nobody decided: %+v", r)
				}
				if strings.Contains(r.body, "SMUGGLED") && r.method != "POST" {
					t.Errorf("body bytes became a request: %+v", r)
				}
			}
			if len(rec.all()) > len(decided) {
				t.Errorf("upstream parsed %d requests, %d decided", len(rec.all()), len(decided))
			}
		})
	}
}

func contains(l []string, s string) bool {
	for _, v := range l {
		if v == s {
			return true
		}
	}
	return false
}

func TestH1HopByHopHeadersAndExpectContinue(t *testing.T) {
	up, rec := startUpstreamH1(t, nil)
	addr, _, _ := startH1(t, up.Listener.Addr().String())
	c, br := dialH1(t, addr)
	fmt.Fprint(c, "POST /e HTTP/1.1\r\nHost: api\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n"+
		"Proxy-Authorization: Basic eA==\r\nTe: deflate, trailers\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	// The client waits for 100 Continue before sending its body.
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("interim: %q %v", line, err)
	}
	if blank, _ := br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("after 100: %q", blank)
	}
	fmt.Fprint(c, "hello")
	if resp, body := readResp(t, br, "POST"); resp.StatusCode != 200 || body != "ok:hello" {
		t.Fatalf("after 100-continue: %d %q", resp.StatusCode, body)
	}
	h := rec.all()[0].header
	for _, k := range []string{"X-Secret", "Keep-Alive", "Proxy-Authorization", "Expect"} {
		if h.Get(k) != "" {
			t.Errorf("%s reached the upstream: %q", k, h.Get(k))
		}
	}
	// "Te: trailers" goes on (gRPC servers require it), nothing else of Te.
	if te := h.Values("Te"); len(te) != 1 || te[0] != "trailers" {
		t.Errorf("Te at the upstream: %q", te)
	}
}

func TestH1HTTP10ClientAndStreaming(t *testing.T) {
	release := make(chan struct{})
	up, _ := startUpstreamH1(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first;")
		w.(http.Flusher).Flush()
		if r.URL.Path == "/stream" {
			<-release
		}
		_, _ = io.WriteString(w, "second")
	})
	addr, _, _ := startH1(t, up.Listener.Addr().String())
	// A streamed response reaches the client as it is written.
	c, br := dialH1(t, addr)
	fmt.Fprint(c, "GET /stream HTTP/1.1\r\nHost: api\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("first;"))
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first;" {
		t.Fatalf("first part: %q %v", buf, err)
	}
	close(release)
	if rest, _ := io.ReadAll(resp.Body); string(rest) != "second" {
		t.Fatalf("rest: %q", rest)
	}
	// HTTP/1.0: no chunked encoding; the body ends with the connection.
	c10, br10 := dialH1(t, addr)
	fmt.Fprint(c10, "GET /ten HTTP/1.0\r\nHost: api\r\n\r\n")
	resp10, body := readResp(t, br10, "GET")
	if resp10.ProtoMinor != 0 || len(resp10.TransferEncoding) != 0 || body != "first;second" || !resp10.Close {
		t.Fatalf("HTTP/1.0: proto %s te %v close %v body %q", resp10.Proto, resp10.TransferEncoding, resp10.Close, body)
	}
}

// An upstream that closes pooled connections while idle: the next
// request goes out again on a new one.
func TestH1StaleUpstreamConnectionRetried(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer accepted.Done()
				defer c.Close()
				// One request, a keep-alive answer, then close.
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.URL.Path), req.URL.Path)
			}()
		}
	}()
	addr, side, _ := startH1(t, ln.Addr().String())
	c, br := dialH1(t, addr)
	for _, p := range []string{"/one", "/two", "/three"} {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: api\r\n\r\n", p)
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != p {
			t.Fatalf("%s: %d %q", p, resp.StatusCode, body)
		}
	}
	side.mu.Lock()
	defer side.mu.Unlock()
	if side.failed != 0 {
		t.Fatalf("%d upstream failures reported", side.failed)
	}
}

func TestH1UpstreamDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	addr, side, _ := startH1(t, dead)
	c, br := dialH1(t, addr)
	fmt.Fprint(c, "GET /x HTTP/1.1\r\nHost: api\r\n\r\n")
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != http.StatusBadGateway || body != "upstream unavailable" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	side.mu.Lock()
	defer side.mu.Unlock()
	if side.failed != 1 || len(side.finished) != 1 || side.finished[0] != http.StatusBadGateway {
		t.Fatalf("failed %d, finished %v", side.failed, side.finished)
	}
}

// Shutdown closes idle connections at once and lets a busy one finish.
func TestH1ShutdownDrains(t *testing.T) {
	release, arrived := make(chan struct{}), make(chan struct{})
	up, _ := startUpstreamH1(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(arrived)
			<-release
		}
		_, _ = io.WriteString(w, "done")
	})
	addr, _, f := startH1(t, up.Listener.Addr().String())
	idle, idleBR := dialH1(t, addr)
	fmt.Fprint(idle, "GET /x HTTP/1.1\r\nHost: api\r\n\r\n")
	readResp(t, idleBR, "GET")
	busy, busyBR := dialH1(t, addr)
	fmt.Fprint(busy, "GET /slow HTTP/1.1\r\nHost: api\r\n\r\n")
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow request did not reach the upstream")
	}
	waitFor(t, 10*time.Second, "one idle and one busy connection", func() bool {
		f.live.mu.Lock()
		defer f.live.mu.Unlock()
		idle := 0
		for _, isIdle := range f.live.conns {
			if isIdle {
				idle++
			}
		}
		return len(f.live.conns) == 2 && idle == 1
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		f.shutdown(ctx)
	}()
	if _, err := idleBR.ReadByte(); err != io.EOF {
		t.Fatalf("the idle connection was not closed: %v", err)
	}
	close(release)
	if resp, body := readResp(t, busyBR, "GET"); resp.StatusCode != 200 || body != "done" {
		t.Fatalf("in-flight request: %d %q", resp.StatusCode, body)
	}
	<-done
}

// FuzzH1Forwarder: whatever bytes a client sends, the upstream parses no
// request the side did not decide, and the proxy neither hangs nor
// crashes.
func FuzzH1Forwarder(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"GET /deny HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a HTTP/1.0\r\n\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		up, rec := startUpstreamH1(t, nil)
		addr, side, _ := startH1(t, up.Listener.Addr().String(), func(s *Settings) {
			s.IdleTimeout, s.HeaderReadTimeout = 500*time.Millisecond, 500*time.Millisecond
		})
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(c, raw)
		_ = c.(*net.TCPConn).CloseWrite()
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("the proxy did not close the connection: %v", err)
		}
		// Requests compared as method and decoded path (the proxy sends the
		// path re-escaped, as httputil.ReverseProxy does).
		key := func(method, uri string) string {
			if u, err := url.ParseRequestURI(uri); err == nil {
				return method + " " + u.Path + "?" + u.RawQuery
			}
			return method + " " + uri
		}
		var decided []string
		for _, d := range side.decided() {
			method, uri, _ := strings.Cut(d, " ")
			decided = append(decided, key(method, uri))
		}
		for _, r := range rec.all() {
			if !contains(decided, key(r.method, r.uri)) {
				t.Fatalf("upstream parsed %s %s, decided %q", r.method, r.uri, decided)
			}
		}
		if len(rec.all()) > len(decided) {
			t.Fatalf("upstream parsed %d requests, %d decided", len(rec.all()), len(decided))
		}
	})
}

// startRawUpstream runs handle for each connection to a loopback port,
// for upstreams that misbehave in ways net/http's server will not.
func startRawUpstream(t *testing.T, handle func(c net.Conn, br *bufio.Reader)) string {
	return upstreamtest.Serve(t, handle)
}

// answerPath answers each request on c with its own path, keeping the
// connection, until the client closes it.
func answerPath(c net.Conn, br *bufio.Reader) {
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.URL.Path), req.URL.Path)
	}
}

// Bytes an upstream sends beyond its response, with it or later while the
// connection is idle, are never taken as the next client's response.
func TestH1StrayUpstreamBytesNotGivenToNextClient(t *testing.T) {
	const stray = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ninject"
	for _, tc := range []struct {
		name  string
		later bool // the stray response comes after the real one, not with it
	}{{"with the response", false}, {"while idle", true}} {
		t.Run(tc.name, func(t *testing.T) {
			strayed, pooled := make(chan struct{}), make(chan struct{})
			var first sync.Once
			addr := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
				isFirst := false
				first.Do(func() { isFirst = true })
				if !isFirst {
					answerPath(c, br)
					return
				}
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				if tc.later {
					fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					<-pooled
					fmt.Fprint(c, stray)
				} else {
					fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"+stray)
				}
				close(strayed)
				_, _ = br.ReadByte() // hold the connection open
			})
			paddr, _, f := startH1(t, addr)
			c1, br1 := dialH1(t, paddr)
			fmt.Fprint(c1, "GET /one HTTP/1.1\r\nHost: api\r\n\r\n")
			if resp, body := readResp(t, br1, "GET"); resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("first: %d %q", resp.StatusCode, body)
			}
			if tc.later {
				waitFor(t, 10*time.Second, "the connection pooled", func() bool {
					return f.pool.Idle() == 1
				})
				close(pooled)
			}
			<-strayed
			c2, br2 := dialH1(t, paddr)
			fmt.Fprint(c2, "GET /two HTTP/1.1\r\nHost: api\r\n\r\n")
			if resp, body := readResp(t, br2, "GET"); resp.StatusCode != 200 || body != "/two" {
				t.Fatalf("the next client got %d %q", resp.StatusCode, body)
			}
		})
	}
}

// A request that cannot be replayed (a POST) does not fail because the
// upstream closed the pooled connection while it was idle.
func TestH1PostAfterUpstreamClosedIdleConnection(t *testing.T) {
	closed := make(chan struct{}, 1)
	addr := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.URL.Path), req.URL.Path)
		c.Close() // keep-alive promised, then closed: an idle timeout
		closed <- struct{}{}
	})
	paddr, side, _ := startH1(t, addr)
	c, br := dialH1(t, paddr)
	for _, path := range []string{"/one", "/two"} {
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: api\r\nContent-Length: 1\r\n\r\nx", path)
		if resp, body := readResp(t, br, "POST"); resp.StatusCode != 200 || body != path {
			t.Fatalf("%s: %d %q", path, resp.StatusCode, body)
		}
		<-closed
	}
	side.mu.Lock()
	defer side.mu.Unlock()
	if side.failed != 0 {
		t.Fatalf("%d upstream failures reported", side.failed)
	}
}

// 101 Switching Protocols is relayed only for a WebSocket handshake
// answered with a switch to WebSocket; anything else is a 502, and the
// connection is not reused.
func TestH1UnexpectedSwitchingProtocols(t *testing.T) {
	addr := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			switch req.URL.Path {
			case "/switch":
				fmt.Fprint(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+req.URL.Query().Get("to")+"\r\n\r\n")
			default:
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.URL.Path), req.URL.Path)
			}
		}
	})
	paddr, _, _ := startH1(t, addr)
	for _, tc := range []struct{ name, request string }{
		{"no upgrade asked", "GET /switch?to=websocket HTTP/1.1\r\nHost: api\r\n\r\n"},
		{"websocket asked, other given", "GET /switch?to=foo HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"},
	} {
		c, br := dialH1(t, paddr)
		fmt.Fprint(c, tc.request)
		if resp, _ := readResp(t, br, "GET"); resp.StatusCode != http.StatusBadGateway {
			t.Errorf("%s: %d", tc.name, resp.StatusCode)
		}
	}
	c, br := dialH1(t, paddr)
	fmt.Fprint(c, "GET /after HTTP/1.1\r\nHost: api\r\n\r\n")
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "/after" {
		t.Fatalf("after: %d %q", resp.StatusCode, body)
	}
}

// What an upstream sends before its final response is bounded: the head's
// size and the number of 1xx responses. An HTTP/1.0 client gets no 1xx.
func TestH1UpstreamResponseHeadLimits(t *testing.T) {
	addr := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			switch req.URL.Path {
			case "/big-head":
				fmt.Fprint(c, "HTTP/1.1 200 OK\r\n")
				line := "X-Filler: " + strings.Repeat("a", 1000) + "\r\n"
				for i := 0; i < 2*upstream.MaxResponseHeadBytes/len(line); i++ {
					if _, err := io.WriteString(c, line); err != nil {
						return
					}
				}
				fmt.Fprint(c, "Content-Length: 0\r\n\r\n")
			case "/many-1xx":
				for i := 0; i < 4*upstream.MaxInterimResponses; i++ {
					fmt.Fprint(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
				}
				fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
			case "/status-099": // ReadResponse parses it; it is no answer
				fmt.Fprint(c, "HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n")
			case "/one-1xx":
				// (The 103's own framing headers are the upstream's
				// mistake; they must not reach the client.)
				fmt.Fprint(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		}
	})
	paddr, _, _ := startH1(t, addr)
	for _, path := range []string{"/big-head", "/many-1xx", "/status-099"} {
		c, br := dialH1(t, paddr)
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: api\r\n\r\n", path)
		resp, err := http.ReadResponse(br, nil)
		for err == nil && resp.StatusCode < 200 {
			if resp.StatusCode < 100 {
				t.Fatalf("%s: status %d relayed to the client", path, resp.StatusCode)
			}
			resp, err = http.ReadResponse(br, nil)
		}
		if err != nil || resp.StatusCode != http.StatusBadGateway {
			t.Errorf("%s: %v %v", path, resp, err)
		}
	}
	// A 1xx to a POST goes on without framing headers (RFC 9110 8.6).
	c, br := dialH1(t, paddr)
	fmt.Fprint(c, "POST /one-1xx HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\n\r\n")
	head, err := br.ReadString('\n')
	for err == nil && !strings.HasSuffix(head, "\r\n\r\n") {
		var line string
		line, err = br.ReadString('\n')
		head += line
	}
	if err != nil || !strings.HasPrefix(head, "HTTP/1.1 103 Early Hints\r\n") || !strings.Contains(head, "\r\nLink: </a>; rel=preload\r\n") ||
		strings.Contains(head, "Content-Length") || strings.Contains(head, "Transfer-Encoding") {
		t.Fatalf("interim response to a POST: %q %v", head, err)
	}
	if resp, body := readResp(t, br, "POST"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("after the 103: %d %q", resp.StatusCode, body)
	}
	c, br = dialH1(t, paddr)
	fmt.Fprint(c, "GET /one-1xx HTTP/1.0\r\nHost: api\r\n\r\n")
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("HTTP/1.0 client: %d %q", resp.StatusCode, body)
	}
}

// At the shutdown deadline an exchange waiting on an upstream that never
// answers is cut off too, so shutdown returns.
func TestH1ShutdownDeadlineCutsOffHungUpstream(t *testing.T) {
	arrived := make(chan struct{})
	addr := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		close(arrived)
		_, _ = br.ReadByte() // never answers; returns when the proxy closes
	})
	paddr, _, f := startH1(t, addr)
	c, br := dialH1(t, paddr)
	fmt.Fprint(c, "GET /hang HTTP/1.1\r\nHost: api\r\n\r\n")
	<-arrived
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		f.shutdown(ctx)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown did not return after its deadline")
	}
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("the client connection got an answer instead of being closed")
	}
}

// A slow upload's head and its first part reach the upstream while the
// client is still sending the rest.
func TestH1SlowUploadStreamsToUpstream(t *testing.T) {
	gotPart := make(chan string, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		part := make([]byte, 5)
		if _, err := io.ReadFull(r.Body, part); err != nil {
			gotPart <- "error: " + err.Error()
			return
		}
		gotPart <- string(part)
		rest, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, string(part)+string(rest))
	}))
	t.Cleanup(up.Close)
	addr, _, _ := startH1(t, up.Listener.Addr().String())
	c, br := dialH1(t, addr)
	fmt.Fprint(c, "POST /upload HTTP/1.1\r\nHost: api\r\nContent-Length: 10\r\n\r\nfirst")
	select {
	case part := <-gotPart:
		if part != "first" {
			t.Fatalf("the upstream read %q", part)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream did not get the upload's first part while the client was still sending")
	}
	fmt.Fprint(c, "-last")
	if resp, body := readResp(t, br, "POST"); resp.StatusCode != 200 || body != "first-last" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

// An upstream that answers an upload before reading all of it and closes
// the connection (net/http's server does this for a large unread body):
// the client gets that answer, not a 502, and then the connection ends.
func TestH1EarlyAnswerToUpload(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		_, _ = io.WriteString(w, "too big")
	}))
	t.Cleanup(up.Close)
	addr, side, _ := startH1(t, up.Listener.Addr().String())
	c, br := dialH1(t, addr)
	const size = 16 << 20
	sent := make(chan error, 1)
	go func() {
		if _, err := fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: api\r\nContent-Length: %d\r\n\r\n", size); err != nil {
			sent <- err
			return
		}
		_, err := io.Copy(c, io.LimitReader(zeros{}, size))
		sent <- err
	}()
	resp, body := readResp(t, br, "POST")
	if resp.StatusCode != http.StatusRequestEntityTooLarge || body != "too big" || !resp.Close {
		t.Fatalf("%d %q close=%v", resp.StatusCode, body, resp.Close)
	}
	if err := <-sent; err == nil {
		t.Log("(the whole upload went out before the proxy closed)")
	}
	side.mu.Lock()
	defer side.mu.Unlock()
	if side.failed != 0 || len(side.finished) != 1 || side.finished[0] != http.StatusRequestEntityTooLarge {
		t.Fatalf("failed %d, finished %v", side.failed, side.finished)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// hungUpstream reads one request per connection and never answers;
// arrived closes when the first request is in, closed when the proxy
// hangs up on it.
func hungUpstream(t *testing.T) (addr string, arrived, closed chan struct{}) {
	arrived, closed = make(chan struct{}), make(chan struct{})
	addr = startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		close(arrived)
		if _, err := br.ReadByte(); err != nil {
			close(closed)
		}
	})
	return addr, arrived, closed
}

// waitRecorded waits until side has finished n exchanges.
func waitRecorded(t *testing.T, side *recordingSide, n int) {
	t.Helper()
	waitFor(t, 5*time.Second, "the records", func() bool {
		side.mu.Lock()
		defer side.mu.Unlock()
		return len(side.finished) >= n
	})
}

// A client that goes away while the upstream has not answered ends the
// exchange: the upstream connection closes, and the record says 499, not
// an upstream failure. A half-close (the client's write side shut) counts
// as gone, as for net/http's server and nginx.
func TestH1ClientGoneWhileUpstreamWaits(t *testing.T) {
	for _, tc := range []struct {
		name string
		hang func(net.Conn) error
	}{
		{"closed", net.Conn.Close},
		{"half-closed", func(c net.Conn) error { return c.(*net.TCPConn).CloseWrite() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, arrived, upstreamClosed := hungUpstream(t)
			paddr, side, _ := startH1(t, addr)
			c, _ := dialH1(t, paddr)
			fmt.Fprint(c, "GET /long-poll HTTP/1.1\r\nHost: api\r\n\r\n")
			<-arrived
			if err := tc.hang(c); err != nil {
				t.Fatal(err)
			}
			select {
			case <-upstreamClosed:
			case <-time.After(10 * clientWatchDelay):
				t.Fatal("the upstream connection stayed open after the client went away")
			}
			waitRecorded(t, side, 1)
			side.mu.Lock()
			defer side.mu.Unlock()
			if side.finished[0] != statusClientClosedRequest || side.failed != 0 {
				t.Fatalf("recorded %v, %d upstream failures", side.finished, side.failed)
			}
		})
	}
}

// An answer slower than clientWatchDelay still reaches a client that
// stayed, and a request it pipelined meanwhile is served after it.
func TestH1SlowAnswerWithWatchedClient(t *testing.T) {
	addr := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/slow" {
				time.Sleep(clientWatchDelay + 300*time.Millisecond)
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.URL.Path), req.URL.Path)
		}
	})
	paddr, side, _ := startH1(t, addr)
	c, br := dialH1(t, paddr)
	fmt.Fprint(c, "GET /slow HTTP/1.1\r\nHost: api\r\n\r\n")
	time.Sleep(clientWatchDelay + 100*time.Millisecond) // the watch has started
	fmt.Fprint(c, "GET /next HTTP/1.1\r\nHost: api\r\n\r\n")
	for _, want := range []string{"/slow", "/next"} {
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != want {
			t.Fatalf("want %s: %d %q", want, resp.StatusCode, body)
		}
	}
	side.mu.Lock()
	defer side.mu.Unlock()
	if len(side.finished) != 2 || side.finished[0] != 200 || side.finished[1] != 200 {
		t.Fatalf("recorded %v", side.finished)
	}
}

// watchStarted: some exchange of f is being watched.
func watchStarted(f *h1Forwarder) bool {
	f.watches.mu.Lock()
	defer f.watches.mu.Unlock()
	for cw := range f.watches.waiting {
		if cw.started {
			return true
		}
	}
	return false
}

// A shutdown deadline that cuts off a watched exchange records the
// upstream's failure to answer (502), not a client that went away.
func TestH1ShutdownOfWatchedExchange(t *testing.T) {
	addr, arrived, _ := hungUpstream(t)
	paddr, side, f := startH1(t, addr)
	c, _ := dialH1(t, paddr)
	fmt.Fprint(c, "GET /hang HTTP/1.1\r\nHost: api\r\n\r\n")
	<-arrived
	waitFor(t, 10*clientWatchDelay, "the watch", func() bool { return watchStarted(f) })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	f.shutdown(ctx)
	waitRecorded(t, side, 1)
	side.mu.Lock()
	defer side.mu.Unlock()
	if side.finished[0] != http.StatusBadGateway || side.failed != 1 {
		t.Fatalf("recorded %v, %d upstream failures", side.finished, side.failed)
	}
}

// A client that resets its connection while its response is on the way:
// the proxy lets go of the upstream connection at once, rather than read
// the rest of the body first (for as long as the upstream takes — here
// forever), whether writing the head or a part of the body failed.
func TestH1ClientResetDuringResponse(t *testing.T) {
	for _, tc := range []struct{ name, head, body string }{
		{"head", "X-Big: " + strings.Repeat("a", 6000) + "\r\n", "some"}, // the head overflows the client's buffer
		{"body", "", strings.Repeat("b", 80000)},                         // the first part of the body already does
	} {
		t.Run(tc.name, func(t *testing.T) {
			arrived, answer, upstreamClosed := make(chan struct{}), make(chan struct{}), make(chan struct{})
			addr := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				close(arrived)
				<-answer
				// 100 MB announced, a part sent, the rest never.
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\n%sContent-Length: 100000000\r\n\r\n%s", tc.head, tc.body)
				if _, err := br.ReadByte(); err != nil && !isTimeout(err) {
					close(upstreamClosed)
				}
			})
			paddr, side, _ := startH1(t, addr)
			c, _ := dialH1(t, paddr)
			fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: api\r\n\r\n")
			<-arrived
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close() // a reset
			close(answer)
			select {
			case <-upstreamClosed:
			case <-time.After(10 * time.Second):
				t.Fatal("the upstream connection is still held after the client's reset")
			}
			waitRecorded(t, side, 1)
			side.mu.Lock()
			defer side.mu.Unlock()
			if side.finished[0] == statusClientClosedRequest {
				t.Skip("the client watch saw the reset first (the answer took over a second): not the case under test")
			}
			if side.finished[0] != http.StatusOK {
				t.Fatalf("recorded %v", side.finished)
			}
		})
	}
}
