package dev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"path/filepath"
	"sort"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/trustmesh/trustmesh/internal/apiclient"
)

// ErrNotRunning means no dev mesh is running in a data dir.
var ErrNotRunning = errors.New("no dev mesh is running")

// Status is `trustmesh dev status`.
type Status struct {
	State    *State          `json:"state"`
	Services []ServiceReport `json:"services"`
	Edges    []EdgeReport    `json:"edges"`
}

// ServiceReport is a workload's identity as its sidecar holds it.
type ServiceReport struct {
	Name       string    `json:"name"`
	SPIFFEID   string    `json:"spiffe_id"`
	SVIDExpiry time.Time `json:"svid_expiry"`
	Up         bool      `json:"up"`
}

// EdgeReport counts decisions from one service to another.
type EdgeReport struct {
	From    string `json:"from"`
	To      string `json:"to"`
	Allowed int    `json:"allowed"`
	Denied  int    `json:"denied"`
}

// GetStatus reads a running mesh's state and asks its sidecars (their
// metrics) for SVID expiry and request counts per edge.
func GetStatus(ctx context.Context, dataDir string) (*Status, error) {
	if dataDir == "" {
		dataDir = DefaultDataDir
	}
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, err
	}
	st, err := ReadState(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s", ErrNotRunning, dir)
	}
	if err != nil {
		return nil, err
	}
	if !processAlive(st.PID) {
		return nil, fmt.Errorf("%w in %s (its process %d is gone)", ErrNotRunning, dir, st.PID)
	}
	admin := apiclient.NewSocket(st.AdminSocket)
	defer admin.Close()
	hctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := admin.Health(hctx); err != nil {
		return nil, fmt.Errorf("%w in %s: its server does not answer: %v", ErrNotRunning, dir, err)
	}
	out := &Status{State: st}
	edges := map[[2]string]*EdgeReport{}
	client := &http.Client{Timeout: 3 * time.Second}
	for _, s := range st.Services {
		r := ServiceReport{Name: s.Name, SPIFFEID: s.SPIFFEID}
		families, err := scrape(ctx, client, s.Metrics)
		if err == nil {
			r.Up = true
			if f := families["trustmesh_svid_expiry_timestamp_seconds"]; f != nil && len(f.GetMetric()) > 0 {
				r.SVIDExpiry = time.Unix(int64(f.GetMetric()[0].GetGauge().GetValue()), 0).UTC()
			}
			if f := families["trustmesh_requests_total"]; f != nil {
				for _, m := range f.GetMetric() {
					labels := map[string]string{}
					for _, lp := range m.GetLabel() {
						labels[lp.GetName()] = lp.GetValue()
					}
					key := [2]string{shortName(labels["source_principal"]), shortName(labels["destination_principal"])}
					e := edges[key]
					if e == nil {
						e = &EdgeReport{From: key[0], To: key[1]}
						edges[key] = e
					}
					n := int(m.GetCounter().GetValue())
					if labels["decision"] == "allow" {
						e.Allowed += n
					} else {
						e.Denied += n
					}
				}
			}
		}
		out.Services = append(out.Services, r)
	}
	for _, e := range edges {
		out.Edges = append(out.Edges, *e)
	}
	sort.Slice(out.Edges, func(i, j int) bool {
		if out.Edges[i].From != out.Edges[j].From {
			return out.Edges[i].From < out.Edges[j].From
		}
		return out.Edges[i].To < out.Edges[j].To
	})
	return out, nil
}

func scrape(ctx context.Context, c *http.Client, addr string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(io.LimitReader(resp.Body, 8<<20))
}

// Print writes the status as text.
func (s *Status) Print(w io.Writer) {
	st := s.State
	fmt.Fprintf(w, "dev mesh running in %s (pid %d, up %s)\n", st.DataDir, st.PID, time.Since(st.Started).Round(time.Second))
	fmt.Fprintf(w, "  admin socket  %s\n  workload API  %s\n  ingress       http://%s\n  policies      %s\n  audit log     %s\n\n",
		st.AdminSocket, st.AgentSocket, st.Ingress, st.Policies, st.AuditLog)
	if len(s.Services) > 0 {
		fmt.Fprintf(w, "  %-9s %-45s %s\n", "SERVICE", "IDENTITY", "SVID EXPIRES")
		for _, r := range s.Services {
			exp := "unreachable"
			if r.Up {
				exp = r.SVIDExpiry.Format(time.RFC3339) + " (in " + time.Until(r.SVIDExpiry).Round(time.Second).String() + ")"
			}
			fmt.Fprintf(w, "  %-9s %-45s %s\n", r.Name, r.SPIFFEID, exp)
		}
	}
	if len(s.Edges) > 0 {
		fmt.Fprintf(w, "\n  %-24s %8s %8s\n", "EDGE", "ALLOWED", "DENIED")
		for _, e := range s.Edges {
			fmt.Fprintf(w, "  %-24s %8d %8d\n", e.From+" → "+e.To, e.Allowed, e.Denied)
		}
	}

}
