// Package agent is Trustmesh's node agent: it attests its node to the
// server, keeps the SVIDs of the node's workloads current (pushed entry
// changes, rotation at half-life, cached SVIDs served while the server is
// away), and serves them on a local unix socket through the SPIFFE
// Workload API and Envoy's SDS, to callers it identifies by their process
// credentials.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/trustmesh/trustmesh/internal/attest"
	"github.com/trustmesh/trustmesh/internal/telemetry"
	"github.com/trustmesh/trustmesh/internal/unixsock"
)

// Agent is one node agent.
type Agent struct {
	set     Settings
	log     *slog.Logger
	cache   *Cache
	metrics *agentMetrics
	node    *node
	mgr     *manager

	ready     chan struct{}
	metricsLn net.Addr
}

// New prepares an agent; Run starts it.
func New(set Settings, log *slog.Logger) (*Agent, error) {
	n, err := newNode(set, log.With("component", "node"))
	if err != nil {
		return nil, err
	}
	a := &Agent{set: set, log: log, cache: NewCache(), metrics: newAgentMetrics(), node: n, ready: make(chan struct{})}
	a.mgr = newManager(set, log.With("component", "sync"), n, a.cache, a.metrics)
	return a, nil
}

// Ready is closed once the Workload API socket accepts connections.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// MetricsAddr is the bound metrics address, or nil.
func (a *Agent) MetricsAddr() net.Addr { return a.metricsLn }

// Cache exposes the agent's state (tests, status).
func (a *Agent) Cache() *Cache { return a.cache }

// Degraded reports whether the agent currently cannot reach the server.
func (a *Agent) Degraded() bool { return a.mgr.health.Degraded() }

// Run attests, serves the socket and keeps SVIDs current until ctx ends or
// a fatal error (a ban, an eviction it cannot recover from).
func (a *Agent) Run(ctx context.Context) error {
	if err := a.startNode(ctx); err != nil {
		return err
	}
	ln, err := listenSocket(a.set.Socket)
	if err != nil {
		return err
	}
	defer os.Remove(a.set.Socket)
	var metricsLn net.Listener
	if a.set.MetricsAddr != "" {
		if metricsLn, err = net.Listen("tcp", a.set.MetricsAddr); err != nil {
			ln.Close()
			return fmt.Errorf("listen for metrics: %w", err)
		}
		a.metricsLn = metricsLn.Addr()
	}

	g, gctx := errgroup.WithContext(ctx)
	w := &workloads{
		cache: a.cache, node: a.node, attestors: []attest.WorkloadAttestor{attest.NewUnix()},
		log: a.log.With("component", "workload_api"), metrics: a.metrics, jwts: newJWTCache(), stopping: gctx.Done(),
		now: a.mgr.now,
	}
	srv := grpc.NewServer(grpc.Creds(peerCredentials{}))
	workload.RegisterSpiffeWorkloadAPIServer(srv, &workloadAPI{workloads: w})
	secretv3.RegisterSecretDiscoveryServiceServer(srv, &sds{workloads: w, svidName: a.set.SVIDName, bundleName: a.set.BundleName})

	g.Go(func() error { return srv.Serve(ln) })
	g.Go(func() error {
		<-gctx.Done()
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			srv.Stop()
		}
		return nil
	})
	g.Go(func() error { return a.mgr.watchLoop(gctx) })
	g.Go(func() error { return a.mgr.svidLoop(gctx) })
	g.Go(func() error { return a.mgr.expiryLoop(gctx) })
	if metricsLn != nil {
		g.Go(func() error { return telemetry.Serve(gctx, metricsLn, a.metrics.registry) })
	}
	a.log.Info("agent ready", "spiffe_id", a.node.ID().String(), "socket", a.set.Socket, "server", a.set.Server,
		"trust_domain", a.node.td.Name(), "metrics", addrString(a.metricsLn))
	close(a.ready)
	err = g.Wait()
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	// Close our connections to the server rather than leave it to wait out
	// its graceful-shutdown timeout for them.
	a.node.client.Close()
	a.log.Info("agent stopped")
	return err
}

// startNode gets the agent an identity, retrying while the server is
// unreachable; a refusal (bad token, ban) is final.
func (a *Agent) startNode(ctx context.Context) error {
	b := backoff{base: a.set.BackoffBase, max: a.set.BackoffMax}
	for {
		err := a.node.Start(ctx)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrBanned) || errors.Is(err, ErrNoAttestationMethod) || refused(err) {
			return err
		}
		a.log.Warn("cannot attest yet; retrying", "error", err)
		if !sleep(ctx, b.next()) {
			return ctx.Err()
		}
	}
}

func addrString(a net.Addr) string {
	if a == nil {
		return "off"
	}
	return a.String()
}

// listenSocket opens the Workload API socket. As SPIRE's, the directory
// is 0755 and the socket 0777: every local process may connect, and the
// agent decides what each gets from its kernel-reported credentials.
func listenSocket(path string) (net.Listener, error) {
	return unixsock.Listen(path, 0o755, 0o777)
}
