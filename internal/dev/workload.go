package dev

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/trustmesh/trustmesh/internal/proxy"
)

// readyEvent is the line a workload prints on stdout once its sidecar has
// an SVID and listens; the parent waits for it. Audit lines share stdout.
type readyEvent struct {
	Event    string `json:"event"` // workload_ready
	Service  string `json:"service"`
	SPIFFEID string `json:"spiffe_id"`
}

// RunWorkload is a demo workload process: its built-in app (for all but
// the ingress) and its sidecar proxy, whose identity the agent attests
// from this process's credentials and binary. Audit lines go to out.
func RunWorkload(ctx context.Context, spec WorkloadSpec, log *slog.Logger, out io.Writer) error {
	cfg := proxy.Config{
		Socket:      spec.Socket,
		SVIDID:      spec.SPIFFEID,
		Labels:      map[string]string{"app": spec.Name},
		Policy:      proxy.PolicyConfig{Paths: spec.PolicyDirs},
		AuditLog:    "-",
		MetricsAddr: spec.Metrics,
	}
	if spec.Inbound != "" {
		cfg.Inbound = []proxy.ListenerSpec{{Name: "http", Listen: spec.Inbound, Forward: spec.App, Port: 8080}}
	}
	for _, callee := range sortedKeys(spec.Outbound) {
		o := spec.Outbound[callee]
		cfg.Outbound = append(cfg.Outbound, proxy.ListenerSpec{Name: "to-" + callee, Listen: o.Listen, Upstream: o.Upstream, SPIFFEIDs: []string{o.SPIFFEID}})
	}
	set, err := cfg.Resolve()
	if err != nil {
		return fmt.Errorf("workload %s: %w", spec.Name, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	if spec.App != "" {
		ln, err := net.Listen("tcp", spec.App)
		if err != nil {
			return fmt.Errorf("workload %s app: %w", spec.Name, err)
		}
		srv := &http.Server{Handler: newApp(spec), ReadHeaderTimeout: 10 * time.Second}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
		go func() {
			<-ctx.Done()
			sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
			defer c()
			_ = srv.Shutdown(sctx)
		}()
	}
	p := proxy.New(set, log)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := p.Run(ctx); err != nil {
			errc <- err
		}
		cancel()
	}()
	select {
	case <-p.Ready():
		line, _ := json.Marshal(readyEvent{Event: "workload_ready", Service: spec.Name, SPIFFEID: spec.SPIFFEID})
		_, _ = out.Write(append(line, '\n'))
	case err := <-errc:
		cancel()
		wg.Wait()
		return err
	case <-ctx.Done():
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// app is a demo service: GET / calls the services it may call (the seeds'
// matrix) and reports what each answered; GET /call/<service>/<rest>
// calls one service with path /<rest>, allowed or not, and relays its
// status — which is how the traffic generator and the tour try forbidden
// edges. Every call goes out through this workload's sidecar.
type app struct {
	spec   WorkloadSpec
	client *http.Client
}

const maxCallDepth = 6

func newApp(spec WorkloadSpec) *app {
	return &app{spec: spec, client: &http.Client{Timeout: 10 * time.Second}}
}

type callResult struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Status   int    `json:"status"`
	Response any    `json:"response"`
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	depth, _ := strconv.Atoi(r.Header.Get("X-Dev-Depth"))
	switch {
	case r.URL.Path == "/healthz":
		_, _ = io.WriteString(w, "ok\n")
	case strings.HasPrefix(r.URL.Path, "/call/"):
		target, rest, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/call/"), "/")
		if depth >= maxCallDepth {
			http.Error(w, "call chain too deep", http.StatusLoopDetected)
			return
		}
		res := a.call(r, target, "/"+rest, depth)
		writeJSON(w, res.Status, res)
	default:
		out := map[string]any{"service": a.spec.Name, "spiffe_id": a.spec.SPIFFEID, "caller": callerOf(r)}
		var calls []callResult
		if depth < maxCallDepth {
			for _, c := range a.spec.Calls {
				calls = append(calls, a.call(r, c, "/", depth))
			}
		}
		if len(calls) > 0 {
			out["calls"] = calls
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// callerOf is the caller's SPIFFE ID from the sidecar's
// X-Forwarded-Client-Cert.
func callerOf(r *http.Request) string {
	for _, part := range strings.Split(r.Header.Get("X-Forwarded-Client-Cert"), ";") {
		if v, ok := strings.CutPrefix(part, "URI="); ok {
			return v
		}
	}
	return ""
}

func (a *app) call(r *http.Request, target, path string, depth int) callResult {
	res := callResult{From: a.spec.Name, To: target}
	o, ok := a.spec.Outbound[target]
	if !ok {
		res.Status, res.Response = http.StatusNotFound, "no such service: "+target
		return res
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "http://"+o.Listen+path, nil)
	if err != nil {
		res.Status, res.Response = http.StatusBadRequest, err.Error()
		return res
	}
	req.Host = target // the service's name, as a mesh's DNS would have it
	req.Header.Set("X-Dev-Depth", strconv.Itoa(depth+1))
	if id := r.Header.Get("X-Request-Id"); id != "" {
		req.Header.Set("X-Request-Id", id)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		res.Status, res.Response = http.StatusBadGateway, err.Error()
		return res
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	res.Status = resp.StatusCode
	var v any
	if json.Unmarshal(body, &v) == nil {
		res.Response = v
	} else {
		res.Response = strings.TrimSpace(string(body))
	}
	return res
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}
