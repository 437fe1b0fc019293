package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/configfile"
	"github.com/trustmesh/trustmesh/internal/upstream/upstreamtest"
)

// The fast path (forward.go) takes body-less requests to plain-HTTP
// upstreams; these tests are about what it must do as ReverseProxy did.

// harnessWithUpstream runs a gateway whose one route goes to handler.
func harnessWithUpstream(t *testing.T, handler http.Handler, mutate func(*Config)) (*harness, string) {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	h := newHarness(t, harnessOpts{mutate: func(c *Config) {
		c.Routes[0].Upstream = srv.URL
		if mutate != nil {
			mutate(c)
		}
	}})
	return h, h.idp.token(t, h.idp.claims(h.clock.Now()))
}

// bearerStream sends a GET with a bearer token and returns the response
// unread (harness.get reads the body whole).
func bearerStream(t *testing.T, h *harness, path, tok string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, h.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestFastPathTakes(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	rt := h.gw.routes[0]
	if rt.fast == nil {
		t.Fatal("a plain-HTTP route has no fast path")
	}
	get := httptest.NewRequest(http.MethodGet, "/", nil)
	post := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("x"))
	ws := httptest.NewRequest(http.MethodGet, "/", nil)
	ws.Header.Set("Upgrade", "websocket")
	if !rt.fast.takes(get) || rt.fast.takes(post) || rt.fast.takes(ws) {
		t.Fatalf("takes: GET %v, POST with a body %v, upgrade %v", rt.fast.takes(get), rt.fast.takes(post), rt.fast.takes(ws))
	}
	var none *forwarder // h2c and https routes
	if none.takes(get) {
		t.Fatal("a nil forwarder takes requests")
	}
}

// A client that goes away while the upstream thinks ends the upstream's
// request too, and the connection is not pooled.
func TestFastPathClientGoneCancelsUpstream(t *testing.T) {
	started, cancelled := make(chan struct{}), make(chan struct{})
	h, tok := harnessWithUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		select {
		case <-r.Context().Done():
			close(cancelled)
		case <-time.After(30 * time.Second):
		}
	}), nil)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.url+"/slow", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the upstream")
	}
	cancel()
	<-errc
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream's request was not cancelled when the client went away")
	}
	if n := h.gw.routes[0].fast.pool.Idle(); n != 0 {
		t.Fatalf("%d connections pooled after a cancelled exchange", n)
	}
}

// rawUpstream answers each connection with respond, which gets the
// request head as read.
func rawUpstream(t *testing.T, respond func(c net.Conn, br *bufio.Reader, req *http.Request)) string {
	t.Helper()
	return "http://" + upstreamtest.Serve(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			respond(c, br, req)
		}
	})
}

// A response cut off midway reaches the client as broken (an error),
// never as a shorter body that looks complete — with a length and
// chunked alike — and is audited.
func TestFastPathTruncatedResponseAborts(t *testing.T) {
	for _, tc := range []struct{ name, resp string }{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nonly ten b\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := rawUpstream(t, func(c net.Conn, _ *bufio.Reader, _ *http.Request) {
				_, _ = io.WriteString(c, tc.resp)
				c.Close()
			})
			h := newHarness(t, harnessOpts{mutate: func(c *Config) { c.Routes[0].Upstream = addr }})
			tok := h.idp.token(t, h.idp.claims(h.clock.Now()))
			resp := bearerStream(t, h, "/cut", tok)
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				t.Fatalf("a cut-off response read as whole: %d %q", resp.StatusCode, body)
			}
			waitFor(t, "the audit line", func() bool { return h.lastAudit("access_decision") != nil })
		})
	}
}

// An idle pooled connection that the upstream closed is not used: every
// request of a series gets its answer, also a POST without a body, which
// could not be retried.
func TestFastPathUpstreamClosingIdleConnections(t *testing.T) {
	var conns, closed atomic.Int32
	addr := rawUpstream(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
		conns.Add(1)
		// Keep-alive by the headers, then closed (an upstream's idle
		// timeout running out between requests).
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		c.Close()
		closed.Add(1)
	})
	h := newHarness(t, harnessOpts{mutate: func(c *Config) { c.Routes[0].Upstream = addr }})
	tok := h.idp.token(t, h.idp.claims(h.clock.Now()))
	for i := 0; i < 5; i++ {
		method := http.MethodGet
		if i%2 == 1 {
			method = http.MethodPost
		}
		req, _ := http.NewRequest(method, h.url+"/again", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := bodyOf(resp)
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d (%s): %d %q", i, method, resp.StatusCode, body)
		}
		// The gateway pooled the connection before the client had the
		// answer (it is sent when the handler returns); the upstream has
		// closed it by now.
		want := int32(i + 1)
		waitFor(t, "the upstream to close", func() bool { return closed.Load() == want && !idleUsable(h) })
	}
	if conns.Load() < 5 {
		t.Fatalf("%d upstream connections for 5 requests on a closing upstream", conns.Load())
	}
}

// idleUsable: the gateway's pooled connection still looks open.
func idleUsable(h *harness) bool {
	p := &h.gw.routes[0].fast.pool
	c := p.Get()
	if c == nil {
		return false
	}
	p.Put(c) // Get checked it (and closed it if not usable)
	return true
}

// A streamed response reaches the client as it comes, not when it ends.
func TestFastPathStreams(t *testing.T) {
	release := make(chan struct{})
	h, tok := harnessWithUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release
		_, _ = io.WriteString(w, "data: second\n\n")
	}), nil)
	defer close(release)
	resp := bearerStream(t, h, "/events", tok)
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event: %q %v", line, err)
	}
}

// Trailers and interim 103 responses are passed on; hop-by-hop headers
// are not.
func TestFastPathTrailersAndHopHeaders(t *testing.T) {
	h, tok := harnessWithUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Hop") != "" || r.Header.Get("Connection") != "" {
			http.Error(w, "hop-by-hop header forwarded", http.StatusTeapot)
			return
		}
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Set("Trailer", "X-Checksum")
		w.Header().Set("Connection", "X-Drop-Me")
		w.Header().Set("X-Drop-Me", "1")
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "abc")
	}), nil)
	var early atomic.Int32
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, hdr textproto.MIMEHeader) error {
		if code == http.StatusEarlyHints && hdr.Get("Link") != "" {
			early.Add(1)
		}
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, h.url+"/t", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := bodyOf(resp)
	if early.Load() != 1 {
		t.Fatal("the 103 Early Hints did not reach the client")
	}
	if resp.StatusCode != 200 || body != "body" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if got := resp.Trailer.Get("X-Checksum"); got != "abc" {
		t.Fatalf("trailer: %q (%v)", got, resp.Trailer)
	}
	if resp.Header.Get("X-Drop-Me") != "" {
		t.Fatal("a header the upstream's Connection named reached the client")
	}
}

// An upstream that does not answer within upstream_timeout gets a 502.
func TestFastPathUpstreamTimeout(t *testing.T) {
	addr := rawUpstream(t, func(c net.Conn, br *bufio.Reader, _ *http.Request) {
		_, _ = br.ReadByte() // never answers; the gateway hangs up
	})
	h := newHarness(t, harnessOpts{mutate: func(c *Config) {
		c.Routes[0].Upstream = addr
		c.Limits.UpstreamTimeout = configfile.Duration{Value: 200 * time.Millisecond}
	}})
	tok := h.idp.token(t, h.idp.claims(h.clock.Now()))
	resp := h.bearerGet("/wait", tok, nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("silent upstream: %d", resp.StatusCode)
	}
	rec := h.lastAudit("access_decision")
	if rec == nil || rec["status"] != float64(http.StatusBadGateway) {
		t.Fatalf("audit: %v", rec)
	}
}

// A query ReverseProxy would not pass as is (a ';' separator) is
// re-encoded from the parts that parse, so the upstream cannot read a
// parameter the gateway did not see.
func TestFastPathCleansQuery(t *testing.T) {
	got := make(chan string, 1)
	h, tok := harnessWithUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.URL.RawQuery
	}), nil)
	resp := h.bearerGet("/q?x=1&a=1;admin=true", tok, nil)
	resp.Body.Close()
	if q := <-got; q != "x=1" {
		t.Fatalf("upstream query %q", q)
	}
	for q, want := range map[string]string{"": "", "a=1&b=2": "a=1&b=2", "a=%zz&b=1": "b=1", "a=%41": "a=%41"} {
		if got := cleanQuery(q); got != want {
			t.Errorf("cleanQuery(%q) = %q, want %q", q, got, want)
		}
	}
}

// A final status below 100 (which http.ReadResponse parses) is no
// answer: 502, an audit line, and the connection is not left busy.
func TestFastPathInvalidStatus(t *testing.T) {
	addr := rawUpstream(t, func(c net.Conn, _ *bufio.Reader, _ *http.Request) {
		_, _ = io.WriteString(c, "HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n")
	})
	h := newHarness(t, harnessOpts{mutate: func(c *Config) { c.Routes[0].Upstream = addr }})
	tok := h.idp.token(t, h.idp.claims(h.clock.Now()))
	resp := h.bearerGet("/odd", tok, nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status 099 from the upstream: %d", resp.StatusCode)
	}
	if rec := h.lastAudit("access_decision"); rec == nil || rec["status"] != float64(http.StatusBadGateway) {
		t.Fatalf("audit: %v", rec)
	}
	if p := &h.gw.routes[0].fast.pool; p.Busy() != 0 || p.Idle() != 0 {
		t.Fatalf("after a bad status: %d busy, %d idle connections", p.Busy(), p.Idle())
	}
}

// Trailers the upstream did not announce reach the client even when the
// whole response arrived at once.
func TestFastPathUnannouncedTrailers(t *testing.T) {
	addr := rawUpstream(t, func(c net.Conn, _ *bufio.Reader, _ *http.Request) {
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\nX-Sum: abc\r\n\r\n")
	})
	h := newHarness(t, harnessOpts{mutate: func(c *Config) { c.Routes[0].Upstream = addr }})
	tok := h.idp.token(t, h.idp.claims(h.clock.Now()))
	resp := bearerStream(t, h, "/sum", tok)
	body := bodyOf(resp)
	if body != "body" || resp.Trailer.Get("X-Sum") != "abc" {
		t.Fatalf("body %q, trailers %v", body, resp.Trailer)
	}
}

// A query past net/url's parameter limit is re-encoded as ReverseProxy
// re-encodes it: the upstream cannot see a parameter the gateway did not.
func TestFastPathQueryOverParamLimit(t *testing.T) {
	q := strings.Repeat("&", maxQueryParams) + "admin=1"
	v, _ := url.ParseQuery(q)
	if got, want := cleanQuery(q), v.Encode(); got != want || strings.Contains(got, "admin") {
		t.Fatalf("cleanQuery over the limit = %q, want %q", got, want)
	}
	under := strings.Repeat("a=1&", 10) + "b=2"
	if got := cleanQuery(under); got != under {
		t.Fatalf("a short query was changed: %q", got)
	}
}

// Bytes an upstream sends after a response without a body (HEAD) are
// never read as the next request's response.
func TestFastPathNoLeftoversAfterHead(t *testing.T) {
	var n atomic.Int32
	addr := rawUpstream(t, func(c net.Conn, _ *bufio.Reader, req *http.Request) {
		i := n.Add(1)
		if req.Method == http.MethodHead {
			// A body after a HEAD response: in the same write, and late.
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/")
			time.Sleep(50 * time.Millisecond)
			_, _ = io.WriteString(c, "1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n%02d", i)
	})
	h := newHarness(t, harnessOpts{mutate: func(c *Config) { c.Routes[0].Upstream = addr }})
	tok := h.idp.token(t, h.idp.claims(h.clock.Now()))
	req, _ := http.NewRequest(http.MethodHead, h.url+"/h", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HEAD: %v %v", resp, err)
	}
	resp.Body.Close()
	for i := 0; i < 3; i++ {
		time.Sleep(30 * time.Millisecond) // before, during and after the late bytes
		resp := bearerStream(t, h, "/g", tok)
		if body := bodyOf(resp); body == "forged" || len(body) != 2 {
			t.Fatalf("GET %d got %q", i, body)
		}
	}
}

// At shutdown, a stream still running when the timeout ends is cut off
// (its upstream connection closed), so Run returns.
func TestFastPathShutdownCutsStreams(t *testing.T) {
	upstreamDone := make(chan struct{})
	h, tok := harnessWithUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(upstreamDone)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // until the gateway hangs up
	}), func(c *Config) { c.Limits.ShutdownTimeout = configfile.Duration{Value: 200 * time.Millisecond} })
	resp := bearerStream(t, h, "/events", tok)
	defer resp.Body.Close()
	if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "data: first\n" {
		t.Fatalf("first event: %q %v", line, err)
	}
	h.cancel()
	select {
	case err := <-h.done:
		h.done <- err // for the harness's cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return with a stream open past the shutdown timeout")
	}
	select {
	case <-upstreamDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream's stream was not ended")
	}
}
