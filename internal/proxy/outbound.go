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
)

// outbound is a local plaintext listener for the application: the proxy
// originates mTLS with its SVID to the upstream proxy and accepts only the
// upstream SPIFFE IDs configured. HTTP connections to each upstream are
// pooled: HTTP/1.1 keep-alive for HTTP/1.x requests, HTTP/2 for HTTP/2.
type outbound struct {
	p  *Proxy
	l  Listener
	ln net.Listener

	srv *http.Server
	tr1 *http.Transport // HTTP/1.1 to the upstream, for HTTP/1.x requests
	tr2 *http.Transport // HTTP/2, for HTTP/2 requests

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
	// HTTP/1.x requests go to the upstream over pooled HTTP/1.1
	// connections (keep-alive, one request at a time each, as the
	// application sent them); requests that arrive as HTTP/2 (gRPC) over
	// pooled HTTP/2 connections. One multiplexed HTTP/2 connection for
	// everything costs more per request in Go's HTTP/2 (a goroutine per
	// stream on each side, HPACK, a write per frame): see docs/proxy.md.
	newTransport := func(protocols *http.Protocols) *http.Transport {
		return &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:     o.tlsConf,
			TLSHandshakeTimeout: p.set.HandshakeTimeout,
			Protocols:           protocols,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		}
	}
	h1, h2 := new(http.Protocols), new(http.Protocols)
	h1.SetHTTP1(true)
	h2.SetHTTP2(true)
	o.tr1, o.tr2 = newTransport(h1), newTransport(h2)
	upstream := &url.URL{Scheme: "https", Host: l.Upstream}
	newReverseProxy := func(tr http.RoundTripper) *httputil.ReverseProxy {
		return &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(upstream)
				pr.Out.Host = pr.In.Host
				if v := pr.Out.Header["X-Request-Id"]; len(v) == 0 || !validRequestID(v[0]) {
					pr.Out.Header["X-Request-Id"] = []string{newRequestID()}
				}
			},
			Transport:  tr,
			BufferPool: httpx.BufferPool{},
			ErrorLog:   slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				o.upstreamFailed(err)
				http.Error(w, "upstream unavailable", http.StatusBadGateway)
			},
		}
	}
	rp1, rp2 := newReverseProxy(o.tr1), newReverseProxy(o.tr2)
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true) // gRPC clients speak h2c to the local listener
	o.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			if r.ProtoMajor == 2 {
				rp2.ServeHTTP(w, r)
			} else {
				rp1.ServeHTTP(w, r)
			}
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
		err := o.srv.Serve(&limitListener{Listener: o.ln, p: o.p, direction: "outbound", name: o.l.Name, ctx: ctx})
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
	return acceptLoop(ctx, o.ln, o.p, "outbound", o.l.Name, func(ctx context.Context, c net.Conn) {
		o.tcp.start()
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
	pipe(c, up)
	o.duration.Observe(time.Since(start).Seconds())
}

func (o *outbound) shutdown(ctx context.Context) {
	if o.srv != nil {
		_ = o.srv.Shutdown(ctx)
		o.tr1.CloseIdleConnections()
		o.tr2.CloseIdleConnections()
		return
	}
	o.ln.Close()
	o.tcp.drain(ctx)
}
