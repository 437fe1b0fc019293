package agent

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/apiclient"
	"github.com/trustmesh/trustmesh/internal/server"
)

// testServer is a real control plane on loopback.
type testServer struct {
	srv    *server.Server
	admin  *apiclient.Client
	addr   string
	dir    string
	cancel context.CancelFunc
	done   chan error
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testLog(t *testing.T) *slog.Logger {
	if os.Getenv("TRUSTMESH_TEST_VERBOSE") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return discardLog()
}

// startServer runs a server on dir (a fresh one if empty) and listen
// (127.0.0.1:0 if empty).
func startServer(t *testing.T, dir, listen string, mutate func(*server.Config)) *testServer {
	t.Helper()
	return startServerTuned(t, dir, listen, mutate, nil)
}

// startServerTuned is startServer with tune applied last to the resolved
// settings (which otherwise poll for changes every 50ms, to keep tests
// fast).
func startServerTuned(t *testing.T, dir, listen string, mutate func(*server.Config), tune func(*server.Settings)) *testServer {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	cfg := server.Config{DataDir: dir, Listen: listen}
	if mutate != nil {
		mutate(&cfg)
	}
	set, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	set.WatchPoll = 50 * time.Millisecond
	if tune != nil {
		tune(&set)
	}
	srv := server.New(set, testLog(t))
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{srv: srv, dir: dir, cancel: cancel, done: make(chan error, 1)}
	go func() { ts.done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-ts.done:
		t.Fatalf("server exited: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server not ready")
	}
	ts.addr = srv.Addr().String()
	ts.admin = apiclient.NewSocket(set.AdminSocket)
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) srvTD() spiffeid.TrustDomain {
	return spiffeid.RequireTrustDomainFromString("example.org")
}

func (ts *testServer) stop() {
	if ts.cancel == nil {
		return
	}
	ts.cancel()
	<-ts.done
	ts.admin.Close()
	ts.cancel = nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// bundleFile writes the server's bundle as PEM for the agent's bootstrap.
func (ts *testServer) bundleFile(t *testing.T) string {
	t.Helper()
	pem, err := ts.admin.Bundle(ctxT(t), "pem")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(p, pem, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

type testAgent struct {
	*Agent
	set    Settings
	cancel context.CancelFunc
	done   chan error
}

// agentSettings returns settings for an agent of ts with a join token.
func agentSettings(t *testing.T, ts *testServer) (Settings, string) {
	t.Helper()
	tok, err := ts.admin.GenerateToken(ctxT(t), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Socket paths are short-lived test files; keep them under the 107
	// byte limit.
	sockDir, err := os.MkdirTemp("", "tm-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	set, err := Config{
		Server: ts.addr, TrustBundle: ts.bundleFile(t), JoinToken: tok.Token,
		Socket: filepath.Join(sockDir, "agent.sock"), DataDir: t.TempDir(),
	}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	set.BackoffBase, set.BackoffMax = 50*time.Millisecond, 500*time.Millisecond
	return set, tok.AgentSPIFFEID
}

// startAgent runs an agent until the test ends (or stop).
func startAgent(t *testing.T, set Settings) *testAgent {
	t.Helper()
	a, err := New(set, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testAgent{Agent: a, set: set, cancel: cancel, done: make(chan error, 1)}
	go func() { ta.done <- a.Run(ctx) }()
	select {
	case <-a.Ready():
	case err := <-ta.done:
		t.Fatalf("agent exited: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("agent not ready")
	}
	t.Cleanup(func() { ta.stop(t) })
	return ta
}

func (ta *testAgent) stop(t *testing.T) {
	if ta.cancel == nil {
		return
	}
	ta.cancel()
	if err := <-ta.done; err != nil {
		t.Errorf("agent Run: %v", err)
	}
	ta.cancel = nil
}

func (ta *testAgent) addr() string { return "unix://" + ta.set.Socket }

func (ta *testAgent) clientOpt() workloadapi.SourceOption {
	return workloadapi.WithClientOptions(workloadapi.WithAddr(ta.addr()))
}

// uidSelector is this process's unix:uid selector.
func uidSelector() string { return "unix:uid:" + strconv.Itoa(os.Getuid()) }

func (ts *testServer) entry(t *testing.T, id, parent string, ttl int64, sels ...string) apiv1.Entry {
	t.Helper()
	e, err := ts.admin.CreateEntry(ctxT(t), apiv1.EntryCreate{SPIFFEID: id, ParentID: parent, Selectors: sels, X509SVIDTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
