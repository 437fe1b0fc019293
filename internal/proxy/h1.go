package proxy

// The HTTP/1.1 path. A sidecar spends most of its time moving small
// HTTP/1.1 requests between one keep-alive connection and another, and
// net/http's server plus httputil.ReverseProxy and http.Transport cost
// several goroutine hand-offs per request for it (the transport's read and
// write loops, the server's background read that watches for a client
// that goes away, per-request contexts). Here one goroutine per client
// connection reads a request, decides it, writes it to a pooled upstream
// connection, reads the response and writes it back — what nginx does.
//
// Parsing and framing are still net/http's own: http.ReadRequest and
// http.ReadResponse parse (with the checks the server adds on top done in
// checkRequest), Request.Write and Response.Write frame (the message is
// re-framed, never relayed byte for byte, so a request cannot be smuggled
// past the proxy with conflicting lengths). HTTP/2 (ALPN h2, h2c) stays on
// net/http.

import (
	"bufio"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/trustmesh/trustmesh/internal/accesslog"
	"github.com/trustmesh/trustmesh/internal/httpx"
	"github.com/trustmesh/trustmesh/internal/tunnel"
	"github.com/trustmesh/trustmesh/internal/upstream"
)

// h1Side is what the inbound and outbound directions do differently.
type h1Side interface {
	// prepare decides x.req and rewrites it for the upstream: status 0
	// forwards it, any other status is answered here with body.
	prepare(x *h1Exchange) (status int, body string)
	// finish records x once its response is sent; status is what the
	// client got.
	finish(x *h1Exchange, status int)
	// upstreamFailed records an upstream that could not be reached.
	upstreamFailed(err error)
}

// h1Exchange is one request on its way through.
type h1Exchange struct {
	ctx   context.Context
	req   *http.Request
	ci    *connInfo
	start time.Time
	rec   accesslog.Record // inbound: the audit record
	watch clientWatch      // while it waits on the upstream
}

// h1Forwarder serves the HTTP/1.1 connections of one listener.
type h1Forwarder struct {
	p       *Proxy
	side    h1Side
	dial    func(ctx context.Context) (net.Conn, error)
	pool    upstream.Pool
	live    h1Conns
	watches clientWatches
}

var (
	clientReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	clientWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// serve runs one client connection until it closes, fails, or the
// listener shuts down. br holds what was already read from c (it reads
// from c through lr, whose limit bounds the request head).
func (f *h1Forwarder) serve(ctx context.Context, c net.Conn, br *bufio.Reader, lr *io.LimitedReader) {
	defer c.Close()
	if !f.live.add(c) {
		return
	}
	defer f.live.remove(c)
	bw := clientWriters.Get().(*bufio.Writer)
	bw.Reset(&sendTimeout{Conn: c, timeout: f.p.set.IdleTimeout})
	defer func() { bw.Reset(nil); clientWriters.Put(bw) }()
	ci := newConnInfo(c)
	set := &f.p.set
	// One exchange record per connection, reset for each request: the
	// side is done with it when exchange returns (the audit record is
	// encoded synchronously).
	x := new(h1Exchange)
	remote := c.RemoteAddr().String()
	// refuse answers a request that cannot be served and ends the
	// connection, reading what the client still sends for a moment so that
	// it gets the answer rather than a reset.
	refuse := func(status int) {
		writeErrorAndClose(bw, status)
		lr.N = math.MaxInt64
		lingerClose(c, br)
	}
	for {
		// Idle between requests: the first byte of the next one may take
		// idle_timeout; then the whole head header_read_timeout.
		// (The deadline goes first: shutdown moves it to now for a
		// connection it finds idle.)
		_ = c.SetReadDeadline(time.Now().Add(set.IdleTimeout))
		if !f.live.setIdle(c, true) {
			return
		}
		lr.N = int64(set.MaxHeaderBytes) + 4096 // net/http's allowance for the request line
		if _, err := br.Peek(1); err != nil {
			return
		}
		if !f.live.setIdle(c, false) {
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(set.HeaderReadTimeout))
		req, err := http.ReadRequest(br)
		if err != nil {
			switch {
			case lr.N <= 0:
				refuse(http.StatusRequestHeaderFieldsTooLarge)
			case isTimeout(err), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			default:
				refuse(http.StatusBadRequest)
			}
			return
		}
		lr.N = math.MaxInt64
		if req.Body != http.NoBody {
			// A body may take its time, as long as it keeps coming: each
			// read of it from the network may wait idle_timeout (nginx's
			// client_body_timeout), flushBeforeBlock moving the deadline.
			// (Without a body, the head's deadline can stay: nothing reads
			// c until the next request, which sets its own, or a
			// WebSocket tunnel, which clears it.)
			_ = c.SetReadDeadline(time.Now().Add(set.IdleTimeout))
		}
		if status := checkRequest(req); status != 0 {
			refuse(status)
			return
		}
		req.RemoteAddr = remote
		*x = h1Exchange{ctx: ctx, req: req, ci: ci, start: time.Now()}
		if !f.exchange(c, br, bw, x) {
			return
		}
	}
}

// checkRequest applies what net/http's server checks beyond parsing: a
// valid Host on HTTP/1.1, valid header names and values, a
// supported version and method. 0 if the request may go on.
func checkRequest(req *http.Request) int {
	if req.ProtoMajor != 1 {
		return http.StatusHTTPVersionNotSupported
	}
	if req.Method == http.MethodConnect {
		return http.StatusMethodNotAllowed
	}
	// http.ReadRequest has moved the Host header (the first, if several)
	// to req.Host; that one value is what the policy decides and what goes
	// to the upstream.
	if req.ProtoAtLeast(1, 1) && req.Host == "" || !httpguts.ValidHostHeader(req.Host) {
		return http.StatusBadRequest
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return http.StatusBadRequest
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return http.StatusBadRequest
			}
		}
	}
	if e := req.Header["Expect"]; len(e) > 0 && !(len(e) == 1 && strings.EqualFold(e[0], "100-continue")) {
		return http.StatusExpectationFailed
	}
	return 0
}

// exchange forwards one request and its response; false when the client
// connection must close.
func (f *h1Forwarder) exchange(c net.Conn, br *bufio.Reader, bw *bufio.Writer, x *h1Exchange) bool {
	ctx, req := x.ctx, x.req
	keep := !req.Close && req.ProtoAtLeast(1, 1)
	hasBody := req.Body != nil && req.Body != http.NoBody
	// Hop-by-hop headers go before the side sees the request, as
	// httputil.ReverseProxy removes them before its Rewrite: a client's
	// "Connection: X-Forwarded-Client-Cert" must not take away a header the
	// proxy sets, and the policy decides what the upstream will get.
	httpx.RemoveHopHeaders(req.Header, isUpgrade(req.Header))
	if status, body := f.side.prepare(x); status != 0 {
		keep = keep && !hasBody // an unread body would be read as the next request
		writeLocal(bw, status, body, keep)
		f.side.finish(x, status) // recorded before the client has the answer
		if bw.Flush() != nil {
			return false
		}
		if hasBody {
			lingerClose(c, br)
		}
		return keep
	}
	websocket := isUpgrade(req.Header) // (prepare has refused or removed any other upgrade)
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = []string{""} // Request.Write adds none
	}
	req.Close = false
	// Request trailers are not forwarded (Envoy does not by default): the
	// identity headers the side strips could come back in them. With no
	// Trailer map when Request.Write starts, the chunked body ends
	// without any; what the client sends there is read and dropped.
	req.Trailer = nil
	if hasBody {
		fb := &flushBeforeBlock{ReadCloser: req.Body, src: br, left: req.ContentLength, progress: c, progressTimeout: f.p.set.IdleTimeout}
		// Like net/http's server (and nginx), answer Expect: 100-continue
		// here when the body is first read, rather than wait for the
		// upstream's 100 while the client waits for ours.
		// (No 1xx to an HTTP/1.0 client: RFC 9110 section 15.2.)
		if _, ok := req.Header["Expect"]; ok {
			delete(req.Header, "Expect")
			if req.ProtoAtLeast(1, 1) {
				fb.continueTo = bw
			}
		}
		req.Body = fb
	}
	resp, up, err := f.roundTrip(ctx, req, c, br, bw, &x.watch)
	if errors.Is(err, errClientGone) {
		// Nobody to answer: recorded as nginx logs it (499), not as an
		// upstream failure.
		f.side.finish(x, statusClientClosedRequest)
		return false
	}
	if err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
		if websocket && isWebSocket(resp.Header) {
			return f.tunnel(c, br, bw, x, resp, up)
		}
		// A switch the client did not ask for, or to another protocol:
		// what follows on that connection is not HTTP we could frame.
		f.pool.Discard(up)
		err = errors.New("101 Switching Protocols to " + strconv.Quote(strings.Join(resp.Header["Upgrade"], ",")) + " for a request that did not ask for it")
	}
	if cerr := clientBodyErr(req); err != nil && cerr != nil {
		// The client stopped sending its body: its failure, not the
		// upstream's.
		status := clientBodyStatus(cerr)
		writeLocal(bw, status, http.StatusText(status), false)
		f.side.finish(x, status)
		_ = bw.Flush()
		return false
	}
	if err != nil {
		f.side.upstreamFailed(err)
		writeLocal(bw, http.StatusBadGateway, "upstream unavailable", false)
		f.side.finish(x, http.StatusBadGateway)
		if bw.Flush() == nil && hasBody && !bodyDone(req) && !clientBodyFailed(req) {
			lingerClose(c, br)
		}
		return false
	}
	upClose := resp.Close
	early := hasBody && !bodyDone(req) // answered before the body was all sent
	if early {
		keep = false
	}
	httpx.RemoveHopHeaders(resp.Header, false)
	resp.ProtoMajor, resp.ProtoMinor, resp.Proto = 1, 1, "HTTP/1.1"
	if !req.ProtoAtLeast(1, 1) {
		// An HTTP/1.0 client: no chunked encoding; the body ends with the
		// connection where it has no length.
		resp.ProtoMinor, resp.Proto = 0, "HTTP/1.0"
		resp.TransferEncoding = nil
		keep = keep && resp.ContentLength >= 0
	}
	resp.Close = !keep
	resp.Body = &flushBeforeBlock{ReadCloser: resp.Body, src: up.BR, dst: bw, left: resp.ContentLength, cut: up}
	if handled, werr := httpx.WriteResponse(bw, resp); handled {
		err = werr
	} else {
		err = resp.Write(writerOnly{bw})
	}
	f.side.finish(x, resp.StatusCode) // recorded before the client has the end of it
	if err == nil {
		err = bw.Flush()
	}
	if err != nil || upClose || early {
		f.pool.Discard(up)
		if err == nil && early {
			lingerClose(c, br)
		}
		return false
	}
	f.pool.Put(up)
	return keep
}

// roundTrip writes req to an upstream connection and reads the final
// response, relaying interim 1xx responses (100 Continue, 103) to the
// client. A pooled connection the upstream closed while idle is retried
// once on a new one when the request can be replayed.
func (f *h1Forwarder) roundTrip(ctx context.Context, req *http.Request, c net.Conn, br *bufio.Reader, bw *bufio.Writer, cw *clientWatch) (*http.Response, *upstream.Conn, error) {
	if fb, ok := req.Body.(*flushBeforeBlock); ok {
		defer func() { fb.dst = nil }()
	}
	for attempt := 0; ; attempt++ {
		up, reused, err := f.get(ctx)
		if err != nil {
			return nil, nil, err
		}
		if fb, ok := req.Body.(*flushBeforeBlock); ok {
			fb.dst = up.BW // flush what we have before waiting for more of the body
		}
		if !httpx.WriteRequestHead(up.BW, req) {
			err = req.Write(writerOnly{up.BW})
		}
		if err == nil {
			err = up.BW.Flush()
		}
		if err != nil && !clientBodyFailed(req) {
			// An upstream may answer before it has read the whole body
			// (413, 401) and close the connection, failing our write:
			// its answer is what the client gets, not a 502.
			if resp, rerr := readEarlyResponse(up, req); rerr == nil {
				return resp, up, nil
			}
		}
		// stale: the upstream closed the connection before reading or
		// answering any of this request (a pooled connection it had
		// timed out), so nothing of it was processed there.
		stale := err != nil && upstream.Stale(err)
		var resp *http.Response
		// The request is out; while the answer takes its time, watch
		// for the client going away (not while an early answer may
		// leave its body unread: that is still the client's to send).
		var watch *clientWatch
		if err == nil && (req.Body == nil || req.Body == http.NoBody || bodyDone(req)) {
			watch = cw
			f.watches.add(watch, c, br, up)
		}
		for interim := 0; err == nil; interim++ {
			var closed bool
			if resp, closed, err = up.ReadResponse(req, interim); closed {
				stale = interim == 0
			}
			if err != nil || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
				break
			}
			if !req.ProtoAtLeast(1, 1) {
				continue // no 1xx to an HTTP/1.0 client
			}
			httpx.RemoveHopHeaders(resp.Header, false)
			writeInterim(bw, resp)
			err = bw.Flush()
		}
		if watch != nil && f.watches.stop(watch) {
			f.pool.Discard(up)
			return nil, nil, errClientGone
		}
		if err == nil {
			return resp, up, nil
		}
		f.pool.Discard(up)
		if reused && attempt == 0 && stale && upstream.Replayable(req) {
			continue
		}
		return nil, nil, err
	}
}

// clientWatchDelay is how long an exchange waits on its upstream before
// it watches the client connection too: the common quick answer costs a
// timer, only a slow one (a long poll, a hung upstream) a goroutine.
const clientWatchDelay = time.Second

// statusClientClosedRequest is what the audit log and metrics record for
// a request whose client went away before the answer: nginx's 499.
const statusClientClosedRequest = 499

var errClientGone = errors.New("the client closed its connection before the answer")

// clientWatches watches, for each exchange that has waited on its
// upstream for clientWatchDelay, whether its client closes its
// connection meanwhile; then it cuts the wait on the upstream short (a
// past deadline), as net/http's server cancels a request whose client
// went away. Registering an exchange costs a map entry: one scanner
// goroutine, running while any exchange waits, starts a watch (a goroutine
// reading the client connection) only for those that wait long. (A timer
// per exchange instead cost more than half again of an exchange's CPU:
// each new earliest timer wakes the network poller.)
type clientWatches struct {
	mu      sync.Mutex
	waiting map[*clientWatch]struct{}
	running bool // the scanner runs
}

// clientWatch is one exchange's; its flags are guarded by clientWatches.mu.
type clientWatch struct {
	c     net.Conn
	br    *bufio.Reader
	up    *upstream.Conn
	since time.Time

	started, lost bool
	done          chan struct{} // closed when a started watch ends
}

// add registers cw, an exchange whose request is out to up. stop must be
// called before the exchange reads c again (or uses cw again). Bytes the
// client sends meanwhile (a pipelined request) stay in br.
func (w *clientWatches) add(cw *clientWatch, c net.Conn, br *bufio.Reader, up *upstream.Conn) {
	*cw = clientWatch{c: c, br: br, up: up, since: time.Now()}
	w.mu.Lock()
	if w.waiting == nil {
		w.waiting = map[*clientWatch]struct{}{}
	}
	w.waiting[cw] = struct{}{}
	if !w.running {
		w.running = true
		go w.scan()
	}
	w.mu.Unlock()
}

func (w *clientWatches) scan() {
	for {
		time.Sleep(clientWatchDelay / 2)
		now := time.Now()
		w.mu.Lock()
		if len(w.waiting) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		for cw := range w.waiting {
			if !cw.started && now.Sub(cw.since) >= clientWatchDelay {
				// The request head's deadline may still be set: the wait
				// on the upstream has none. (Under mu: a stop that finds
				// the watch started sets its own deadline after this.)
				_ = cw.c.SetReadDeadline(time.Time{})
				cw.started, cw.done = true, make(chan struct{})
				go w.watch(cw)
			}
		}
		w.mu.Unlock()
	}
}

func (w *clientWatches) watch(cw *clientWatch) {
	defer close(cw.done)
	// EOF (a FIN: closed, or half-closed, which net/http's server and
	// nginx take for gone too) or a reset. Not our own stop (a timeout),
	// nor the proxy closing the connection itself at a shutdown deadline
	// (net.ErrClosed): that exchange is the upstream's failure to answer.
	if _, err := cw.br.Peek(1); err != nil && !isTimeout(err) && !errors.Is(err, net.ErrClosed) {
		w.mu.Lock()
		cw.lost = true
		w.mu.Unlock()
		_ = cw.up.SetDeadline(time.Unix(1, 0))
	}
}

// stop ends the watch of cw and reports whether the client went away.
func (w *clientWatches) stop(cw *clientWatch) (lost bool) {
	w.mu.Lock()
	delete(w.waiting, cw)
	started := cw.started
	w.mu.Unlock()
	if started {
		_ = cw.c.SetReadDeadline(time.Now()) // wakes the Peek
		<-cw.done
		_ = cw.c.SetReadDeadline(time.Time{})
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return cw.lost
}

// earlyResponseWait bounds the wait for an answer from an upstream that
// stopped taking a request's body.
const earlyResponseWait = time.Second

// readEarlyResponse reads the final response an upstream sent before it
// stopped reading the request (1xx responses are dropped: the client is
// owed no more of them). The connection is not reused after it.
func readEarlyResponse(up *upstream.Conn, req *http.Request) (*http.Response, error) {
	_ = up.SetReadDeadline(time.Now().Add(earlyResponseWait))
	defer func() { _ = up.SetReadDeadline(time.Time{}) }()
	for interim := 0; interim <= upstream.MaxInterimResponses; interim++ {
		up.LR.N = upstream.MaxResponseHeadBytes
		resp, err := http.ReadResponse(up.BR, req)
		up.LR.N = math.MaxInt64
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			resp.Close = true
			return resp, nil
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return nil, errors.New("101 Switching Protocols before the request was sent")
		}
	}
	return nil, errors.New("too many 1xx responses")
}

// clientBodyFailed: reading the request body from the client failed (as
// opposed to writing it to the upstream).
func clientBodyFailed(req *http.Request) bool {
	return clientBodyErr(req) != nil
}

// clientBodyErr is what failed reading the request body from the client.
func clientBodyErr(req *http.Request) error {
	if fb, ok := req.Body.(*flushBeforeBlock); ok {
		return fb.clientErr
	}
	return nil
}

// lingerClose ends a client connection whose request body was not read
// to its end (an early answer): the write side closes first and what the
// client still sends is read and dropped for a moment, so that closing
// with unread data (a TCP reset) does not destroy the answer before the
// client has read it, as net/http's server does.
func lingerClose(c net.Conn, br *bufio.Reader) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = io.Copy(io.Discard, io.LimitReader(br, 4<<20))
}

// tunnel relays a WebSocket connection after 101 Switching Protocols.
func (f *h1Forwarder) tunnel(c net.Conn, br *bufio.Reader, bw *bufio.Writer, x *h1Exchange, resp *http.Response, up *upstream.Conn) bool {
	defer f.pool.Discard(up)
	resp.ProtoMajor, resp.ProtoMinor, resp.Proto = 1, 1, "HTTP/1.1"
	err := resp.Write(writerOnly{bw})
	f.side.finish(x, http.StatusSwitchingProtocols)
	if err != nil || bw.Flush() != nil {
		return false
	}
	_ = c.SetReadDeadline(time.Time{})
	_ = c.SetWriteDeadline(time.Time{}) // sendTimeout's, from the 101
	tunnel.Pipe(&bufferedConn{Conn: c, r: br}, &bufferedConn{Conn: up.Conn, r: up.BR}, f.p.set.TunnelIdleTimeout)
	return false
}

// get takes an idle upstream connection or dials one.
func (f *h1Forwarder) get(ctx context.Context) (*upstream.Conn, bool, error) {
	if up := f.pool.Get(); up != nil {
		return up, true, nil
	}
	c, err := f.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	up := upstream.NewConn(c)
	f.pool.Add(up)
	return up, false, nil
}

// shutdown lets in-flight requests finish until ctx ends, then closes the
// client connections and the upstream ones they wait on.
func (f *h1Forwarder) shutdown(ctx context.Context) {
	f.live.shutdown(ctx, f.pool.CloseBusy)
	f.pool.CloseAll()
}

// interimFraming is what writeInterim leaves out of a 1xx.
var interimFraming = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}

// writeInterim writes a 1xx response: its status line and headers, no
// body and no framing header (RFC 9110 section 8.6 forbids Content-Length
// in a 1xx: Response.Write would add Content-Length: 0 to one answering a
// POST, and one the upstream sent is dropped too).
func writeInterim(bw *bufio.Writer, resp *http.Response) {
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(resp.StatusCode))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(resp.StatusCode))
	bw.WriteString("\r\n")
	_ = resp.Header.WriteSubset(bw, interimFraming)
	bw.WriteString("\r\n")
}

// writeLocal answers a request here (a denial, a bad gateway), unflushed.
func writeLocal(bw *bufio.Writer, status int, body string, keep bool) {
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(status))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(status))
	bw.WriteString("\r\nContent-Type: text/plain\r\nX-Content-Type-Options: nosniff\r\nDate: ")
	bw.WriteString(time.Now().UTC().Format(http.TimeFormat))
	bw.WriteString("\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	if !keep {
		bw.WriteString("\r\nConnection: close")
	}
	bw.WriteString("\r\n\r\n")
	bw.WriteString(body)
}

// writeErrorAndClose is net/http's answer to a request it cannot read.
func writeErrorAndClose(bw *bufio.Writer, status int) {
	writeLocal(bw, status, strconv.Itoa(status)+" "+http.StatusText(status), false)
	_ = bw.Flush()
}

// isWebSocket: a 101 response switching to WebSocket.
func isWebSocket(h http.Header) bool {
	return httpguts.HeaderValuesContainsToken(h["Upgrade"], "websocket") && httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade")
}

// isUpgrade: the request asks to switch protocols (once the side has run
// httpx.CheckUpgrade, only a WebSocket handshake can).
func isUpgrade(h http.Header) bool {
	return len(h["Upgrade"]) > 0 && httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade")
}

// bodyDone: the request body was read to its end, so the connection is at
// the next request.
func bodyDone(req *http.Request) bool {
	fb, ok := req.Body.(*flushBeforeBlock)
	return ok && fb.eof
}

// clientBodyStatus answers a request whose body the client stopped
// sending: 408 when it was too slow (idle_timeout between two reads of
// it), 400 when it broke off.
func clientBodyStatus(err error) int {
	if isTimeout(err) {
		return http.StatusRequestTimeout
	}
	return http.StatusBadRequest
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// flushBeforeBlock flushes dst before a read of src would have to wait
// for the network: what arrived so far goes on at once (streaming
// responses, slow uploads), and a message that arrives whole costs one
// write.
type flushBeforeBlock struct {
	io.ReadCloser
	src        *bufio.Reader
	dst        *bufio.Writer
	continueTo *bufio.Writer // the client, owed a 100 Continue before the first read
	left       int64         // bytes of the body still to come; -1 unknown
	eof        bool
	clientErr  error // reading the body from the client (or answering 100 Continue) failed
	// cut is, for a response body, the upstream connection: see Close.
	cut net.Conn
	// progress is, for a request body, the client connection: each read
	// from it may wait progressTimeout.
	progress        net.Conn
	progressTimeout time.Duration
}

// Close closes the body. Closing a response body before its end reads the
// rest of it from the upstream first (for as long as the upstream takes);
// when that is because writing to the client failed (dst holds the error),
// the upstream's read is cut short first: that connection is discarded
// anyway, and the exchange is over.
func (f *flushBeforeBlock) Close() error {
	if f.cut != nil && !f.eof && f.dst != nil {
		if _, err := f.dst.Write(nil); err != nil { // bufio.Writer's sticky error, nothing written
			_ = f.cut.SetReadDeadline(time.Unix(1, 0))
		}
	}
	return f.ReadCloser.Close()
}

func (f *flushBeforeBlock) Read(p []byte) (int, error) {
	if w := f.continueTo; w != nil {
		f.continueTo = nil
		if _, err := w.WriteString("HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
			f.clientErr = err
			return 0, err
		}
		if err := w.Flush(); err != nil {
			f.clientErr = err
			return 0, err
		}
	}
	// (A body whose length is all read ends without reading the network:
	// no flush then, so the response goes out whole after it is recorded.)
	if f.dst != nil && f.left != 0 && f.src.Buffered() == 0 && f.dst.Buffered() > 0 {
		if err := f.dst.Flush(); err != nil {
			return 0, err
		}
	}
	if f.progress != nil {
		// (Whether this read reaches the network depends on the body's
		// framing, not only on what is buffered: a chunk header may be
		// half in.)
		_ = f.progress.SetReadDeadline(time.Now().Add(f.progressTimeout))
	}
	n, err := f.ReadCloser.Read(p)
	if f.left > 0 {
		f.left -= int64(n)
	}
	if err == io.EOF {
		f.eof = true
	} else if err != nil {
		f.clientErr = err
	}
	return n, err
}

// WriteTo copies through a pooled buffer (io.Copy prefers it to
// allocating one), flushing dst before a read that would wait.
func (f *flushBeforeBlock) WriteTo(w io.Writer) (int64, error) {
	bp := httpx.GetBuffer()
	defer httpx.PutBuffer(bp)
	var total int64
	for {
		n, err := f.Read(*bp)
		if n > 0 {
			m, werr := w.Write((*bp)[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// writerOnly hides bufio.Writer's ReadFrom from Request.Write and
// Response.Write: ReadFrom reads straight into the writer's own buffer,
// and flushBeforeBlock flushing that same writer in the middle of such a
// read would scramble it. Without it the copy goes through
// flushBeforeBlock.WriteTo or io.Copy's own buffer. WriteByte stays:
// Request.Write wraps a writer without it in a bufio.Writer of its own (a
// 4 KiB allocation per request, and a head held back from the upstream
// until the body is done).
type writerOnly struct{ w *bufio.Writer }

func (w writerOnly) Write(p []byte) (int, error)       { return w.w.Write(p) }
func (w writerOnly) WriteString(s string) (int, error) { return w.w.WriteString(s) }
func (w writerOnly) WriteByte(c byte) error            { return w.w.WriteByte(c) }

// sendTimeout is the client connection as its bufio.Writer sees it: each
// write may wait timeout for the client to take the bytes (nginx's
// send_timeout), so a client that stops reading its response is cut off
// instead of holding its connection slot and an upstream connection.
type sendTimeout struct {
	net.Conn
	timeout time.Duration
}

func (w *sendTimeout) Write(p []byte) (int, error) {
	_ = w.Conn.SetWriteDeadline(time.Now().Add(w.timeout))
	return w.Conn.Write(p)
}

// bufferedConn reads through the bufio.Reader that may hold bytes already
// read from the connection.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// h1Conns tracks a listener's HTTP/1.1 client connections for graceful
// shutdown: idle ones are closed at once, busy ones after their response.
type h1Conns struct {
	mu      sync.Mutex
	conns   map[net.Conn]bool // → idle
	closing bool
	wg      sync.WaitGroup
}

func (t *h1Conns) add(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closing {
		return false
	}
	if t.conns == nil {
		t.conns = map[net.Conn]bool{}
	}
	t.conns[c] = false
	t.wg.Add(1)
	return true
}

func (t *h1Conns) remove(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	t.wg.Done()
}

// setIdle marks c idle or busy; false once shutting down (the caller
// closes it).
func (t *h1Conns) setIdle(c net.Conn, idle bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.conns[c] = idle
	return !t.closing
}

// shutdown waits for busy connections to finish until ctx ends, then
// closes every connection and calls alsoClose.
func (t *h1Conns) shutdown(ctx context.Context, alsoClose func()) {
	t.mu.Lock()
	t.closing = true
	for c, idle := range t.conns {
		if idle {
			_ = c.SetReadDeadline(time.Now()) // wakes its wait for a request
		}
	}
	t.mu.Unlock()
	waitThenClose(ctx, &t.wg, func() {
		t.mu.Lock()
		for c := range t.conns {
			c.Close()
		}
		t.mu.Unlock()
		alsoClose()
	})
}

// newH1Reader is a client connection's reader, through a limit for the
// request head; release returns it to the pool.
func newH1Reader(c net.Conn) (br *bufio.Reader, lr *io.LimitedReader, release func()) {
	lr = &io.LimitedReader{R: c, N: math.MaxInt64}
	br = clientReaders.Get().(*bufio.Reader)
	br.Reset(lr)
	return br, lr, func() { br.Reset(nil); clientReaders.Put(br) }
}
