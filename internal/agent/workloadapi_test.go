package agent

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/server"
)

// TestGoSpiffeClients: go-spiffe's own workloadapi client, unchanged, gets
// X.509-SVIDs, bundles and JWT-SVIDs from the agent and validates JWTs.
func TestGoSpiffeClients(t *testing.T) {
	ts := startServer(t, "", "", nil)
	set, agentID := agentSettings(t, ts)
	e := ts.entry(t, "spiffe://example.org/ns/default/sa/api", agentID, 0, uidSelector())
	ta := startAgent(t, set)
	ctx := ctxT(t)

	x509Src, err := workloadapi.NewX509Source(ctx, ta.clientOpt())
	if err != nil {
		t.Fatal(err)
	}
	defer x509Src.Close()
	svid, err := x509Src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != e.SPIFFEID {
		t.Fatalf("workload got %s", svid.ID)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, x509Src); err != nil {
		t.Fatalf("SVID does not verify against the Workload API bundle: %v", err)
	}

	client, err := workloadapi.New(ctx, workloadapi.WithAddr(ta.addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	bundles, err := client.FetchX509Bundles(ctx)
	if err != nil || bundles.Len() != 1 {
		t.Fatalf("FetchX509Bundles: %v", err)
	}
	jwt, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "spiffe://example.org/db"})
	if err != nil {
		t.Fatal(err)
	}
	if jwt.ID.String() != e.SPIFFEID {
		t.Fatalf("JWT-SVID for %s", jwt.ID)
	}
	validated, err := client.ValidateJWTSVID(ctx, jwt.Marshal(), "spiffe://example.org/db")
	if err != nil || validated.ID.String() != e.SPIFFEID {
		t.Fatalf("ValidateJWTSVID: %v %v", validated, err)
	}
	if _, err := client.ValidateJWTSVID(ctx, jwt.Marshal(), "someone-else"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("validate for the wrong audience: %v", err)
	}
	if _, err := client.ValidateJWTSVID(ctx, "not-a-jwt", "spiffe://example.org/db"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("validate garbage: %v", err)
	}
	jwtSrc, err := workloadapi.NewJWTSource(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(ta.addr())))
	if err != nil {
		t.Fatal(err)
	}
	defer jwtSrc.Close()
	if _, err := jwtsvid.ParseAndValidate(jwt.Marshal(), jwtSrc, []string{"spiffe://example.org/db"}); err != nil {
		t.Fatalf("JWTSource bundle does not validate the JWT-SVID: %v", err)
	}
	// Same audience again: served from the agent's JWT cache.
	again, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "spiffe://example.org/db"})
	if err != nil || again.Marshal() != jwt.Marshal() {
		t.Fatalf("second JWT fetch: %v", err)
	}
}

// TestJWTCacheAudiencesDoNotCollide: audience sets that would join to the
// same string each get their own JWT-SVID from the agent's cache.
func TestJWTCacheAudiencesDoNotCollide(t *testing.T) {
	ts := startServer(t, "", "", nil)
	set, agentID := agentSettings(t, ts)
	ts.entry(t, "spiffe://example.org/ns/default/sa/api", agentID, 0, uidSelector())
	ta := startAgent(t, set)
	c := rawClient(t, ta)
	ctx := withHeader(ctxT(t))
	for _, aud := range [][]string{{"x", "y"}, {"x\x00y"}, {"x\x00", "y"}, {"x", "\x00y"}, {"y", "x"}} {
		resp, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: aud})
		if err != nil {
			t.Fatalf("FetchJWTSVID(%q): %v", aud, err)
		}
		tok, err := jwtsvid.ParseInsecure(resp.Svids[0].Svid, aud)
		if err != nil {
			t.Fatal(err)
		}
		got := append([]string(nil), tok.Audience...)
		want := append([]string(nil), aud...)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("asked for audience %q, got a JWT-SVID for %q", aud, tok.Audience)
		}
	}
}

func rawClient(t *testing.T, ta *testAgent) workload.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient(ta.addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

// TestWorkloadAPIRules: the security header is mandatory; a caller
// matching no entry is refused; arguments are checked.
func TestWorkloadAPIRules(t *testing.T) {
	ts := startServer(t, "", "", nil)
	set, agentID := agentSettings(t, ts)
	ts.entry(t, "spiffe://example.org/someone-else", agentID, 0, "unix:uid:999999")
	ta := startAgent(t, set)
	c := rawClient(t, ta)
	ctx := ctxT(t)

	stream, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "security header") {
		t.Fatalf("no security header: %v", err)
	}
	stream, err = c.FetchX509SVID(withHeader(ctx), &workload.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("caller without an entry: %v", err)
	}
	if _, err := c.FetchJWTSVID(withHeader(ctx), &workload.JWTSVIDRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("JWT without audience: %v", err)
	}
	if _, err := c.FetchJWTSVID(withHeader(ctx), &workload.JWTSVIDRequest{Audience: []string{"a"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("JWT for a caller without an entry: %v", err)
	}
	// Validating is for workloads with an identity too, even with a JWT-SVID
	// that is valid.
	valid, err := ts.admin.MintJWT(ctx, apiv1.JWTMintRequest{SPIFFEID: "spiffe://example.org/someone-else", Audience: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ValidateJWTSVID(withHeader(ctx), &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: valid.Token}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("validate for a caller without an entry: %v", err)
	}
	if _, err := c.ValidateJWTSVID(withHeader(ctx), &workload.ValidateJWTSVIDRequest{Audience: "a"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("validate without svid: %v", err)
	}
	if _, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: "x"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("validate without header: %v", err)
	}
}

// TestEntryChangesArePushed: with the periodic resync out of the way, an
// entry created after the workload connected reaches it through the watch
// stream, and a deleted entry's SVID stops being served.
func TestEntryChangesArePushed(t *testing.T) {
	ts := startServer(t, "", "", nil)
	set, agentID := agentSettings(t, ts)
	set.ResyncInterval = time.Hour
	first := ts.entry(t, "spiffe://example.org/first", agentID, 0, uidSelector())
	ta := startAgent(t, set)
	ctx := ctxT(t)
	stream, err := rawClient(t, ta).FetchX509SVID(withHeader(ctx), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || len(resp.Svids) != 1 || resp.Svids[0].SpiffeId != first.SPIFFEID {
		t.Fatalf("first message: %v %v", resp, err)
	}
	second := ts.entry(t, "spiffe://example.org/second", agentID, 0, uidSelector())
	resp, err = stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{}
	for _, s := range resp.Svids {
		ids = append(ids, s.SpiffeId)
	}
	if strings.Join(ids, ",") != first.SPIFFEID+","+second.SPIFFEID {
		t.Fatalf("after creating a second entry the stream carries %v", ids)
	}
	// Every message carries the full state, each SVID with key and bundle.
	for _, s := range resp.Svids {
		if len(s.X509SvidKey) == 0 || len(s.Bundle) == 0 {
			t.Fatal("SVID message without key or bundle")
		}
	}
	if _, err := ts.admin.DeleteEntry(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	resp, err = stream.Recv()
	if err != nil || len(resp.Svids) != 1 || resp.Svids[0].SpiffeId != second.SPIFFEID {
		t.Fatalf("after deleting the first entry: %v %v", resp, err)
	}
	if _, err := ts.admin.DeleteEntry(ctx, second.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after deleting the last entry the stream must end with PermissionDenied, got %v", err)
	}
	if n := ta.metrics.syncs.WithLabelValues("resync"); testutilCount(n) != 0 {
		t.Fatal("a resync ran: the changes may not have come from the watch stream")
	}
}

// recvX509 receives a stream's messages on a channel until the stream
// ends.
func recvX509(ctx context.Context, stream grpc.ServerStreamingClient[workload.X509SVIDResponse]) <-chan *workload.X509SVIDResponse {
	out := make(chan *workload.X509SVIDResponse)
	go func() {
		defer close(out)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case out <- resp:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// waitForSVID waits until a message on msgs carries id, failing at
// deadline, and returns when it arrived.
func waitForSVID(t *testing.T, msgs <-chan *workload.X509SVIDResponse, id string, deadline time.Time) time.Time {
	t.Helper()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		select {
		case resp, ok := <-msgs:
			if !ok {
				t.Fatalf("stream ended before %s arrived", id)
			}
			for _, s := range resp.Svids {
				if s.SpiffeId == id {
					return time.Now()
				}
			}
		case <-timer.C:
			t.Fatalf("%s did not reach the workload stream by the deadline", id)
		}
	}
}

// TestPushedEntryReachesStreamWithin1s: with the server's default watch
// poll and the resync out of the way, an entry created while a workload is
// connected reaches its stream in under a second. (The acceptance bound for
// push, not a performance target: the poll alone is 200ms.)
func TestPushedEntryReachesStreamWithin1s(t *testing.T) {
	defaults, err := server.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	ts := startServerTuned(t, "", "", nil, func(s *server.Settings) { s.WatchPoll = defaults.WatchPoll })
	set, agentID := agentSettings(t, ts)
	set.ResyncInterval = time.Hour
	first := ts.entry(t, "spiffe://example.org/first", agentID, 0, uidSelector())
	ta := startAgent(t, set)
	ctx := ctxT(t)
	stream, err := rawClient(t, ta).FetchX509SVID(withHeader(ctx), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	msgs := recvX509(ctx, stream)
	waitForSVID(t, msgs, first.SPIFFEID, time.Now().Add(30*time.Second))

	start := time.Now()
	second := ts.entry(t, "spiffe://example.org/second", agentID, 0, uidSelector())
	// Wait past the bound, so a slow push is measured rather than cut off.
	elapsed := waitForSVID(t, msgs, second.SPIFFEID, start.Add(10*time.Second)).Sub(start)
	if elapsed > time.Second {
		t.Fatalf("the new entry reached the workload after %s, want under 1s", elapsed)
	}
	t.Logf("entry created to SVID on the workload stream: %s", elapsed)
	if n := testutilCount(ta.metrics.syncs.WithLabelValues("resync")); n != 0 {
		t.Fatal("a resync ran: the change may not have come from the watch stream")
	}
}

// TestResyncDeliversWhatTheWatchMissed: the server polls for changes only
// hourly, so its watch stream never carries the new entry; the agent's
// periodic full resync must.
func TestResyncDeliversWhatTheWatchMissed(t *testing.T) {
	ts := startServerTuned(t, "", "", nil, func(s *server.Settings) { s.WatchPoll = time.Hour })
	set, agentID := agentSettings(t, ts)
	set.ResyncInterval = time.Second
	first := ts.entry(t, "spiffe://example.org/first", agentID, 0, uidSelector())
	ta := startAgent(t, set)
	ctx := ctxT(t)
	stream, err := rawClient(t, ta).FetchX509SVID(withHeader(ctx), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	msgs := recvX509(ctx, stream)
	waitForSVID(t, msgs, first.SPIFFEID, time.Now().Add(30*time.Second))

	watched := testutilCount(ta.metrics.syncs.WithLabelValues("watch"))
	resynced := testutilCount(ta.metrics.syncs.WithLabelValues("resync"))
	second := ts.entry(t, "spiffe://example.org/second", agentID, 0, uidSelector())
	waitForSVID(t, msgs, second.SPIFFEID, time.Now().Add(15*time.Second))
	if n := testutilCount(ta.metrics.syncs.WithLabelValues("resync")); n <= resynced || n <= 0 {
		t.Fatalf("resync metric %v (was %v before the change): the entry did not come from a resync", n, resynced)
	}
	if n := testutilCount(ta.metrics.syncs.WithLabelValues("watch")); n != watched {
		t.Fatalf("the watch stream delivered a state (%v, was %v): it did not miss the change", n, watched)
	}
}

// TestTTLsDownTo10sRotate: SVIDs with a 10s TTL rotate before they expire.
func TestTTLsDownTo10sRotate(t *testing.T) {
	ts := startServer(t, "", "", nil)
	set, agentID := agentSettings(t, ts)
	ts.entry(t, "spiffe://example.org/short", agentID, 10, uidSelector())
	ta := startAgent(t, set)
	ctx := ctxT(t)
	src, err := workloadapi.NewX509Source(ctx, ta.clientOpt())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	first, _ := src.GetX509SVID()
	if life := first.Certificates[0].NotAfter.Sub(time.Now()); life > 11*time.Second {
		t.Fatalf("SVID lives %s, want about 10s", life)
	}
	eventually(t, 30*time.Second, "rotation", func() bool {
		cur, err := src.GetX509SVID()
		return err == nil && cur.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	})
	cur, _ := src.GetX509SVID()
	if !cur.Certificates[0].NotAfter.After(first.Certificates[0].NotAfter) {
		t.Fatal("the rotated SVID does not outlive the first")
	}
	if !time.Now().Before(first.Certificates[0].NotAfter) {
		t.Fatal("rotation came after the old SVID expired")
	}
}

// TestStreamEndsWithContextStatus: a Workload API stream has no natural
// end, so one whose caller's context ends reports why, never OK. (With
// OK, a caller whose deadline passes sees either DeadlineExceeded or a
// clean io.EOF, depending on which end notices the deadline first.)
func TestStreamEndsWithContextStatus(t *testing.T) {
	c := NewCache()
	c.SetState(nil, nil, time.Now()) // synced, nothing to serve
	w := &workloads{cache: c, metrics: newAgentMetrics(), log: discardLog(), stopping: make(chan struct{})}
	build := func(*Snapshot) (proto.Message, error) { return nil, nil }
	send := func(proto.Message) error {
		t.Error("stream sent a message with nothing to serve")
		return nil
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := w.stream(ctx, "FetchX509SVID", build, send); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("stream past its deadline ended with %v, want DeadlineExceeded", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if err := w.stream(ctx, "FetchX509SVID", build, send); status.Code(err) != codes.Canceled {
		t.Errorf("canceled stream ended with %v, want Canceled", err)
	}
}
