package gateway

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/trustmesh/trustmesh/internal/gateway/bearer"
)

// metrics are the gateway's Prometheus metrics; each gateway owns its
// registry.
type metrics struct {
	registry        *prometheus.Registry
	requests        *prometheus.CounterVec   // route, mode, outcome
	duration        *prometheus.HistogramVec // route, mode
	logins          *prometheus.CounterVec   // provider, outcome
	logouts         *prometheus.CounterVec   // provider
	tokenRejections *prometheus.CounterVec   // reason
	refreshes       *prometheus.CounterVec   // provider, result
	upstreamErrors  *prometheus.CounterVec   // route
}

func newMetrics(auditFailures func() uint64) *metrics {
	r := prometheus.NewRegistry()
	m := &metrics{
		registry: r,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustmesh_gateway_requests_total",
			Help: "Requests decided by the gateway, by route, mode (proxy, forward_auth) and outcome (allow, deny, unauthenticated, no_route).",
		}, []string{"route", "mode", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "trustmesh_gateway_request_duration_seconds",
			Help:    "Time from request to response through the gateway, by route and mode.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route", "mode"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustmesh_gateway_logins_total",
			Help: "OIDC logins, by identity provider and outcome (success, or why they failed).",
		}, []string{"provider", "outcome"}),
		logouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustmesh_gateway_logouts_total",
			Help: "Sign-outs, by identity provider.",
		}, []string{"provider"}),
		tokenRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustmesh_gateway_token_rejections_total",
			Help: "Bearer tokens rejected, by reason.",
		}, []string{"reason"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustmesh_gateway_session_refreshes_total",
			Help: "Session token refreshes, by identity provider and result (ok, error, revoked).",
		}, []string{"provider", "result"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustmesh_gateway_upstream_errors_total",
			Help: "Allowed requests that could not reach the route's upstream, by route.",
		}, []string{"route"}),
	}
	for _, reason := range bearer.Reasons {
		m.tokenRejections.WithLabelValues(string(reason))
	}
	m.tokenRejections.WithLabelValues("not_accepted_on_route")
	r.MustRegister(m.requests, m.duration, m.logins, m.logouts, m.tokenRejections, m.refreshes, m.upstreamErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "trustmesh_audit_write_failures_total",
			Help: "Decision records that could not be written to the audit log.",
		}, func() float64 { return float64(auditFailures()) }))
	return m
}
