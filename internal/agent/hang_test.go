package agent

import (
	"slices"
	"testing"
	"time"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/apiclient"
	"github.com/trustmesh/trustmesh/internal/server"
)

// hungTimeouts are short client timeouts, so that the test waits seconds
// where a real agent waits tens of seconds.
var hungTimeouts = apiclient.Timeouts{
	Dial:         time.Second,
	TLSHandshake: time.Second,
	Call:         3 * time.Second,
	StreamOpen:   time.Second,
	Ping:         time.Second,
}

// hasEntry reports whether the agent's cache holds entry id.
func (ta *testAgent) hasEntry(id string) bool {
	return slices.ContainsFunc(ta.Cache().Current().Entries, func(e apiv1.Entry) bool { return e.ID == id })
}

// TestWatchSurvivesHungServer: the server stops answering without failing
// (connections accepted and never served, the open ones silent), which no
// call may wait out for ever. The agent notices in bounded time (degraded,
// by log and metric), keeps retrying with backoff, each attempt given up
// within the client's timeouts, and once the server answers new
// connections again it recovers by itself: its watch stream is back,
// carrying a change made meanwhile (the resync safety net is an hour away,
// so nothing else could bring it). Then the same with an agent that starts
// (from its saved SVID) while the server hangs: opening the watch stream,
// its first call, must not block for ever either.
//
// Connections made during the outage stay dead after it, so an agent
// stuck on one (a watch reopened with no bound on the connect, TLS
// handshake or response headers) would never recover.
func TestWatchSurvivesHungServer(t *testing.T) {
	ts := startServerTuned(t, "", "", nil, func(s *server.Settings) { s.WatchHeartbeat = 100 * time.Millisecond })
	proxy := newHangProxy(t, ts.addr)
	set, agentID := agentSettings(t, ts)
	set.Server = proxy.addr()
	set.ResyncInterval = time.Hour
	set.WatchSilence = time.Second // ten missed heartbeats
	set.ServerTimeouts = hungTimeouts
	ta := startAgent(t, set)
	before := ts.entry(t, "spiffe://example.org/before", agentID, 0, uidSelector())
	eventually(t, 10*time.Second, "the watch stream brings the first entry", func() bool { return ta.hasEntry(before.ID) })
	if _, err := fetchOnce(t, ta, 10*time.Second); err != nil {
		t.Fatal(err)
	}

	// The server hangs with the stream open.
	proxy.stall()
	eventually(t, 10*time.Second, "the agent notices the hung server", ta.Degraded)
	if v := testutilGauge(ta.metrics.degraded); v != 1 {
		t.Fatalf("degraded metric = %v, want 1", v)
	}
	// It retries: every attempt ends (its connection given up) and another
	// begins, each on a new connection the hung server leaves unanswered.
	hung := proxy.hung.Load()
	eventually(t, 15*time.Second, "the agent keeps retrying the hung server", func() bool { return proxy.hung.Load() >= hung+3 })
	if !ta.Degraded() {
		t.Fatal("the agent left the degraded state while the server hangs")
	}

	// The server answers new connections again.
	proxy.resume()
	during := ts.entry(t, "spiffe://example.org/during", agentID, 0, uidSelector())
	eventually(t, 15*time.Second, "the agent recovers and its watch stream brings the entry made meanwhile", func() bool {
		return !ta.Degraded() && ta.hasEntry(during.ID)
	})
	if v := testutilGauge(ta.metrics.degraded); v != 0 {
		t.Fatalf("degraded metric = %v after recovery, want 0", v)
	}

	// An agent starting while the server hangs.
	ta.stop(t)
	proxy.stall()
	set.JoinToken = "" // it resumes with its saved SVID: no call before the watch
	ta2 := startAgent(t, set)
	eventually(t, 10*time.Second, "the restarted agent notices the hung server", ta2.Degraded)
	if v := testutilGauge(ta2.metrics.degraded); v != 1 {
		t.Fatalf("restarted agent: degraded metric = %v, want 1", v)
	}
	proxy.resume()
	eventually(t, 15*time.Second, "the restarted agent recovers with the server's state", func() bool {
		return !ta2.Degraded() && ta2.hasEntry(before.ID) && ta2.hasEntry(during.ID)
	})
	if _, err := fetchOnce(t, ta2, 10*time.Second); err != nil {
		t.Fatalf("restarted agent after recovery: %v", err)
	}
}
