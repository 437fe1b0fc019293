// Package dev is `trustmesh dev`: the whole zero-trust mesh on one machine
// in one command. It runs the real control plane and node agent, and the
// seeds' demo topology — ingress, frontend, api, auth, database, cache —
// each a child process holding a small built-in app and its own sidecar
// proxy. Identities come from the agent's Workload API after workload
// attestation, traffic crosses real mTLS between real proxies, decisions
// come from the policy engine reading policy files from disk, and a
// traffic generator keeps calling allowed and forbidden edges so that the
// live feed shows both.
//
// How the demo workloads are told apart: each child runs from its own hard
// link (or copy) of the trustmesh binary, <dir>/<service>/trustmesh, and its
// registration entry selects unix:path:<that link> and unix:uid:<your uid>.
// The agent reads the caller's /proc/<pid>/exe through SO_PEERCRED, exactly
// as it attests any workload, so each child gets its own SVID and no other.
// This needs no privileges. It separates the demo's workloads from each
// other, not from the user: any process of the same uid can exec a link.
// Production separates workloads by uid.
package dev

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/examples"
	"github.com/trustmesh/trustmesh/internal/agent"
	"github.com/trustmesh/trustmesh/internal/apiclient"
	"github.com/trustmesh/trustmesh/internal/server"
)

// Defaults.
const (
	DefaultDataDir   = "./.trustmesh/dev"
	DefaultBasePort  = 18000
	DefaultInterval  = time.Second
	markerFile       = ".trustmesh-dev"
	stateFile        = "dev.json"
	examplePolicyDir = "examples/policies/matrix"
)

// Options configure a dev mesh.
type Options struct {
	DataDir    string
	Reset      bool   // wipe DataDir first
	NoDemo     bool   // only the server and the agent
	Permissive bool   // PERMISSIVE mTLS mesh-wide (plaintext served as unauthenticated)
	BasePort   int    // first of the demo's consecutive ports; 0: any free ports
	PolicyDir  string // default: <DataDir>/policies, seeded from examples/policies/matrix
	Interval   time.Duration
	Color      bool
	Out        io.Writer // the banner and the live feed
	Executable string    // the trustmesh binary (os.Executable by default)
}

// State is what a running dev mesh records for `trustmesh dev status`.
type State struct {
	PID          int            `json:"pid"`
	DataDir      string         `json:"data_dir"`
	Started      time.Time      `json:"started"`
	TrustDomain  string         `json:"trust_domain"`
	AdminSocket  string         `json:"admin_socket"`
	AgentSocket  string         `json:"agent_socket"`
	AgentMetrics string         `json:"agent_metrics"`
	Server       string         `json:"server"`
	Metrics      string         `json:"server_metrics"`
	Ingress      string         `json:"ingress,omitempty"`
	Policies     string         `json:"policies"`
	AuditLog     string         `json:"audit_log"`
	Services     []ServiceState `json:"services,omitempty"`

	cleanup func() // removes what the demo made outside the data dir
}

// ServiceState is one demo workload.
type ServiceState struct {
	Name     string `json:"name"`
	SPIFFEID string `json:"spiffe_id"`
	PID      int    `json:"pid"`
	App      string `json:"app,omitempty"`
	Inbound  string `json:"inbound,omitempty"`
	Metrics  string `json:"metrics"`
	Binary   string `json:"binary"`
}

// Run starts the mesh and serves until ctx ends, then stops every process
// and removes the sockets.
func Run(ctx context.Context, o Options) error {
	started := time.Now()
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Interval == 0 {
		o.Interval = DefaultInterval
	}
	dir, err := prepareDataDir(o.DataDir, o.Reset)
	if err != nil {
		return err
	}
	if st, err := ReadState(dir); err == nil && processAlive(st.PID) {
		return fmt.Errorf("a dev mesh is already running in %s (pid %d): stop it first, or use another --data-dir", dir, st.PID)
	}
	logDir := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return err
	}
	policyDir, err := preparePolicies(dir, o.PolicyDir)
	if err != nil {
		return err
	}
	overlayDir, err := prepareOverlay(dir, o.Permissive)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var bg sync.WaitGroup // the server and the agent
	var bgErr error
	var bgMu sync.Mutex
	fail := func(err error) {
		bgMu.Lock()
		if bgErr == nil {
			bgErr = err
		}
		bgMu.Unlock()
		cancel()
	}
	defer bg.Wait()

	// The control plane.
	pa := &ports{base: o.BasePort}
	if o.BasePort != 0 {
		pa.next = 90 // the demo uses base … base+89; the control plane sits above
	}
	srvListen, err := pa.take()
	if err != nil {
		return err
	}
	srvMetrics, err := pa.take()
	if err != nil {
		return err
	}
	srvSet, err := server.Config{
		DataDir: filepath.Join(dir, "server"), Listen: srvListen, TrustDomain: TrustDomain, MetricsAddr: srvMetrics,
	}.Resolve()
	if err != nil {
		return err
	}
	srvLog, closeSrvLog, err := fileLogger(filepath.Join(logDir, "server.log"), slog.LevelInfo)
	if err != nil {
		return err
	}
	defer closeSrvLog()
	srv := server.New(srvSet, srvLog)
	bg.Add(1)
	go func() {
		defer bg.Done()
		if err := srv.Run(ctx); err != nil {
			fail(fmt.Errorf("server: %w (see %s)", err, filepath.Join(logDir, "server.log")))
		}
	}()
	if err := waitReady(ctx, srv.Ready(), "server"); err != nil {
		return firstErr(bgErr, err)
	}
	admin := apiclient.NewSocket(srvSet.AdminSocket)
	defer admin.Close()

	// The node agent, attested afresh with a join token on every start.
	agentDir := filepath.Join(dir, "agent")
	_ = os.RemoveAll(agentDir)
	bundle, err := admin.Bundle(ctx, "pem")
	if err != nil {
		return err
	}
	bundleFile := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundleFile, bundle, 0o644); err != nil {
		return err
	}
	tok, err := admin.GenerateToken(ctx, 10*time.Minute)
	if err != nil {
		return err
	}
	socket := agentSocketPath(dir)
	agentMetrics, err := pa.take()
	if err != nil {
		return err
	}
	agentSet, err := agent.Config{
		Server: srv.Addr().String(), TrustDomain: TrustDomain, TrustBundle: bundleFile, JoinToken: tok.Token,
		Socket: socket, DataDir: agentDir, MetricsAddr: agentMetrics,
	}.Resolve()
	if err != nil {
		return err
	}
	agentLog, closeAgentLog, err := fileLogger(filepath.Join(logDir, "agent.log"), slog.LevelInfo)
	if err != nil {
		return err
	}
	defer closeAgentLog()
	ag, err := agent.New(agentSet, agentLog)
	if err != nil {
		return err
	}
	bg.Add(1)
	go func() {
		defer bg.Done()
		if err := ag.Run(ctx); err != nil {
			fail(fmt.Errorf("agent: %w (see %s)", err, filepath.Join(logDir, "agent.log")))
		}
	}()
	if err := waitReady(ctx, ag.Ready(), "agent"); err != nil {
		return firstErr(bgErr, err)
	}

	st := &State{
		PID: os.Getpid(), DataDir: dir, Started: started, TrustDomain: TrustDomain, AdminSocket: srvSet.AdminSocket,
		AgentSocket: socket, AgentMetrics: agentMetrics, Server: srv.Addr().String(), Metrics: srvMetrics, Policies: policyDir,
		AuditLog: filepath.Join(dir, "audit.log"),
	}
	feed, err := newFeed(o.Out, o.Color, st.AuditLog)
	if err != nil {
		return err
	}
	defer feed.close()
	var kids []*child
	if !o.NoDemo {
		kids, err = startDemo(ctx, o, dir, logDir, policyDir, overlayDir, socket, tok.AgentSPIFFEID, admin, st, feed)
		defer stopChildren(kids)
		if err != nil {
			return firstErr(bgErr, err)
		}
	}
	if err := writeState(dir, st); err != nil {
		return err
	}
	defer os.Remove(filepath.Join(dir, stateFile))
	printBanner(o.Out, st, o, time.Since(started))

	feed.start()
	if !o.NoDemo {
		bg.Add(1)
		go func() {
			defer bg.Done()
			generateTraffic(ctx, st, o.Interval, feed)
		}()
	}
	<-ctx.Done()
	fmt.Fprintln(o.Out, "\nstopping: workloads, agent, server…")
	stopChildren(kids)
	if st.cleanup != nil {
		st.cleanup()
	}
	cancel()
	bg.Wait()
	bgMu.Lock()
	defer bgMu.Unlock()
	if bgErr != nil {
		return bgErr
	}
	fmt.Fprintln(o.Out, "stopped; no process or socket left behind.")
	return nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func waitReady(ctx context.Context, ready <-chan struct{}, what string) error {
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s did not start", what)
	case <-time.After(60 * time.Second):
		return fmt.Errorf("%s not ready after 60s", what)
	}
}

func fileLogger(path string, level slog.Level) (*slog.Logger, func(), error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, err
	}
	return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: level})), func() { f.Close() }, nil
}

// prepareDataDir creates (or, with reset, recreates) the data dir. Only a
// directory a dev mesh made is ever wiped.
func prepareDataDir(dir string, reset bool) (string, error) {
	if dir == "" {
		dir = DefaultDataDir
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if reset {
		if st, err := ReadState(abs); err == nil && processAlive(st.PID) {
			return "", fmt.Errorf("a dev mesh is running in %s (pid %d): stop it before --reset", abs, st.PID)
		}
		if _, err := os.Stat(abs); err == nil {
			if _, err := os.Stat(filepath.Join(abs, markerFile)); err != nil {
				return "", fmt.Errorf("--reset: %s was not made by trustmesh dev (no %s in it); refusing to delete it", abs, markerFile)
			}
			if err := os.RemoveAll(abs); err != nil {
				return "", err
			}
		}
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(abs, markerFile), []byte("a trustmesh dev data directory; trustmesh dev --reset deletes it\n"), 0o600); err != nil {
		return "", err
	}
	return abs, nil
}

// preparePolicies returns the policy directory, seeding the default one
// from examples/policies/matrix (on disk when run from a checkout, else
// the copy built into the binary) on first start.
func preparePolicies(dir, given string) (string, error) {
	if given != "" {
		abs, err := filepath.Abs(given)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("--policy: %w", err)
		}
		return abs, nil
	}
	pd := filepath.Join(dir, "policies")
	if _, err := os.Stat(pd); err == nil {
		return pd, nil
	}
	if err := os.MkdirAll(pd, 0o755); err != nil {
		return "", err
	}
	var src fs.FS = os.DirFS(examplePolicyDir)
	if _, err := os.Stat(examplePolicyDir); err != nil {
		sub, err := fs.Sub(examples.DevPolicies, "policies/matrix")
		if err != nil {
			return "", err
		}
		src = sub
	}
	entries, err := fs.ReadDir(src, ".")
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		data, err := fs.ReadFile(src, e.Name())
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(pd, e.Name()), data, 0o644); err != nil {
			return "", err
		}
	}
	return pd, nil
}

// permissiveYAML overrides the mesh-wide STRICT for the demo namespace.
const permissiveYAML = `# Written by trustmesh dev --permissive: plaintext is accepted and served as
# unauthenticated (the seed's "permissive mode: log but don't block").
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: dev-permissive
  namespace: default
spec:
  mtls:
    mode: PERMISSIVE
`

// prepareOverlay holds the policy dev itself adds (--permissive), apart
// from the user's policies.
func prepareOverlay(dir string, permissive bool) (string, error) {
	od := filepath.Join(dir, "policy-overlay")
	if err := os.MkdirAll(od, 0o755); err != nil {
		return "", err
	}
	f := filepath.Join(od, "permissive.yaml")
	if permissive {
		return od, os.WriteFile(f, []byte(permissiveYAML), 0o644)
	}
	if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	return od, nil
}

// agentSocketPath keeps the Workload API socket under the 107-byte limit
// of a unix socket path.
func agentSocketPath(dir string) string {
	p := filepath.Join(dir, "agent.sock")
	if len(p) <= 100 {
		return p
	}
	sum := sha256.Sum256([]byte(dir))
	return filepath.Join(os.TempDir(), "trustmesh-dev-"+hex.EncodeToString(sum[:6]), "agent.sock")
}

func writeState(dir string, st *State) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, stateFile))
}

// ReadState reads a dev mesh's state file.
func ReadState(dir string) (*State, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, stateFile), err)
	}
	return &st, nil
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// child is a running demo workload.
type child struct {
	name  string
	cmd   *exec.Cmd
	ready chan struct{}
	// done is closed once the process has exited and err holds how; it
	// stays closed, so startDemo's wait and stopChildren can both see it.
	done chan struct{}
	err  error
	feed *feed
}

func startDemo(ctx context.Context, o Options, dir, logDir, policyDir, overlayDir, socket, agentID string, admin *apiclient.Client, st *State, f *feed) ([]*child, error) {
	exe := o.Executable
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	names := make([]string, len(Services))
	for i, s := range Services {
		names[i] = s.Name
	}
	bins, cleanup, err := workloadBinaries(exe, dir, names)
	if err != nil {
		return nil, err
	}
	st.cleanup = cleanup
	// Registration: one entry per service, selecting its binary and uid;
	// entries of an earlier run (under an earlier agent) go first.
	old, err := admin.ListEntries(ctx, "", "")
	if err != nil {
		return nil, err
	}
	ours := map[string]bool{SPIFFEID(DeveloperName): true}
	for _, s := range Services {
		ours[SPIFFEID(s.Name)] = true
	}
	for _, e := range old {
		if ours[e.SPIFFEID] {
			if _, err := admin.DeleteEntry(ctx, e.ID); err != nil {
				return nil, err
			}
		}
	}
	uid := fmt.Sprint(os.Getuid())
	// You, the developer: any process of your uid gets this identity, so
	// `trustmesh api fetch x509` works from your shell. No policy allows it.
	if _, err := admin.CreateEntry(ctx, apiv1.EntryCreate{
		SPIFFEID: SPIFFEID(DeveloperName), ParentID: agentID, Hint: DeveloperName, Selectors: []string{"unix:uid:" + uid},
	}); err != nil {
		return nil, fmt.Errorf("register the developer: %w", err)
	}
	for _, s := range Services {
		if _, err := admin.CreateEntry(ctx, apiv1.EntryCreate{
			// The hint names the SVID, so a workload holding several (its
			// own and the developer's) can tell them apart.
			SPIFFEID: SPIFFEID(s.Name), ParentID: agentID, Hint: s.Name,
			Selectors: []string{"unix:path:" + bins[s.Name], "unix:uid:" + uid},
		}); err != nil {
			return nil, fmt.Errorf("register %s: %w", s.Name, err)
		}
	}
	specs, ingress, err := plan(o.BasePort, socket)
	if err != nil {
		return nil, err
	}
	st.Ingress = ingress
	runDir := filepath.Join(dir, "run")
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return nil, err
	}
	var kids []*child
	for _, s := range Services {
		spec := specs[s.Name]
		spec.PolicyDirs = []string{policyDir, overlayDir}
		specFile := filepath.Join(runDir, s.Name+".json")
		data, _ := json.MarshalIndent(spec, "", "  ")
		if err := os.WriteFile(specFile, data, 0o600); err != nil {
			return kids, err
		}
		k, err := startChild(bins[s.Name], s.Name, specFile, filepath.Join(logDir, s.Name+".log"), f)
		if err != nil {
			return kids, err
		}
		kids = append(kids, k)
		st.Services = append(st.Services, ServiceState{Name: s.Name, SPIFFEID: spec.SPIFFEID, PID: k.cmd.Process.Pid,
			App: spec.App, Inbound: spec.Inbound, Metrics: spec.Metrics, Binary: bins[s.Name]})
	}
	deadline := time.After(60 * time.Second)
	for _, k := range kids {
		select {
		case <-k.ready:
		case <-k.done:
			return kids, fmt.Errorf("workload %s exited: %v (see %s)", k.name, k.err, filepath.Join(logDir, k.name+".log"))
		case <-deadline:
			return kids, fmt.Errorf("workload %s not ready after 60s (see %s)", k.name, filepath.Join(logDir, k.name+".log"))
		case <-ctx.Done():
			return kids, ctx.Err()
		}
	}
	return kids, nil
}

func startChild(bin, name, specFile, logFile string, f *feed) (*child, error) {
	lf, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	k := &child{name: name, ready: make(chan struct{}), done: make(chan struct{}), feed: f}
	k.cmd = exec.Command(bin, "dev", "workload", "--spec", specFile)
	k.cmd.Stderr = lf
	// Its own process group: Ctrl-C reaches the parent, which stops the
	// children in order; Pdeathsig stops them if the parent dies.
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	out, err := k.cmd.StdoutPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	if err := k.cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start workload %s: %w", name, err)
	}
	lines := make(chan struct{})
	go func() {
		defer close(lines)
		k.read(out)
	}()
	go func() {
		<-lines
		k.err = k.cmd.Wait()
		lf.Close()
		close(k.done)
	}()
	return k, nil
}

// read handles a workload's stdout: its ready line, then audit lines for
// the feed and the combined audit log.
func (k *child) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	readySent := false
	for sc.Scan() {
		line := sc.Bytes()
		var ev struct {
			Event string `json:"event"`
		}
		if json.Unmarshal(line, &ev) != nil {
			continue
		}
		switch ev.Event {
		case "workload_ready":
			if !readySent {
				readySent = true
				close(k.ready)
			}
		case "access_decision":
			k.feed.decision(line)
		}
	}
}

// stopChildren sends SIGTERM to every workload and waits; one that does
// not stop in 10s is killed.
func stopChildren(kids []*child) {
	for _, k := range kids {
		select {
		case <-k.done:
		default:
			_ = k.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, k := range kids {
		select {
		case <-k.done:
		case <-time.After(10 * time.Second):
			_ = k.cmd.Process.Kill()
			<-k.done
		}
	}
}

// printBanner shows where everything is and how to poke it.
func printBanner(w io.Writer, st *State, o Options, took time.Duration) {
	fmt.Fprintf(w, "Trustmesh dev mesh is up in %.1fs (trust domain %s)\n\n", took.Seconds(), st.TrustDomain)
	row := func(k, v string) { fmt.Fprintf(w, "  %-14s %s\n", k, v) }
	row("data dir", st.DataDir)
	row("admin socket", st.AdminSocket+"   (TRUSTMESH_ADMIN_SOCKET for trustmesh entry|agent|bundle …)")
	row("workload API", st.AgentSocket+"   (SPIFFE_ENDPOINT_SOCKET=unix://"+st.AgentSocket+")")
	row("server", st.Server+" (agent API, mTLS)   metrics http://"+st.Metrics+"/metrics")
	row("agent", "metrics http://"+st.AgentMetrics+"/metrics")
	row("policies", st.Policies+"   (edit them: changes apply live)")
	row("audit log", st.AuditLog)
	if len(st.Services) > 0 {
		row("you", SPIFFEID(DeveloperName)+"   (SPIFFE_ENDPOINT_SOCKET=unix://"+st.AgentSocket+" trustmesh api fetch x509)")
	}
	if o.Permissive {
		row("mTLS", "PERMISSIVE: plaintext is served as unauthenticated")
	} else {
		row("mTLS", "STRICT everywhere (--permissive to accept plaintext)")
	}
	if len(st.Services) == 0 {
		fmt.Fprintln(w, "\n  no demo workloads (--no-demo). Ctrl-C stops.")
		return
	}
	fmt.Fprintf(w, "\n  %-9s %-45s %-17s %-17s %s\n", "service", "identity", "app", "sidecar (mTLS)", "metrics")
	for _, s := range st.Services {
		app, in := orDash(s.App), orDash(s.Inbound)
		if s.Name == "ingress" {
			in = st.Ingress + " (plaintext in)"
		}
		fmt.Fprintf(w, "  %-9s %-45s %-17s %-17s http://%s/metrics\n", s.Name, s.SPIFFEID, app, in, s.Metrics)
	}
	fmt.Fprintf(w, "\n  Try:  curl http://%s/                  the whole call tree, over mTLS hop by hop\n", st.Ingress)
	fmt.Fprintf(w, "        curl -i http://%s/call/database    frontend → database: denied by policy\n", st.Ingress)
	fmt.Fprintf(w, "        trustmesh dev status --data-dir %s\n", st.DataDir)
	fmt.Fprintf(w, "\nLive decisions (allowed in green, denied in red); Ctrl-C stops everything.\n\n")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// generateTraffic keeps calling allowed and forbidden edges through the
// ingress, and tries plaintext on the API's mTLS port.
func generateTraffic(ctx context.Context, st *State, every time.Duration, f *feed) {
	paths := []string{
		"/",                     // ingress → frontend → api → database, cache, auth → database; frontend → auth → database
		"/call/database",        // frontend → database: denied
		"/call/api/call/auth",   // api → auth: allowed
		"/call/cache",           // frontend → cache: denied
		"/call/auth/call/cache", // auth → cache: denied
		"/call/api/call/frontend",
	}
	client := &http.Client{Timeout: 10 * time.Second}
	var api ServiceState
	for _, s := range st.Services {
		if s.Name == "api" {
			api = s
		}
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if i%len(paths) == len(paths)-1 && api.Inbound != "" {
			f.plaintext("api", api.Inbound, plaintextProbe(api.Inbound))
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+st.Ingress+paths[i%len(paths)], nil)
		if err != nil {
			continue
		}
		if resp, err := client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
}

// plaintextProbe sends a plaintext request to an mTLS port and says what
// happened.
func plaintextProbe(addr string) string {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "unreachable"
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/") {
		return "refused (STRICT mTLS)"
	}
	return "served as unauthenticated: " + strings.TrimSpace(strings.TrimPrefix(line, "HTTP/1.1 "))
}
