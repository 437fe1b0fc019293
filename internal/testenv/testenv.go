// Package testenv runs a real Trustmesh control plane and node agent in
// the test process, on loopback and temporary directories, for tests of
// the components built on them (proxy, dev). Nothing here is a fake: it is
// the server and agent packages, configured for fast tests.
package testenv

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/agent"
	"github.com/trustmesh/trustmesh/internal/apiclient"
	"github.com/trustmesh/trustmesh/internal/server"
)

// TrustDomain is the trust domain of every test control plane.
const TrustDomain = "example.org"

// Log discards unless TRUSTMESH_TEST_VERBOSE is set.
func Log() *slog.Logger {
	if os.Getenv("TRUSTMESH_TEST_VERBOSE") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Ctx is a context that ends with the test (or after a minute).
func Ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Server is a running control plane.
type Server struct {
	Admin *apiclient.Client
	Addr  string
	Dir   string
}

// StartServer runs a server until the test ends. mutate may adjust its
// config (CA TTLs, …).
func StartServer(t testing.TB, mutate func(*server.Config)) *Server {
	t.Helper()
	dir := t.TempDir()
	cfg := server.Config{DataDir: dir, Listen: "127.0.0.1:0", TrustDomain: TrustDomain}
	if mutate != nil {
		mutate(&cfg)
	}
	set, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	set.WatchPoll = 50 * time.Millisecond
	srv := server.New(set, Log())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("server exited: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("server not ready")
	}
	s := &Server{Admin: apiclient.NewSocket(set.AdminSocket), Addr: srv.Addr().String(), Dir: dir}
	t.Cleanup(func() {
		cancel()
		<-done
		s.Admin.Close()
	})
	return s
}

// BundleFile writes the server's trust bundle as PEM.
func (s *Server) BundleFile(t testing.TB) string {
	t.Helper()
	pem, err := s.Admin.Bundle(Ctx(t), "pem")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(p, pem, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Entry registers a workload entry; ttl is the X.509-SVID TTL in seconds
// (0: the default).
func (s *Server) Entry(t testing.TB, id, parent string, ttl int64, selectors ...string) apiv1.Entry {
	t.Helper()
	e, err := s.Admin.CreateEntry(Ctx(t), apiv1.EntryCreate{SPIFFEID: id, ParentID: parent, Selectors: selectors, X509SVIDTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// Agent is a running node agent.
type Agent struct {
	Socket string // Workload API socket path
	ID     string // the agent's SPIFFE ID: parent of its workloads' entries
	a      *agent.Agent
}

// StartAgent attests an agent to s with a join token and runs it until the
// test ends.
func StartAgent(t testing.TB, s *Server) *Agent {
	t.Helper()
	tok, err := s.Admin.GenerateToken(Ctx(t), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Unix socket paths are limited to 107 bytes: keep them short.
	sockDir, err := os.MkdirTemp("", "tm-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	set, err := agent.Config{
		Server: s.Addr, TrustDomain: TrustDomain, TrustBundle: s.BundleFile(t), JoinToken: tok.Token,
		Socket: filepath.Join(sockDir, "agent.sock"), DataDir: t.TempDir(),
	}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	set.BackoffBase, set.BackoffMax = 50*time.Millisecond, 500*time.Millisecond
	a, err := agent.New(set, Log())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case <-a.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("agent exited: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("agent not ready")
	}
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return &Agent{Socket: set.Socket, ID: tok.AgentSPIFFEID, a: a}
}

// UIDSelector is this process's unix:uid selector.
func UIDSelector() string { return "unix:uid:" + strconv.Itoa(os.Getuid()) }
