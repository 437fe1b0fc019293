package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustmesh/trustmesh/internal/accesslog"
	"github.com/trustmesh/trustmesh/internal/httpx"
	"github.com/trustmesh/trustmesh/internal/policy"
	"github.com/trustmesh/trustmesh/internal/tunnel"
)

// inbound terminates mTLS (or, where PeerAuthentication allows, plaintext)
// in front of the application, authorizes every request or connection and
// forwards what policy allows.
type inbound struct {
	p   *Proxy
	l   Listener
	ln  net.Listener
	tls *tls.Config

	// HTTP: HTTP/1.1 over TLS on fwd (h1.go), HTTP/2 and plaintext
	// (PERMISSIVE) on srv; fwd is nil for an h2c backend.
	fwd *h1Forwarder
	hl  *chanListener
	srv *http.Server
	rp  *httputil.ReverseProxy

	tcp tcpConns
	// tunnels are the WebSockets net/http's path relays (its Shutdown
	// does not wait for hijacked connections).
	tunnels tunnel.Set

	duration       prometheus.Observer // this listener's request_duration_seconds
	upstreamErrors prometheus.Counter
}

func (p *Proxy) newInbound(l Listener, ln net.Listener) *inbound {
	in := &inbound{p: p, l: l, ln: ln}
	alpn := []string{"h2", "http/1.1"}
	if l.Protocol == ProtocolTCP {
		alpn = nil
	}
	in.tls = p.id.serverTLS(p.trustDomains, alpn)
	in.duration = p.metrics.duration.WithLabelValues("inbound", l.Name)
	in.upstreamErrors = p.metrics.upstreamErrors.WithLabelValues(l.Name)
	if l.Protocol == ProtocolHTTP {
		in.hl = newChanListener(ln.Addr())
		protocols := new(http.Protocols)
		protocols.SetHTTP1(true)
		protocols.SetHTTP2(true)
		protocols.SetUnencryptedHTTP2(true) // plaintext gRPC on a PERMISSIVE port
		in.srv = &http.Server{
			Handler:           in,
			ReadHeaderTimeout: p.set.HeaderReadTimeout,
			IdleTimeout:       p.set.IdleTimeout,
			MaxHeaderBytes:    p.set.MaxHeaderBytes,
			Protocols:         protocols,
			ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
			ConnContext: func(ctx context.Context, c net.Conn) context.Context {
				return context.WithValue(ctx, connInfoKey, newConnInfo(c))
			},
		}
		backend := &url.URL{Scheme: "http", Host: l.Forward}
		tr := &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		}
		if l.H2C {
			tr.Protocols = new(http.Protocols)
			tr.Protocols.SetUnencryptedHTTP2(true)
		}
		if !l.H2C {
			dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
			in.fwd = &h1Forwarder{p: p, side: inboundH1{in}, dial: func(ctx context.Context) (net.Conn, error) {
				return dialer.DialContext(ctx, "tcp", l.Forward)
			}}
		}
		in.rp = &httputil.ReverseProxy{
			Rewrite:    func(pr *httputil.ProxyRequest) { in.rewrite(pr, backend) },
			Transport:  tr,
			BufferPool: httpx.BufferPool{},
			ErrorLog:   slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				if pb, ok := r.Context().Value(progressBodyKey).(*progressBody); ok && pb.err != nil {
					// The client stopped sending its body: its failure,
					// not the application's.
					status := clientBodyStatus(pb.err)
					w.Header().Set("Connection", "close")
					http.Error(w, http.StatusText(status), status)
					return
				}
				in.upstreamErrors.Inc()
				if !errors.Is(err, context.Canceled) {
					p.log.Warn("application unreachable", "listener", l.Name, "forward", l.Forward, "err", err)
				}
				http.Error(w, "upstream unavailable", http.StatusBadGateway)
			},
		}
	}
	return in
}

// serve accepts until the listener closes.
func (in *inbound) serve(ctx context.Context) error {
	if in.srv != nil {
		go func() { _ = in.srv.Serve(in.hl) }()
	}
	return acceptLoop(ctx, in.ln, in.p, "inbound", in.l.Name, in.handle)
}

// acceptLoop accepts connections within the proxy's connection limit:
// at the limit, an accepted connection waits for a slot (and the next
// ones wait in the kernel's accept queue). The slot is taken after
// Accept, so that a listener with nothing to accept holds none: several
// listeners share their direction's slots.
func acceptLoop(ctx context.Context, ln net.Listener, p *Proxy, direction, name string, handle func(context.Context, net.Conn)) error {
	for {
		c, err := ln.Accept()
		if err == nil && !p.acquireSlot(ctx, direction) {
			c.Close() // shutting down
			return nil
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		go handle(ctx, p.opened(c, direction, name))
	}
}

// handle sniffs the connection: a TLS ClientHello is handshaken; plaintext
// is served only where PeerAuthentication allows it (PERMISSIVE, DISABLE).
// A connection that sends nothing is closed after firstByteTimeout, so
// idle sockets cannot hold the slots of real clients for long.
func (in *inbound) handle(ctx context.Context, c net.Conn) {
	handedOff := false
	defer func() {
		if !handedOff {
			c.Close() // gives the slot back
		}
	}()
	deadline := time.Now().Add(in.p.set.HandshakeTimeout)
	_ = c.SetDeadline(time.Now().Add(min(firstByteTimeout, in.p.set.HandshakeTimeout)))
	first := make([]byte, 1)
	if _, err := io.ReadFull(c, first); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			in.p.metrics.handshakeErrors.WithLabelValues("timeout").Inc()
		}
		return
	}
	_ = c.SetDeadline(deadline)
	pc := &prefixConn{Conn: c, prefix: first}
	mode := in.p.engine.Set().MTLS(in.p.namespace, in.p.set.Labels, in.l.Port)
	var conn net.Conn
	if first[0] == 0x16 { // TLS handshake record
		if !mode.Mode.AllowsMTLS() {
			in.refuse(c, "tls_on_disabled_port", mode)
			return
		}
		tc := tls.Server(pc, in.tls)
		hctx, cancel := context.WithTimeout(ctx, in.p.set.HandshakeTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			reason := handshakeReason(err)
			in.p.metrics.handshakeErrors.WithLabelValues(reason).Inc()
			in.p.log.Info("TLS handshake refused", "listener", in.l.Name, "peer", c.RemoteAddr().String(), "reason", reason, "err", err)
			return
		}
		conn = tc
	} else {
		if !mode.Mode.AllowsPlaintext() {
			in.refuse(c, "plaintext_rejected", mode)
			return
		}
		conn = pc
	}
	_ = c.SetDeadline(time.Time{})
	if in.l.Protocol == ProtocolTCP {
		if !in.tcp.start() {
			return // shutting down
		}
		handedOff = true
		go func() {
			defer in.tcp.done()
			in.serveTCP(ctx, conn) // closes conn
		}()
		return
	}
	if tc, ok := conn.(*tls.Conn); ok && in.fwd != nil && tc.ConnectionState().NegotiatedProtocol != "h2" {
		handedOff = true
		br, lr, release := newH1Reader(conn)
		defer release()
		in.fwd.serve(ctx, conn, br, lr) // closes conn
		return
	}
	if in.hl.deliver(conn) {
		handedOff = true // the http.Server (or a handler that hijacks it) closes it
	}
}

func (in *inbound) refuse(c net.Conn, reason string, mode policy.MTLSDecision) {
	in.p.metrics.handshakeErrors.WithLabelValues(reason).Inc()
	in.p.log.Info("connection refused by PeerAuthentication", "listener", in.l.Name, "peer", c.RemoteAddr().String(),
		"reason", reason, "mode", string(mode.Mode), "policy", mode.Policy, "scope", mode.Scope)
}

// peerOf returns the verified peer SPIFFE ID of a TLS connection ("" for
// plaintext) and the leaf certificate.
func peerOf(cs *tls.ConnectionState) (string, []byte) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return "", nil
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return "", nil
	}
	return id.String(), cs.PeerCertificates[0].Raw
}

func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

type ctxKey int

// connInfoKey carries the *connInfo of the connection a request came on.
const connInfoKey ctxKey = 0

// connInfo is what every request on one connection shares, computed once
// when the http.Server takes the connection (after the TLS handshake): the
// verified peer, the addresses, and the X-Forwarded-Client-Cert value. A
// TLS 1.3 peer cannot change its certificate within a connection.
type connInfo struct {
	principal string // verified SPIFFE ID; "" for plaintext
	leafHash  string // hex SHA-256 of the peer's leaf certificate
	mtls      bool
	sni       string
	srcIP     netip.Addr
	srcIPText string
	dstIP     netip.Addr
	xfcc      atomic.Pointer[xfccValue]
}

// xfccValue is an X-Forwarded-Client-Cert value and the identity of ours
// (By=) it was built with.
type xfccValue struct{ self, value string }

func newConnInfo(c net.Conn) *connInfo {
	var cs *tls.ConnectionState
	if tc, ok := c.(*tls.Conn); ok {
		s := tc.ConnectionState()
		cs = &s
	}
	ci := &connInfo{mtls: cs != nil, srcIP: addrOf(c.RemoteAddr()), dstIP: addrOf(c.LocalAddr())}
	ci.srcIPText = ci.srcIP.String()
	if cs != nil {
		ci.sni = cs.ServerName
	}
	var leaf []byte
	ci.principal, leaf = peerOf(cs)
	if ci.principal != "" {
		sum := sha256.Sum256(leaf)
		ci.leafHash = hex.EncodeToString(sum[:])
	}
	return ci
}

// connInfoOf is r's connection's info, computed from r itself where the
// connection has none (a request not served by inbound.srv).
func connInfoOf(r *http.Request) *connInfo {
	if ci, ok := r.Context().Value(connInfoKey).(*connInfo); ok {
		return ci
	}
	ci := &connInfo{mtls: r.TLS != nil}
	if ra, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		ci.srcIP = ra.Addr().Unmap()
	}
	ci.srcIPText = ci.srcIP.String()
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		ci.dstIP = addrOf(la)
	}
	if r.TLS != nil {
		ci.sni = r.TLS.ServerName
	}
	var leaf []byte
	ci.principal, leaf = peerOf(r.TLS)
	if ci.principal != "" {
		sum := sha256.Sum256(leaf)
		ci.leafHash = hex.EncodeToString(sum[:])
	}
	return ci
}

// xfccFor is the X-Forwarded-Client-Cert value for a request forwarded by
// self: By=<self>;Hash=<leaf SHA-256>;URI=<peer>, built once per
// connection (again only if our own SPIFFE ID changed).
func (ci *connInfo) xfccFor(self string) string {
	if v := ci.xfcc.Load(); v != nil && v.self == self {
		return v.value
	}
	v := &xfccValue{self: self, value: "By=" + self + ";Hash=" + ci.leafHash + ";URI=" + ci.principal}
	ci.xfcc.Store(v)
	return v.value
}

// ServeHTTP authorizes one request that came over HTTP/2 or plaintext
// and forwards it if allowed (HTTP/1.1 over TLS takes h1.go's path).
func (in *inbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	in.p.audit.begin()
	defer in.p.audit.end()
	var rec accesslog.Record
	var pw *progressWriter
	if r.ProtoMajor == 1 {
		// As on h1.go's path: a body, and a response, may take their
		// time as long as they keep moving (idle_timeout between two
		// reads of the body, or for one write to the client), so a slow
		// client cannot hold its connection slot. (Not on HTTP/2: a gRPC
		// stream may rightly be quiet for long, and a stalled stream
		// holds no connection of its own.)
		rc := http.NewResponseController(w)
		if r.Body != nil && r.Body != http.NoBody {
			pb := &progressBody{ReadCloser: r.Body, rc: rc, timeout: in.p.set.IdleTimeout}
			// (ReverseProxy hands its error handler the body wrapped.)
			r = r.WithContext(context.WithValue(r.Context(), progressBodyKey, pb))
			r.Body = pb
		}
		pw = &progressWriter{ResponseWriter: w, rc: rc, timeout: in.p.set.IdleTimeout}
		pw.extend() // net/http leaves the last response's deadline in place
		w = pw
	}
	// As on the HTTP/1.1 path: the policy sees the request without its
	// hop-by-hop headers (httputil.ReverseProxy drops them again, harmlessly).
	httpx.RemoveHopHeaders(r.Header, isUpgrade(r.Header))
	if status, body := in.authorize(r.Context(), r, connInfoOf(r), &rec); status != 0 {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
		in.finish(&rec, status, start)
		return
	}
	sw := &httpx.StatusWriter{ResponseWriter: w}
	var rw http.ResponseWriter = sw
	if isUpgrade(r.Header) { // a WebSocket that ReverseProxy relays itself
		var release func()
		rw, r, release = tunnel.IdleAfterHijack(sw, r, in.p.set.TunnelIdleTimeout, &in.tunnels)
		defer release()
	}
	in.rp.ServeHTTP(rw, r)
	if pw != nil {
		// net/http writes what it buffered, and a chunked body's end,
		// after the handler returns: a stream that went quiet before it
		// ended must not find the deadline of its last write passed.
		pw.extend()
	}
	in.finish(&rec, sw.Code(), start)
}

// progressBody gives each read of a request body timeout.
type progressBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	err     error // the read that failed, other than EOF
}

type progressBodyKeyType struct{}

var progressBodyKey progressBodyKeyType

func (b *progressBody) Read(p []byte) (int, error) {
	_ = b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		// The body is over: net/http's server now reads the connection
		// in the background to notice the client leaving, and a deadline
		// left here would end that read and cancel the request while the
		// upstream takes its time.
		_ = b.rc.SetReadDeadline(time.Time{})
	case err != nil:
		b.err = err // (the deadline stays: nothing more is read from this client)
	}
	return n, err
}

// progressWriter gives each write of the response (head, body, flush)
// timeout, counted from when it starts.
type progressWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (w *progressWriter) extend() { _ = w.rc.SetWriteDeadline(time.Now().Add(w.timeout)) }

func (w *progressWriter) WriteHeader(code int) {
	w.extend()
	w.ResponseWriter.WriteHeader(code)
}

func (w *progressWriter) Write(p []byte) (int, error) {
	w.extend()
	return w.ResponseWriter.Write(p)
}

func (w *progressWriter) FlushError() error {
	w.extend()
	return w.rc.Flush()
}

func (w *progressWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// authorize decides r, filling rec: 0 when it is allowed (its path then
// normalized for the application), else the status and body to answer.
func (in *inbound) authorize(ctx context.Context, r *http.Request, ci *connInfo, rec *accesslog.Record) (status int, body string) {
	p := in.p
	principal := ci.principal
	reqID := ensureRequestID(r.Header)
	self := p.id.ID().String()
	// The policy sees the identity headers the application will get (as
	// Envoy's RBAC filter sees the X-Forwarded-Client-Cert its connection
	// manager set), never the ones the client sent: a rule on
	// request.headers[x-forwarded-client-cert] must not match a forgery.
	setIdentityHeaders(r.Header, p.set.StripHeaders, ci, self)
	pin := policy.Input{
		Source:      policy.Peer{Principal: principal, IP: ci.srcIP},
		Destination: policy.Destination{Principal: self, Namespace: p.namespace, Labels: p.set.Labels, Port: in.l.Port, IP: ci.dstIP},
		Request:     &policy.Request{Method: r.Method, Path: r.RequestURI, Host: r.Host, Headers: r.Header},
		Connection:  policy.Connection{MTLS: ci.mtls, SNI: ci.sni},
	}
	set := p.engine.Set()
	d := set.Evaluate(ctx, &pin)
	if !d.Allow {
		d = set.Explain(ctx, &pin) // the full reason, for the audit log
	}
	*rec = accesslog.Record{
		RequestID: reqID, Direction: "inbound", Listener: in.l.Name, Protocol: ProtocolHTTP,
		SourcePrincipal: principal, SourceIP: ci.srcIPText, Destination: self, DestinationPort: in.l.Port,
		Method: r.Method, Path: r.RequestURI, Host: r.Host, MTLS: ci.mtls, Authenticated: principal != "",
	}
	fillDecision(rec, d)
	// An upgrade other than WebSocket would be a tunnel past per-request
	// authorization (h2c is dropped and the request served as HTTP/1.1).
	upgradeErr := httpx.CheckUpgrade(r.Header)
	if d.Allow && upgradeErr != nil {
		rec.Decision, rec.Reason = "deny", upgradeErr.Error()
	}
	if !d.Allow || upgradeErr != nil {
		if d.Err != nil && policy.IsPathError(d.Err) || upgradeErr != nil {
			return http.StatusBadRequest, "Bad Request"
		}
		return http.StatusForbidden, "RBAC: access denied"
	}
	// Forward the path the policy matched, so the application sees what was
	// authorized. The escaped form is kept (reserved characters stay
	// encoded); RawPath carries it.
	if np, err := policy.NormalizePath(r.RequestURI); err == nil && np != "*" {
		if unescaped, err := url.PathUnescape(np); err == nil {
			r.URL.Path, r.URL.RawPath = unescaped, np
		}
	}
	return 0, ""
}

// ensureRequestID keeps a valid X-Request-Id and replaces anything else
// (none, several, or an invalid one) with a new one; it returns the ID.
func ensureRequestID(h http.Header) string {
	if v := h["X-Request-Id"]; len(v) == 1 && validRequestID(v[0]) {
		return v[0]
	} else if len(v) > 1 && validRequestID(v[0]) {
		h["X-Request-Id"] = v[:1] // the first, as Header.Get reads it
		return v[0]
	}
	id := newRequestID()
	h["X-Request-Id"] = []string{id}
	return id
}

func (in *inbound) finish(rec *accesslog.Record, status int, start time.Time) {
	elapsed := time.Since(start)
	rec.Status = status
	rec.LatencyMS = float64(elapsed.Microseconds()) / 1000
	in.p.audit.write(rec)
	in.p.metrics.request(rec.SourcePrincipal, rec.Destination, status, rec.Decision).Inc()
	in.duration.Observe(elapsed.Seconds())
}

func fillDecision(rec *accesslog.Record, d policy.Decision) {
	rec.Decision = "deny"
	if d.Allow {
		rec.Decision = "allow"
	}
	rec.Action = d.Action.String()
	if d.Policy != "" {
		p := d.Policy
		rec.Policy = &p
	}
	if d.Rule >= 0 {
		r := d.Rule
		rec.Rule = &r
	}
	rec.Reason = d.Reason
	for _, dr := range d.DryRun {
		if dr.Matched {
			rec.DryRun = append(rec.DryRun, dr.Policy)
		}
	}
	rec.Audit = d.Audit
}

// rewrite prepares the request for the application: identity headers the
// client sent are removed, then ours are set.
func (in *inbound) rewrite(pr *httputil.ProxyRequest, backend *url.URL) {
	pr.SetURL(backend)
	pr.Out.Host = pr.In.Host
	pr.SetXForwarded()
	// (authorize has set the identity headers on In, which Out copies.)
	// Request trailers are not forwarded, as Envoy does not by default:
	// they would carry identity headers past authorize's stripping.
	pr.Out.Trailer = nil
}

// setIdentityHeaders removes the identity headers the client sent and
// sets X-Forwarded-Client-Cert for a verified peer.
func setIdentityHeaders(h http.Header, strip []string, ci *connInfo, self string) {
	stripIdentityHeaders(h, strip)
	if ci.principal != "" {
		h["X-Forwarded-Client-Cert"] = []string{ci.xfccFor(self)}
	}
}

// stripIdentityHeaders removes X-Trustmesh-* and the configured headers
// (which always include X-Forwarded-Client-Cert).
// Names are compared as a backend mapping '_' to '-' would read them, so
// X_Forwarded_Client_Cert goes too.
func stripIdentityHeaders(h http.Header, strip []string) {
	for k := range h {
		if name := httpx.CanonicalName(k); strings.HasPrefix(name, "X-Trustmesh-") || slices.Contains(strip, name) {
			delete(h, k)
		}
	}
}

// validRequestID accepts the IDs proxies and tracers generate (UUIDs,
// hex, base64url): 1 to 128 of [A-Za-z0-9._-].
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

// serveTCP authorizes a connection (L4 policy) and pipes it to the
// application.
func (in *inbound) serveTCP(ctx context.Context, conn net.Conn) {
	start := time.Now()
	p := in.p
	defer in.tcp.track(conn)()
	defer conn.Close()
	var cs *tls.ConnectionState
	if tc, ok := conn.(*tls.Conn); ok {
		s := tc.ConnectionState()
		cs = &s
	}
	principal, _ := peerOf(cs)
	self := p.id.ID().String()
	pin := policy.Input{
		Source:      policy.Peer{Principal: principal, IP: addrOf(conn.RemoteAddr())},
		Destination: policy.Destination{Principal: self, Namespace: p.namespace, Labels: p.set.Labels, Port: in.l.Port, IP: addrOf(conn.LocalAddr())},
		Connection:  policy.Connection{MTLS: cs != nil},
	}
	if cs != nil {
		pin.Connection.SNI = cs.ServerName
	}
	d := p.engine.Set().Explain(ctx, &pin)
	rec := &accesslog.Record{
		RequestID: newRequestID(), Direction: "inbound", Listener: in.l.Name, Protocol: ProtocolTCP,
		SourcePrincipal: principal, SourceIP: pin.Source.IP.String(), Destination: self, DestinationPort: in.l.Port,
		MTLS: cs != nil, Authenticated: principal != "",
	}
	fillDecision(rec, d)
	code := 0
	if !d.Allow {
		code = http.StatusForbidden
	}
	p.metrics.request(principal, self, code, rec.Decision).Inc()
	if !d.Allow {
		rec.LatencyMS = float64(time.Since(start).Microseconds()) / 1000
		p.audit.write(rec)
		return
	}
	var d2 net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	app, err := d2.DialContext(dctx, "tcp", in.l.Forward)
	cancel()
	rec.LatencyMS = float64(time.Since(start).Microseconds()) / 1000
	p.audit.write(rec)
	if err != nil {
		in.upstreamErrors.Inc()
		p.log.Warn("application unreachable", "listener", in.l.Name, "forward", in.l.Forward, "err", err)
		return
	}
	// Both ends tracked: at the drain deadline the client's is closed,
	// and an application that does not close on EOF must not hold the
	// shutdown until tunnel_idle_timeout.
	defer in.tcp.track(app)()
	tunnel.Pipe(conn, app, in.p.set.TunnelIdleTimeout)
	in.duration.Observe(time.Since(start).Seconds())
}

// shutdown stops accepting, lets in-flight requests and connections finish
// until ctx ends, then closes what is left.
func (in *inbound) shutdown(ctx context.Context) {
	in.ln.Close()
	if in.srv != nil {
		in.hl.Close()
		var wg sync.WaitGroup
		if in.fwd != nil {
			wg.Add(1)
			go func() { defer wg.Done(); in.fwd.shutdown(ctx) }()
		}
		wg.Add(1)
		go func() { defer wg.Done(); in.tunnels.Drain(ctx) }()
		_ = in.srv.Shutdown(ctx)
		wg.Wait()
	}
	in.tcp.drain(ctx)
}

// inboundH1 is the inbound side of the HTTP/1.1 path (h1.go).
type inboundH1 struct{ in *inbound }

func (s inboundH1) prepare(x *h1Exchange) (int, string) {
	s.in.p.audit.begin()
	r := x.req
	if status, body := s.in.authorize(x.ctx, r, x.ci, &x.rec); status != 0 {
		return status, body
	}
	s.in.forwardHeaders(r.Header, r.Host, x.ci)
	return 0, ""
}

func (s inboundH1) finish(x *h1Exchange, status int) {
	s.in.finish(&x.rec, status, x.start)
	s.in.p.audit.end()
}

func (s inboundH1) upstreamFailed(err error) {
	s.in.upstreamErrors.Inc()
	if !errors.Is(err, context.Canceled) {
		s.in.p.log.Warn("application unreachable", "listener", s.in.l.Name, "forward", s.in.l.Forward, "err", err)
	}
}

// forwardHeaders is rewrite's header work for the HTTP/1.1 path, as
// httputil.ReverseProxy with SetXForwarded does it: the client's
// Forwarded and X-Forwarded-* replaced by ours. (The identity headers
// authorize has set.)
func (in *inbound) forwardHeaders(h http.Header, host string, ci *connInfo) {
	for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		delete(h, k)
	}
	if ci.srcIP.IsValid() {
		h["X-Forwarded-For"] = []string{ci.srcIPText}
	}
	h["X-Forwarded-Host"] = []string{host}
	if ci.mtls {
		h["X-Forwarded-Proto"] = []string{"https"}
	} else {
		h["X-Forwarded-Proto"] = []string{"http"}
	}
}
