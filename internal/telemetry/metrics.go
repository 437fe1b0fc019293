// Package telemetry defines the control plane's Prometheus metrics and
// serves them. Each server owns its registry (no global state), so tests
// can run several servers in one process.
package telemetry

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ServerMetrics are the control plane's metrics.
type ServerMetrics struct {
	Registry    *prometheus.Registry
	SVIDsIssued *prometheus.CounterVec   // type=x509|jwt, caller=agent|admin|server
	APILatency  *prometheus.HistogramVec // api=admin|agent, operation, code
	Denials     *prometheus.CounterVec   // api, operation
}

// NewServerMetrics registers the metrics. caExpiry reports the active X.509
// CA's and JWT key's expiry (zero time when none); auditFailures the number
// of audit records that could not be written.
func NewServerMetrics(caExpiry func() (x509NotAfter, jwtNotAfter time.Time), auditFailures func() uint64) *ServerMetrics {
	r := prometheus.NewRegistry()
	m := &ServerMetrics{
		Registry: r,
		SVIDsIssued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustmesh_svids_issued_total",
			Help: "SVIDs signed, by type (x509, jwt) and caller (agent, admin, server).",
		}, []string{"type", "caller"}),
		APILatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "trustmesh_api_request_duration_seconds",
			Help:    "Latency of control-plane API requests, by API (admin, agent), operation and HTTP status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"api", "operation", "code"}),
		Denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustmesh_api_denials_total",
			Help: "Requests refused for lack of authentication or authorization.",
		}, []string{"api", "operation"}),
	}
	r.MustRegister(m.SVIDsIssued, m.APILatency, m.Denials,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "trustmesh_audit_write_failures_total",
		Help: "Audit records that could not be written.",
	}, func() float64 { return float64(auditFailures()) }))
	for _, kind := range []string{"x509", "jwt"} {
		kind := kind
		r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "trustmesh_ca_expiry_timestamp_seconds",
			Help:        "Unix time at which the active authority (X.509 CA or JWT key) expires.",
			ConstLabels: prometheus.Labels{"type": kind},
		}, func() float64 {
			x, j := caExpiry()
			t := x
			if kind == "jwt" {
				t = j
			}
			if t.IsZero() {
				return 0
			}
			return float64(t.Unix())
		}))
	}
	return m
}

// Serve exposes /metrics on ln until ctx ends.
func Serve(ctx context.Context, ln net.Listener, reg *prometheus.Registry) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
