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
)

// outbound is a local plaintext listener for the application: the proxy
// originates mTLS with its SVID to the upstream proxy and accepts only the
// upstream SPIFFE IDs configured. HTTP connections to each upstream are
// pooled (keep-alive, HTTP/2).
type outbound struct {
	p  *Proxy
	l  Listener
	ln net.Listener

	srv *http.Server
	tr  *http.Transport

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
	o.tr = &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     o.tlsConf,
		TLSHandshakeTimeout: p.set.HandshakeTimeout,
		ForceAttemptHTTP2:   true,
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
		Transport:  o.tr,
		BufferPool: bufferPool{},
		ErrorLog:   slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			o.upstreamFailed(err)
			http.Error(w, "upstream unavailable", http.StatusBadGateway)
		},
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true) // gRPC clients speak h2c to the local listener
	o.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
		defer o.p.releaseConn("outbound", o.l.Name)
		o.serveTCP(ctx, c)
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
		o.tr.CloseIdleConnections()
		return
	}
	o.ln.Close()
	o.tcp.drain(ctx)
}
