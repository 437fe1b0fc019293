package agent

import "github.com/prometheus/client_golang/prometheus"

// agentMetrics are the agent's Prometheus metrics, on its own registry.
type agentMetrics struct {
	registry  *prometheus.Registry
	degraded  prometheus.Gauge
	entries   prometheus.Gauge
	svids     prometheus.Gauge
	rotations prometheus.Counter
	syncs     *prometheus.CounterVec
	requests  *prometheus.CounterVec
	streams   *prometheus.GaugeVec
}

func newAgentMetrics() *agentMetrics {
	m := &agentMetrics{
		registry: prometheus.NewRegistry(),
		degraded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trustmesh_agent_degraded",
			Help: "1 while the agent cannot reach the server and serves cached SVIDs, else 0.",
		}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trustmesh_agent_entries",
			Help: "Registration entries this agent is authorized for.",
		}),
		svids: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trustmesh_agent_svids_cached",
			Help: "X.509-SVIDs held in the cache.",
		}),
		rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trustmesh_agent_svid_rotations_total",
			Help: "X.509-SVIDs replaced by fresh ones (rotation or entry change).",
		}),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustmesh_agent_syncs_total",
			Help: "State updates applied, by source (watch, resync).",
		}, []string{"source"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustmesh_agent_workload_requests_total",
			Help: "Workload API and SDS calls, by method and gRPC code.",
		}, []string{"method", "code"}),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "trustmesh_agent_workload_streams",
			Help: "Open Workload API and SDS streams, by method.",
		}, []string{"method"}),
	}
	m.registry.MustRegister(m.degraded, m.entries, m.svids, m.rotations, m.syncs, m.requests, m.streams)
	return m
}
