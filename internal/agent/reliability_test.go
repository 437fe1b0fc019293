package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fetchOnce opens a fresh FetchX509SVID stream and returns its first
// message (what a workload starting now would get).
func fetchOnce(t *testing.T, ta *testAgent, within time.Duration) (*workload.X509SVIDResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	stream, err := rawClient(t, ta).FetchX509SVID(withHeader(ctx), &workload.X509SVIDRequest{})
	if err != nil {
		return nil, err
	}
	return stream.Recv()
}

func leafOf(t *testing.T, resp *workload.X509SVIDResponse) *x509svid.SVID {
	t.Helper()
	svid, err := x509svid.ParseRaw(resp.Svids[0].X509Svid, resp.Svids[0].X509SvidKey)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

// TestServerOutage: with the server stopped the agent keeps serving the
// cached SVID for its remaining life (and says it is degraded), stops
// serving it once expired, and recovers by itself when the server returns.
func TestServerOutage(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, "", nil)
	addr := ts.addr
	set, agentID := agentSettings(t, ts)
	ts.entry(t, "spiffe://example.org/resilient", agentID, 10, uidSelector())
	ta := startAgent(t, set)
	resp, err := fetchOnce(t, ta, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cached := leafOf(t, resp).Certificates[0]

	ts.stop()
	eventually(t, 20*time.Second, "agent reports degraded", ta.Degraded)
	if v := testutilGauge(ta.metrics.degraded); v != 1 {
		t.Fatalf("degraded metric = %v", v)
	}
	// A workload starting during the outage still gets an identity.
	for time.Until(cached.NotAfter) > time.Second {
		resp, err := fetchOnce(t, ta, 5*time.Second)
		if err != nil {
			t.Fatalf("during the outage, with %s of SVID life left: %v", time.Until(cached.NotAfter), err)
		}
		if leaf := leafOf(t, resp).Certificates[0]; !leaf.Equal(cached) && time.Now().Before(leaf.NotAfter) {
			// A rotation that completed just before the stop is fine too.
			cached = leaf
		}
		time.Sleep(500 * time.Millisecond)
	}
	// Past its expiry the SVID is dropped (not before), and then not
	// served: a new stream gets nothing until its deadline.
	eventually(t, time.Until(cached.NotAfter)+10*time.Second, "agent drops the expired SVID", func() bool {
		return len(ta.Cache().Current().SVIDs) == 0
	})
	if now := time.Now(); now.Before(cached.NotAfter) {
		t.Fatalf("SVID dropped %s before its expiry", cached.NotAfter.Sub(now))
	}
	if resp, err := fetchOnce(t, ta, 2*time.Second); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("after expiry during the outage: %v %v", resp, err)
	}

	startServer(t, dir, addr, nil) // same data dir (CA, registry) and address
	eventually(t, 30*time.Second, "agent recovers", func() bool { return !ta.Degraded() })
	resp, err = fetchOnce(t, ta, 30*time.Second)
	if err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	if fresh := leafOf(t, resp).Certificates[0]; !time.Now().Before(fresh.NotAfter) || fresh.Equal(cached) {
		t.Fatal("after recovery the agent does not serve a fresh SVID")
	}
}

func testutilGauge(g interface{ Write(*dtoMetric) error }) float64 {
	var m dtoMetric
	if err := g.Write(&m); err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}

// TestRotationUnderLoad: two workloads talk mTLS (go-spiffe's spiffetls
// configs, identities from this agent) continuously, one TLS handshake per
// request, through at least three rotations of each SVID: no request may
// fail.
func TestRotationUnderLoad(t *testing.T) {
	ts := startServer(t, "", "", nil)
	set, agentID := agentSettings(t, ts)
	serverID := spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/api")
	clientID := spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/frontend")
	ts.entry(t, serverID.String(), agentID, 10, uidSelector())
	ts.entry(t, clientID.String(), agentID, 10, uidSelector())
	ta := startAgent(t, set)
	ctx := ctxT(t)
	// Both workloads run as this test's uid, so both are entitled to both
	// identities; each picks its own, as a workload with several SVIDs does.
	source := func(id spiffeid.ID) *workloadapi.X509Source {
		src, err := workloadapi.NewX509Source(ctx, ta.clientOpt(), workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, s := range svids {
				if s.ID == id {
					return s
				}
			}
			return svids[0]
		}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		return src
	}
	srvSrc, cliSrc := source(serverID), source(clientID)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int64
	httpSrv := &http.Server{
		TLSConfig: tlsconfig.MTLSServerConfig(srvSrc, srvSrc, tlsconfig.AuthorizeID(clientID)),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			served.Add(1)
			fmt.Fprint(w, "ok")
		}),
	}
	go httpSrv.ServeTLS(ln, "", "")
	defer httpSrv.Close()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   tlsconfig.MTLSClientConfig(cliSrc, cliSrc, tlsconfig.AuthorizeID(serverID)),
		DisableKeepAlives: true, // a handshake per request: every rotation is exercised
	}}
	url := "https://" + ln.Addr().String() + "/"

	serial := func(src *workloadapi.X509Source) string {
		s, err := src.GetX509SVID()
		if err != nil {
			return ""
		}
		return s.Certificates[0].SerialNumber.String()
	}
	seen := map[string]map[string]bool{"server": {}, "client": {}}
	var requests, failures int
	deadline := time.Now().Add(90 * time.Second)
	for len(seen["server"]) < 4 || len(seen["client"]) < 4 { // the first SVID plus three rotations
		if time.Now().After(deadline) {
			t.Fatalf("only %d server and %d client SVIDs seen in 90s", len(seen["server"]), len(seen["client"]))
		}
		seen["server"][serial(srvSrc)] = true
		seen["client"][serial(cliSrc)] = true
		resp, err := client.Get(url)
		requests++
		if err != nil {
			failures++
			t.Errorf("request %d failed: %v", requests, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "ok" {
			failures++
			t.Errorf("request %d: %s %q", requests, resp.Status, body)
		}
	}
	if failures != 0 || served.Load() != int64(requests) {
		t.Fatalf("%d of %d requests failed (%d served)", failures, requests, served.Load())
	}
	t.Logf("%d requests, 0 failed, through %d server and %d client SVIDs", requests, len(seen["server"]), len(seen["client"]))

	// The spiffetls package end to end, once more, on the current SVIDs.
	l, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0", spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(clientID), srvSrc))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "hello\n")
	}()
	conn, err := spiffetls.DialWithMode(ctx, "tcp", l.Addr().String(), spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(serverID), cliSrc))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	line, _ := io.ReadAll(conn)
	if string(line) != "hello\n" {
		t.Fatalf("spiffetls read %q", line)
	}
	if conn.(interface{ ConnectionState() tls.ConnectionState }).ConnectionState().Version != tls.VersionTLS13 {
		t.Log("note: spiffetls negotiated below TLS 1.3")
	}
}

// TestRestartResumesWithoutToken: the agent's SVID is saved, so a restart
// needs no new join token and creates no new agent.
func TestRestartResumesWithoutToken(t *testing.T) {
	ts := startServer(t, "", "", nil)
	set, agentID := agentSettings(t, ts)
	ts.entry(t, "spiffe://example.org/w", agentID, 0, uidSelector())
	ta := startAgent(t, set)
	if _, err := fetchOnce(t, ta, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	ta.stop(t)
	set.JoinToken = "" // spent anyway
	ta2 := startAgent(t, set)
	if ta2.node.ID().String() != agentID {
		t.Fatalf("restarted agent is %s, want %s", ta2.node.ID(), agentID)
	}
	if _, err := fetchOnce(t, ta2, 20*time.Second); err != nil {
		t.Fatalf("restarted agent: %v", err)
	}
	agents, err := ts.admin.ListAgents(ctxT(t))
	if err != nil || len(agents) != 1 {
		t.Fatalf("agents after restart = %d (%v), want 1", len(agents), err)
	}
}

// runUntilExit runs an agent and returns its Run error.
func runUntilExit(t *testing.T, set Settings) (*Agent, <-chan error) {
	t.Helper()
	a, err := New(set, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	return a, done
}

func waitExit(t *testing.T, done <-chan error, want error) {
	t.Helper()
	select {
	case err := <-done:
		if !errors.Is(err, want) {
			t.Fatalf("agent exited with %v, want %v", err, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("agent did not stop with %v within 30s", want)
	}
}

// TestEvictedAndBannedAgents: an evicted join-token agent stops with a
// clear error (its token is spent); a banned one too, and may not attest.
func TestEvictedAndBannedAgents(t *testing.T) {
	ts := startServer(t, "", "", nil)
	set, agentID := agentSettings(t, ts)
	a, done := runUntilExit(t, set)
	<-a.Ready()
	if _, err := ts.admin.EvictAgent(ctxT(t), agentID); err != nil {
		t.Fatal(err)
	}
	waitExit(t, done, ErrMustReattest)

	set2, agentID2 := agentSettings(t, ts)
	a2, done2 := runUntilExit(t, set2)
	<-a2.Ready()
	if _, err := ts.admin.BanAgent(ctxT(t), agentID2); err != nil {
		t.Fatal(err)
	}
	waitExit(t, done2, ErrBanned)
}

// TestEvictedWhileStopped: an agent evicted while it was down learns it
// when it reconnects (the refusal at connect time, not a pushed event).
func TestEvictedWhileStopped(t *testing.T) {
	ts := startServer(t, "", "", nil)
	set, agentID := agentSettings(t, ts)
	ta := startAgent(t, set)
	ta.stop(t)
	if _, err := ts.admin.EvictAgent(ctxT(t), agentID); err != nil {
		t.Fatal(err)
	}
	set.JoinToken = ""
	_, done := runUntilExit(t, set)
	waitExit(t, done, ErrMustReattest)
}
