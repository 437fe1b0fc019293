package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/trustmesh/trustmesh/internal/httpx"
	upconn "github.com/trustmesh/trustmesh/internal/upstream"
)

// forwarder is a route's fast path to a plain-HTTP/1.1 upstream: the
// HTTP/1.1 requests most traffic is made of (no body, no upgrade; an
// HTTP/2 request always has a body reader, so it never qualifies) are written to a
// pooled upstream connection and their response read back on the
// handler's own goroutine, as the proxy's HTTP/1.1 path does
// (internal/upstream, imported as upconn). http.Transport would hand each
// one to two more goroutines (its per-connection read and write loops); under load those
// hand-offs cost more than the gateway's checks. Everything else — a
// request body (Expect: 100-continue, an upstream that answers before
// reading it), a WebSocket upgrade, h2c or https upstreams — goes through
// httputil.ReverseProxy and http.Transport as before. Both paths build the
// upstream request with the same rewriteOut and answer a failure with the
// same upstreamFailed.
type forwarder struct {
	g      *Gateway
	rt     *route
	addr   string // host:port to dial
	dialer net.Dialer
	pool   upconn.Pool
}

func newForwarder(g *Gateway, rt *route) *forwarder {
	port := rt.Upstream.Port()
	if port == "" {
		port = "80"
	}
	return &forwarder{g: g, rt: rt, addr: net.JoinHostPort(rt.Upstream.Hostname(), port),
		dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}}
}

// takes: the fast path serves in (body-less, no upgrade left after
// httpx.CheckUpgrade).
func (f *forwarder) takes(in *http.Request) bool {
	return f != nil && in.Body == http.NoBody && len(in.Header["Upgrade"]) == 0
}

// errAborted: the response was cut off after its head had gone to the
// client; the handler must abort (http.ErrAbortHandler) so that the
// client sees a broken response, not a short one that looks whole.
var errAborted = errors.New("response aborted")

// serve forwards in as httputil.ReverseProxy would, answering 502 (via
// upstreamFailed) when the upstream cannot be reached. It returns
// errAborted when the response broke off midway.
func (f *forwarder) serve(w http.ResponseWriter, in *http.Request, id *Identity) error {
	ctx := in.Context()
	out := in.Clone(ctx)
	out.Body, out.Close = nil, false
	// What ReverseProxy does before its Rewrite: hop-by-hop headers and
	// the forwarding headers go (Rewrite sets its own), a query it could
	// not parse is re-encoded, and no User-Agent is added.
	httpx.RemoveHopHeaders(out.Header, false)
	for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		delete(out.Header, k)
	}
	out.URL.RawQuery = cleanQuery(out.URL.RawQuery)
	f.g.rewriteOut(f.rt, &httputil.ProxyRequest{In: in, Out: out}, id)
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = []string{""}
	}
	resp, up, err := f.roundTrip(ctx, w, out)
	if err != nil {
		f.g.upstreamFailed(w, f.rt, err)
		return nil
	}
	reusable := false
	defer func() { up.release(reusable) }() // (a panic included: never left busy)
	// Once the head is read the upstream's pace is the client's: no
	// deadline, as http.Transport has none on a body. A client that goes
	// away ends the wait (the AfterFunc in roundTrip).
	_ = up.SetReadDeadline(time.Time{})
	if ctx.Err() != nil { // the watch may have fired before that line
		_ = up.SetDeadline(time.Unix(1, 0))
	}
	httpx.RemoveHopHeaders(resp.Header, false)
	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	if len(resp.Trailer) > 0 {
		names := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			names = append(names, k)
		}
		h.Add("Trailer", strings.Join(names, ", "))
	}
	w.WriteHeader(resp.StatusCode)
	err = f.copyBody(w, resp, up)
	if err == nil && len(resp.Trailer) > 0 {
		// Trailers the upstream did not announce are sent only by a
		// chunked response: flushing now commits to one, as ReverseProxy
		// does (a response still unflushed would get a Content-Length).
		err = http.NewResponseController(w).Flush()
	}
	reusable = err == nil && !resp.Close
	if err != nil {
		if ctx.Err() == nil { // (not the client going away)
			f.g.log.Debug("upstream response cut off", "route", f.rt.Name, "err", err)
		}
		return errAborted
	}
	for k, vv := range resp.Trailer {
		for _, v := range vv {
			h.Add(http.TrailerPrefix+k, v)
		}
	}
	return nil
}

// liveConn is a pooled connection while one request uses it: stop ends
// the watch on the client's context (which closes the connection's
// deadline when the client goes away).
type liveConn struct {
	*upconn.Conn
	pool *upconn.Pool
	stop func() bool
}

// release puts the connection back for the next request when its
// exchange ended cleanly and the client's context never fired on it.
func (c *liveConn) release(reusable bool) {
	if c.stop() && reusable {
		c.pool.Put(c.Conn)
	} else {
		c.pool.Discard(c.Conn)
	}
}

// roundTrip writes out to an upstream connection and reads the response
// head, forwarding interim 1xx responses (103 Early Hints) to w as
// ReverseProxy does. A pooled connection the upstream had closed while
// idle is retried once on a new one when out can be replayed.
func (f *forwarder) roundTrip(ctx context.Context, w http.ResponseWriter, out *http.Request) (*http.Response, *liveConn, error) {
	for attempt := 0; ; attempt++ {
		resp, lc, reused, stale, err := f.try(ctx, w, out)
		if err == nil {
			return resp, lc, nil
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		if reused && attempt == 0 && stale && upconn.Replayable(out) {
			continue
		}
		return nil, nil, err
	}
}

// try is one attempt of roundTrip. stale: the upstream closed the
// connection before answering any of it. The connection goes back (as
// unusable) on every way out but a final response, a panic included.
func (f *forwarder) try(ctx context.Context, w http.ResponseWriter, out *http.Request) (resp *http.Response, lc *liveConn, reused, stale bool, err error) {
	up, reused, err := f.get(ctx)
	if err != nil {
		return nil, nil, false, false, err
	}
	// A client that goes away cuts the wait on the upstream short.
	conn := &liveConn{Conn: up, pool: &f.pool}
	conn.stop = context.AfterFunc(ctx, func() { _ = up.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if err != nil || resp == nil {
			conn.release(false)
		}
	}()
	if t := f.g.set.UpstreamTimeout; t > 0 {
		_ = up.SetReadDeadline(time.Now().Add(t))
	}
	if !httpx.WriteRequestHead(up.BW, out) {
		err = out.Write(up.BW)
	}
	if err == nil {
		err = up.BW.Flush()
	}
	stale = err != nil && upconn.Stale(err)
	for interim := 0; err == nil; interim++ {
		var closed bool
		if resp, closed, err = up.ReadResponse(out, interim); closed {
			stale = interim == 0
		}
		switch {
		case err != nil:
		case resp.StatusCode == http.StatusSwitchingProtocols:
			err = errors.New("101 Switching Protocols for a request that did not ask for it")
		case resp.StatusCode >= 200:
			return resp, conn, reused, false, nil
		default: // 1xx: passed on, as ReverseProxy does
			h := w.Header()
			httpx.RemoveHopHeaders(resp.Header, false)
			for k, vv := range resp.Header {
				h[k] = vv
			}
			w.WriteHeader(resp.StatusCode)
			clear(h)
			resp = nil
		}
	}
	return nil, nil, reused, stale, err
}

// get takes an idle upstream connection or dials one.
func (f *forwarder) get(ctx context.Context) (*upconn.Conn, bool, error) {
	if up := f.pool.Get(); up != nil {
		return up, true, nil
	}
	c, err := f.dialer.DialContext(ctx, "tcp", f.addr)
	if err != nil {
		return nil, false, err
	}
	up := upconn.NewConn(c)
	f.pool.Add(up)
	return up, false, nil
}

// copyBody copies resp's body to w. Before a read that would wait on the
// upstream, what was written so far is flushed, so a streamed response
// (server-sent events, a long poll) reaches the client as it comes —
// ReverseProxy flushes such responses at once too — while a response that
// arrived whole goes out in one write after the handler returns.
func (f *forwarder) copyBody(w http.ResponseWriter, resp *http.Response, up *liveConn) error {
	buf := httpx.BufferPool{}.Get()
	defer httpx.BufferPool{}.Put(buf)
	rc := http.NewResponseController(w)
	left, dirty := resp.ContentLength, false
	for {
		if dirty && left != 0 && up.BR.Buffered() == 0 {
			if err := rc.Flush(); err != nil {
				return err
			}
			dirty = false
		}
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			dirty = true
			if left > 0 {
				left -= int64(n)
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// cleanQuery is ReverseProxy's rule for a query it forwards
// (cleanQueryParams in net/http/httputil): one that net/url would not
// parse whole (a ';' separator, a bad escape, more parameters than its
// limit) is re-encoded from what it does parse, so that the upstream
// cannot read a parameter the gateway's policy did not see; with the
// urlmaxqueryparams GODEBUG set, every query is.
func cleanQuery(q string) string {
	if q == "" {
		return q
	}
	if !reencodeEveryQuery && strings.Count(q, "&") < maxQueryParams && !strings.ContainsAny(q, ";%") {
		return q // the common case, without parsing
	}
	v, err := url.ParseQuery(q)
	if err == nil && !reencodeEveryQuery {
		return q
	}
	return v.Encode()
}

// maxQueryParams is net/url's default limit on a query's parameters
// (GODEBUG urlmaxqueryparams).
const maxQueryParams = 10000

var reencodeEveryQuery = strings.Contains(os.Getenv("GODEBUG"), "urlmaxqueryparams=")
