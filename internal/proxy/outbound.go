package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustmesh/trustmesh/internal/httpx"
	"github.com/trustmesh/trustmesh/internal/tunnel"
)

// outbound is a local plaintext listener for the application: the proxy
// originates mTLS with its SVID to the upstream proxy and accepts only the
// upstream SPIFFE IDs configured. HTTP/1.x takes h1.go's path over pooled
// HTTP/1.1 connections (one request at a time each, as the application
// sent them); h2c (gRPC) goes through net/http over pooled HTTP/2
// connections.
type outbound struct {
	p  *Proxy
	l  Listener
	ln net.Listener

	fwd *h1Forwarder
	hl  *chanListener   // h2c connections, for srv
	srv *http.Server    // HTTP/2 (h2c) from the application
	tr2 *http.Transport // HTTP/2 to the upstream, for srv

	tlsConf *tls.Config
	tcp     tcpConns

	duration       prometheus.Observer // this listener's request_duration_seconds
	upstreamErrors prometheus.Counter
}

func (p *Proxy) newOutbound(l Listener, ln net.Listener) *outbound {
	host, _, _ := net.SplitHostPort(l.Upstream)
	o := &outbound{p: p, l: l, ln: ln}
	o.duration = p.metrics.duration.WithLabelValues("outbound", l.Name)
	o.upstreamErrors = p.metrics.upstreamErrors.WithLabelValues(l.Name)
	o.tlsConf = p.id.clientTLS(l.SPIFFEIDs, host)
	if l.Protocol != ProtocolHTTP {
		return o
	}
	// HTTP/1.x: one pooled HTTP/1.1 mTLS connection per request in flight.
	// (One multiplexed HTTP/2 connection for everything costs more per
	// request in Go's HTTP/2: a goroutine per stream on each side, HPACK, a
	// write per frame.)
	h1TLS := o.tlsConf.Clone()
	h1TLS.NextProtos = []string{"http/1.1"}
	dialer := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}, Config: h1TLS}
	o.fwd = &h1Forwarder{p: p, side: outboundH1{o}, dial: func(ctx context.Context) (net.Conn, error) {
		dctx, cancel := context.WithTimeout(ctx, p.set.HandshakeTimeout)
		defer cancel()
		return dialer.DialContext(dctx, "tcp", l.Upstream)
	}}
	// HTTP/2 (h2c from gRPC clients) over pooled HTTP/2 connections.
	h2 := new(http.Protocols)
	h2.SetHTTP2(true)
	o.tr2 = &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     o.tlsConf,
		TLSHandshakeTimeout: p.set.HandshakeTimeout,
		Protocols:           h2,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	upstream := &url.URL{Scheme: "https", Host: l.Upstream}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(upstream)
			pr.Out.Host = pr.In.Host
			if v := pr.Out.Header["X-Request-Id"]; len(v) == 0 || !validRequestID(v[0]) {
				pr.Out.Header["X-Request-Id"] = []string{newRequestID()}
			}
		},
		Transport:  o.tr2,
		BufferPool: httpx.BufferPool{},
		ErrorLog:   slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			o.upstreamFailed(err)
			http.Error(w, "upstream unavailable", http.StatusBadGateway)
		},
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true) // gRPC clients speak h2c to the local listener
	o.hl = newChanListener(ln.Addr())
	o.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// (Only h2c prior-knowledge connections come here, h1.go
			// serves HTTP/1.x: no WebSocket tunnel to watch.)
			start := time.Now()
			rp.ServeHTTP(w, r)
			o.duration.Observe(time.Since(start).Seconds())
		}),
		ReadHeaderTimeout: p.set.HeaderReadTimeout,
		IdleTimeout:       p.set.IdleTimeout,
		MaxHeaderBytes:    p.set.MaxHeaderBytes,
		Protocols:         protocols,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	return o
}

// handleHTTP takes one application connection: the HTTP/2 connection
// preface (h2c with prior knowledge, as gRPC sends it) goes to srv,
// anything else is HTTP/1.x for the fast path.
func (o *outbound) handleHTTP(ctx context.Context, c net.Conn) {
	br, lr, release := newH1Reader(c)
	_ = c.SetReadDeadline(time.Now().Add(min(firstByteTimeout, o.p.set.HeaderReadTimeout)))
	head, err := br.Peek(len("PRI "))
	if err != nil {
		release()
		c.Close()
		return
	}
	if string(head) == "PRI " { // "PRI * HTTP/2.0": no HTTP/1 method is PRI
		buffered, _ := br.Peek(br.Buffered())
		pc := &prefixConn{Conn: c, prefix: append([]byte(nil), buffered...)}
		release()
		_ = c.SetReadDeadline(time.Time{})
		if !o.hl.deliver(pc) {
			c.Close()
		}
		return
	}
	defer release()
	o.fwd.serve(ctx, c, br, lr) // closes c
}

// outboundH1 is the outbound side of the HTTP/1.1 path: the request goes
// on with a request ID, without X-Forwarded-* (the inbound side sets
// them).
type outboundH1 struct{ o *outbound }

func (s outboundH1) prepare(x *h1Exchange) (int, string) {
	h := x.req.Header
	// Only a WebSocket upgrade is relayed (an h2c one is dropped): the
	// tunnel after it is what the upstream's policy decided.
	if httpx.CheckUpgrade(h) != nil {
		return http.StatusBadRequest, "Bad Request"
	}
	for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		delete(h, k)
	}
	if v := h["X-Request-Id"]; len(v) == 0 || !validRequestID(v[0]) {
		h["X-Request-Id"] = []string{newRequestID()}
	}
	return 0, ""
}

func (s outboundH1) finish(x *h1Exchange, _ int) {
	s.o.duration.Observe(time.Since(x.start).Seconds())
}

func (s outboundH1) upstreamFailed(err error) { s.o.upstreamFailed(err) }

func (o *outbound) upstreamFailed(err error) {
	o.upstreamErrors.Inc()
	var pe *peerError
	if errors.As(err, &pe) {
		o.p.metrics.handshakeErrors.WithLabelValues("upstream_" + pe.reason).Inc()
		o.p.log.Warn("upstream identity refused", "listener", o.l.Name, "upstream", o.l.Upstream, "err", err)
		return
	}
	if !errors.Is(err, context.Canceled) {
		o.p.log.Warn("upstream unreachable", "listener", o.l.Name, "upstream", o.l.Upstream, "err", err)
	}
}

func (o *outbound) serve(ctx context.Context) error {
	if o.srv != nil {
		go func() { _ = o.srv.Serve(o.hl) }()
		return acceptLoop(ctx, o.ln, o.p, "outbound", o.l.Name, o.handleHTTP)
	}
	return acceptLoop(ctx, o.ln, o.p, "outbound", o.l.Name, func(ctx context.Context, c net.Conn) {
		if !o.tcp.start() {
			c.Close() // shutting down; gives the slot back
			return
		}
		defer o.tcp.done()
		o.serveTCP(ctx, c) // closes c, which gives its slot back
	})
}

func (o *outbound) serveTCP(ctx context.Context, c net.Conn) {
	defer c.Close()
	defer o.tcp.track(c)()
	start := time.Now()
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: o.tlsConf}
	dctx, cancel := context.WithTimeout(ctx, o.p.set.HandshakeTimeout)
	up, err := d.DialContext(dctx, "tcp", o.l.Upstream)
	cancel()
	if err != nil {
		o.upstreamFailed(err)
		return
	}
	defer o.tcp.track(up)()
	tunnel.Pipe(c, up, o.p.set.TunnelIdleTimeout)
	o.duration.Observe(time.Since(start).Seconds())
}

func (o *outbound) shutdown(ctx context.Context) {
	o.ln.Close()
	if o.srv != nil {
		o.hl.Close()
		done := make(chan struct{})
		go func() { defer close(done); o.fwd.shutdown(ctx) }()
		_ = o.srv.Shutdown(ctx)
		o.tr2.CloseIdleConnections()
		<-done
		return
	}
	o.tcp.drain(ctx)
}
