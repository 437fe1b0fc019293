// Package proxy is Trustmesh's sidecar data plane (`trustmesh proxy run`).
// Inbound listeners terminate mTLS in front of an application, verify the
// caller's X.509-SVID, ask the policy engine about every HTTP request (or
// TCP connection) and forward what it allows, with the caller's identity in
// X-Forwarded-Client-Cert. Outbound listeners take the application's
// plaintext and originate mTLS to an upstream proxy whose SPIFFE ID must be
// one of those configured. The identity comes only from the SPIFFE Workload
// API; every decision is an audit line and a metric.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/trustmesh/trustmesh/internal/auditfile"
	"github.com/trustmesh/trustmesh/internal/memtrim"
	"github.com/trustmesh/trustmesh/internal/policy"
	"github.com/trustmesh/trustmesh/internal/telemetry"
)

// Proxy is one sidecar: its listeners, identity and policy.
type Proxy struct {
	set     Settings
	log     *slog.Logger
	audit   *auditLog
	metrics *metrics
	engine  *policy.Engine
	id      *workloadIdentity

	namespace string
	tds       []spiffeid.TrustDomain
	// slots bound open connections per direction (limits.max_connections
	// each), so a flood on the network-facing inbound side cannot starve
	// the application's outbound listeners.
	slots map[string]chan struct{}

	ready     chan struct{}
	mu        sync.Mutex
	addrs     map[string]net.Addr // listener name → bound address
	metricsLn net.Listener
}

// New prepares a proxy; Run starts it.
func New(set Settings, log *slog.Logger) *Proxy {
	return &Proxy{
		set: set,
		log: log,
		slots: map[string]chan struct{}{
			"inbound":  make(chan struct{}, set.MaxConnections),
			"outbound": make(chan struct{}, set.MaxConnections),
		},
		ready: make(chan struct{}),
		addrs: map[string]net.Addr{},
	}
}

// Ready is closed once every listener accepts connections.
func (p *Proxy) Ready() <-chan struct{} { return p.ready }

// Addr is the bound address of the named listener (after Ready).
func (p *Proxy) Addr(name string) net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addrs[name]
}

// MetricsAddr is the metrics listener's address, nil when off.
func (p *Proxy) MetricsAddr() net.Addr {
	if p.metricsLn == nil {
		return nil
	}
	return p.metricsLn.Addr()
}

// Engine is the policy engine (for tests and embedding).
func (p *Proxy) Engine() *policy.Engine { return p.engine }

func (p *Proxy) trustDomains() []spiffeid.TrustDomain { return p.tds }

// acquireSlot waits for room under direction's connection limit (before
// Accept, so that a full proxy stops accepting rather than accept and
// drop).
func (p *Proxy) acquireSlot(ctx context.Context, direction string) bool {
	select {
	case p.slots[direction] <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (p *Proxy) releaseSlot(direction string) { <-p.slots[direction] }

// opened counts an accepted connection and returns it wrapped so that
// closing it (whoever does: the proxy, the http.Server, or a handler that
// hijacked it for a WebSocket) gives its slot back, once.
func (p *Proxy) opened(c net.Conn, direction, name string) net.Conn {
	g := p.metrics.connections.WithLabelValues(direction, name)
	g.Inc()
	return &releasingConn{Conn: c, release: func() {
		g.Dec()
		p.releaseSlot(direction)
	}}
}

// Run serves until ctx ends, then drains in-flight requests for up to the
// shutdown timeout.
func (p *Proxy) Run(ctx context.Context) error {
	af, err := auditfile.Open(p.set.AuditLog)
	if err != nil {
		return err
	}
	defer af.Close()
	af.ReopenOnSignal(ctx, p.log) // log rotation: rename, then SIGUSR1
	p.audit = newAuditLog(af, p.log)
	defer p.audit.close() // before the file closes: writes what is buffered

	p.log.Info("waiting for an SVID from the Workload API", "socket", p.set.Socket, "svid_id", idOrDefault(p.set.SVIDID))
	id, err := openIdentity(ctx, p.set.Socket, p.set.SVIDID, p.set.SVIDWait)
	if err != nil {
		return err
	}
	defer id.Close()
	p.id = id
	p.metrics = newMetrics(id.Expiry, p.audit.failed.Load)
	self := id.ID()
	p.tds = p.set.TrustDomains
	if len(p.tds) == 0 {
		p.tds = []spiffeid.TrustDomain{self.TrustDomain()}
	}
	p.namespace = p.set.Namespace
	if p.namespace == "" {
		p.namespace = namespaceOf(self)
	}
	if p.namespace == "" {
		p.namespace = policy.DefaultNamespace
		p.log.Warn("the SVID has no /ns/<namespace>/ segment and --namespace is not set: using \"default\" to select policies", "spiffe_id", self.String())
	}

	set, err := p.loadPolicy(ctx, self.TrustDomain())
	if err != nil {
		return err
	}
	p.engine = policy.NewEngine(set)

	var inbound []*inbound
	var outbound []*outbound
	closeAll := func() {
		for _, in := range inbound {
			in.ln.Close()
		}
		for _, o := range outbound {
			o.ln.Close()
		}
	}
	for _, l := range p.set.Inbound {
		ln, err := net.Listen("tcp", l.Listen)
		if err != nil {
			closeAll()
			return fmt.Errorf("inbound %s: %w", l.Name, err)
		}
		inbound = append(inbound, p.newInbound(l, ln))
		p.setAddr(l.Name, ln.Addr())
	}
	for _, l := range p.set.Outbound {
		ln, err := net.Listen("tcp", l.Listen)
		if err != nil {
			closeAll()
			return fmt.Errorf("outbound %s: %w", l.Name, err)
		}
		outbound = append(outbound, p.newOutbound(l, ln))
		p.setAddr(l.Name, ln.Addr())
	}
	if p.set.MetricsAddr != "" {
		ln, err := net.Listen("tcp", p.set.MetricsAddr)
		if err != nil {
			closeAll()
			return fmt.Errorf("metrics: %w", err)
		}
		p.metricsLn = ln
	}

	g, gctx := errgroup.WithContext(ctx)
	for _, in := range inbound {
		g.Go(func() error { return in.serve(gctx) })
	}
	for _, o := range outbound {
		g.Go(func() error { return o.serve(gctx) })
	}
	if p.metricsLn != nil {
		g.Go(func() error { return telemetry.Serve(gctx, p.metricsLn, p.metrics.registry) })
	}
	if len(p.set.PolicyPaths) > 0 {
		g.Go(func() error { return p.watchPolicy(gctx, self.TrustDomain()) })
	}
	g.Go(func() error {
		<-gctx.Done()
		p.log.Info("shutting down: draining in-flight requests", "timeout", p.set.ShutdownTimeout.String())
		sctx, cancel := context.WithTimeout(context.Background(), p.set.ShutdownTimeout)
		defer cancel()
		var wg sync.WaitGroup
		for _, in := range inbound {
			wg.Add(1)
			go func() { defer wg.Done(); in.shutdown(sctx) }()
		}
		for _, o := range outbound {
			wg.Add(1)
			go func() { defer wg.Done(); o.shutdown(sctx) }()
		}
		wg.Wait()
		return nil
	})

	attrs := []any{"spiffe_id", self.String(), "namespace", p.namespace, "labels", p.set.Labels, "policies", len(set.Policies())}
	for _, l := range p.set.Inbound {
		attrs = append(attrs, "inbound."+l.Name, p.Addr(l.Name).String()+" → "+l.Forward+" ("+l.Protocol+")")
	}
	for _, l := range p.set.Outbound {
		attrs = append(attrs, "outbound."+l.Name, p.Addr(l.Name).String()+" → "+l.Upstream+" ("+l.Protocol+")")
	}
	p.log.Info("proxy ready", attrs...)
	close(p.ready)
	// Most of an idle sidecar's memory is pages of this all-roles binary
	// that only start-up touched (every package's init): give them back.
	if r, err := memtrim.Trim(); err != nil {
		p.log.Debug("start-up memory not trimmed", "err", err)
	} else {
		p.log.Debug("start-up memory trimmed", "rss_before_kib", r.BeforeKiB, "rss_after_kib", r.AfterKiB)
	}
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

func (p *Proxy) setAddr(name string, a net.Addr) {
	p.mu.Lock()
	p.addrs[name] = a
	p.mu.Unlock()
}

func idOrDefault(id spiffeid.ID) string {
	if id.IsZero() {
		return "(default)"
	}
	return id.String()
}

// namespaceOf is the <ns> of a /ns/<ns>/sa/<sa> SPIFFE ID.
func namespaceOf(id spiffeid.ID) string {
	rest, ok := strings.CutPrefix(id.Path(), "/ns/")
	if !ok {
		return ""
	}
	ns, _, _ := strings.Cut(rest, "/")
	return ns
}

// noPolicyYAML is what a proxy without any policy enforces: an ALLOW policy
// that matches nothing, mesh-wide. A sidecar that was not told what to
// allow denies everything (and says why), rather than allowing everything
// as an Istio workload without policies would.
const noPolicyYAML = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-policy-configured
  namespace: trustmesh-system
spec: {}
`

func (p *Proxy) policyOptions(td spiffeid.TrustDomain) policy.Options {
	opts := p.set.PolicyOptions
	opts.TrustDomain = td.Name()
	return opts
}

// loadPolicy compiles the configured policy; any error refuses it.
func (p *Proxy) loadPolicy(ctx context.Context, td spiffeid.TrustDomain) (*policy.Set, error) {
	opts := p.policyOptions(td)
	if len(p.set.PolicyPaths) == 0 {
		opts.RootNamespaces = []string{"trustmesh-system"}
		src := &policy.Sources{}
		src.Parse("(built in)", []byte(noPolicyYAML))
		set, problems := policy.Compile(ctx, src, opts)
		if set == nil {
			return nil, fmt.Errorf("built-in policy: %v", problems)
		}
		if len(p.set.Inbound) > 0 {
			p.log.Warn("no policy configured (--policy): every inbound request is denied")
		}
		return set, nil
	}
	set, problems := policy.LoadAndCompile(ctx, p.set.PolicyPaths, p.set.PolicyData, opts)
	var errs []string
	for _, pr := range problems {
		if pr.Severity == policy.SeverityWarning {
			p.log.Warn("policy warning", "problem", pr.String())
		} else {
			errs = append(errs, pr.String())
		}
	}
	if set == nil {
		return nil, fmt.Errorf("policy does not compile:\n  %s", strings.Join(errs, "\n  "))
	}
	return set, nil
}

// watchPolicy reloads the policy when its files change. A policy that does
// not compile is refused and the previous one stays in force.
func (p *Proxy) watchPolicy(ctx context.Context, td spiffeid.TrustDomain) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch policy: %w", err)
	}
	defer w.Close()
	watchTree := func(root string) {
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				if addErr := w.Add(path); addErr != nil {
					p.log.Warn("cannot watch policy directory", "dir", path, "err", addErr)
				}
			}
			return nil
		})
	}
	for _, path := range append(append([]string{}, p.set.PolicyPaths...), p.set.PolicyData...) {
		if info, err := os.Stat(path); err == nil && info.IsDir() {
			watchTree(path)
		} else {
			// Watch the directory: editors and Kubernetes ConfigMaps replace
			// files by renaming, which a watch on the file itself loses.
			watchTree(filepath.Dir(path))
		}
	}
	var timer *time.Timer
	var fire <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Has(fsnotify.Create) {
				if info, err := os.Stat(ev.Name); err == nil && info.IsDir() {
					watchTree(ev.Name)
				}
			}
			if timer == nil {
				timer = time.NewTimer(p.set.PolicyDebounce)
			} else {
				timer.Reset(p.set.PolicyDebounce)
			}
			fire = timer.C
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			p.log.Warn("policy watch error", "err", err)
		case <-fire:
			fire = nil
			set, err := p.loadPolicy(ctx, td)
			if err != nil {
				p.metrics.policyReloads.WithLabelValues("error").Inc()
				p.log.Error("policy change refused: keeping the previous policy", "err", err)
				continue
			}
			p.engine.Swap(set)
			p.metrics.policyReloads.WithLabelValues("ok").Inc()
			p.log.Info("policy reloaded", "policies", len(set.Policies()))
		}
	}
}
