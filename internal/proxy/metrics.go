package proxy

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the proxy's Prometheus metrics; each proxy owns its registry.
type metrics struct {
	registry        *prometheus.Registry
	requests        *prometheus.CounterVec   // source_principal, destination_principal, response_code, decision
	duration        *prometheus.HistogramVec // direction, listener
	handshakeErrors *prometheus.CounterVec   // reason
	connections     *prometheus.GaugeVec     // direction, listener
	policyReloads   *prometheus.CounterVec   // result
	upstreamErrors  *prometheus.CounterVec   // listener

	requestCounters sync.Map // requestLabels → prometheus.Counter
}

// requestLabels are trustmesh_requests_total's labels.
type requestLabels struct {
	source, destination string
	code                int
	decision            string
}

// request is trustmesh_requests_total's child for these labels, looked up
// in the vector once per distinct label set: a request's cost is a map
// lookup, not the vector's label hashing and validation.
func (m *metrics) request(source, destination string, code int, decision string) prometheus.Counter {
	k := requestLabels{source, destination, code, decision}
	if c, ok := m.requestCounters.Load(k); ok {
		return c.(prometheus.Counter)
	}
	c := m.requests.WithLabelValues(source, destination, strconv.Itoa(code), decision)
	m.requestCounters.Store(k, c)
	return c
}

func newMetrics(svidExpiry func() time.Time, auditFailures func() uint64) *metrics {
	r := prometheus.NewRegistry()
	m := &metrics{
		registry: r,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustmesh_requests_total",
			Help: "Inbound requests (HTTP) and connections (TCP) decided, by source and destination SPIFFE ID, response code and decision (allow, deny).",
		}, []string{"source_principal", "destination_principal", "response_code", "decision"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "trustmesh_request_duration_seconds",
			Help:    "Time from request to response through the proxy, by direction (inbound, outbound) and listener.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"direction", "listener"}),
		handshakeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustmesh_tls_handshake_errors_total",
			Help: "Connections refused before any request: failed TLS handshakes and plaintext on a STRICT port, by reason.",
		}, []string{"reason"}),
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "trustmesh_active_connections",
			Help: "Open client connections, by direction and listener.",
		}, []string{"direction", "listener"}),
		policyReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustmesh_policy_reloads_total",
			Help: "Policy reloads after a file change, by result (ok, error: the previous policy stays).",
		}, []string{"result"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustmesh_upstream_errors_total",
			Help: "Requests and connections that could not reach the application or upstream proxy, by listener.",
		}, []string{"listener"}),
	}
	r.MustRegister(m.requests, m.duration, m.handshakeErrors, m.connections, m.policyReloads, m.upstreamErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "trustmesh_svid_expiry_timestamp_seconds",
			Help: "Unix time at which the proxy's current X.509-SVID expires.",
		}, func() float64 {
			t := svidExpiry()
			if t.IsZero() {
				return 0
			}
			return float64(t.Unix())
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "trustmesh_audit_write_failures_total",
			Help: "Decision records that could not be written to the audit log.",
		}, func() float64 { return float64(auditFailures()) }),
	)
	return m
}
