package agent

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
)

// hangProxy forwards TCP connections to a server until hang or stall is
// called; from then on it accepts connections and never answers them (nor
// closes them), as a server that is up but stuck would: requests to it
// neither succeed nor fail until the client gives up. hang also cuts the
// connections it was forwarding; stall leaves them open and passes nothing
// more on them, as a stuck server does. resume forwards new connections
// again; those accepted or stalled during the outage stay dead (open,
// never answered), as behind a load balancer that lost its backend: only a
// client that gives up on them and connects afresh gets through.
type hangProxy struct {
	ln     net.Listener
	target string
	hung   atomic.Int64 // connections accepted and left unanswered

	mu      sync.Mutex
	hanging bool
	gen     int // outages so far: a connection forwarded in an earlier one is stalled
	closed  bool
	conns   []net.Conn
	done    chan struct{} // closed by close: stalled copies end
}

func newHangProxy(t *testing.T, target string) *hangProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &hangProxy{ln: ln, target: target, done: make(chan struct{})}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *hangProxy) addr() string { return p.ln.Addr().String() }

// track remembers c for closing; false if it was closed at once instead
// (the proxy hangs or is closed now).
func (p *hangProxy) track(c net.Conn, hangOK bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || (p.hanging && !hangOK) {
		c.Close()
		return false
	}
	p.conns = append(p.conns, c)
	return true
}

func (p *hangProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c, true) {
			continue
		}
		p.mu.Lock()
		hanging, gen := p.hanging, p.gen
		p.mu.Unlock()
		if hanging {
			p.hung.Add(1) // accepted: never read from, written to or closed
			continue
		}
		go p.forward(c, gen)
	}
}

func (p *hangProxy) forward(c net.Conn, gen int) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	if !p.track(up, false) {
		c.Close()
		return
	}
	go func() {
		p.copy(up, c, gen)
		up.Close()
	}()
	p.copy(c, up, gen)
	c.Close()
}

// copy forwards src to dst while the connection's generation is current;
// once stalled it holds what it reads until the proxy closes.
func (p *hangProxy) copy(dst, src net.Conn, gen int) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			pass := p.gen == gen
			p.mu.Unlock()
			if !pass {
				<-p.done
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// hang cuts every forwarded connection and leaves new ones unanswered.
func (p *hangProxy) hang() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hanging = true
	p.gen++
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// stall leaves new connections unanswered and passes nothing more on the
// forwarded ones, closing none.
func (p *hangProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hanging = true
	p.gen++
}

// resume forwards new connections again.
func (p *hangProxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hanging = false
}

func (p *hangProxy) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	close(p.done)
	p.ln.Close()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestExpiryWhileServerHangs: the server stops answering without failing
// (connections accepted, never served), so the agent's rotation request
// waits out the client's 30s timeout. The SVID must still leave the
// workload's streams at its expiry, not when that request gives up: the
// Workload API stream ends (Unavailable: nothing valid to send), the SDS
// stream gets an answer without it, and a workload asking afresh gets
// nothing, as in TestServerOutage.
func TestExpiryWhileServerHangs(t *testing.T) {
	ts := startServer(t, "", "", nil)
	proxy := newHangProxy(t, ts.addr)
	set, agentID := agentSettings(t, ts)
	set.Server = proxy.addr()
	e := ts.entry(t, "spiffe://example.org/stuck", agentID, 10, uidSelector())
	ta := startAgent(t, set)
	ctx := ctxT(t)

	stream, err := rawClient(t, ta).FetchX509SVID(withHeader(ctx), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	leaf := leafOf(t, first).Certificates[0]
	sdsStream, err := sdsClient(t, ta).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{DefaultSVIDName, DefaultBundleName}
	if err := sdsStream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: SecretTypeURL, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	sdsResp, err := sdsStream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	secrets := secretsByName(t, sdsResp)
	if len(secrets) != 2 || !certOf(t, secrets[DefaultSVIDName]).Certificates[0].Equal(leaf) {
		t.Fatalf("SDS before the outage: secrets %v", keys(secrets))
	}

	proxy.hang()
	if sv := ta.Cache().Current().SVIDs[e.ID]; sv == nil || !sv.NotAfter.Equal(leaf.NotAfter) {
		t.Fatal("the SVID rotated before the server hung: the test would prove nothing")
	}
	if life := time.Until(leaf.NotAfter); life < 3*time.Second {
		t.Fatalf("only %s of SVID life left when the server hung: the agent is too slow for this test", life)
	}
	// Requests now hang: the watch reconnects at once, and the rotation
	// (due at about half the SVID's life) will too.
	eventually(t, 5*time.Second, "the agent reaches the hung server", func() bool { return proxy.hung.Load() > 0 })

	// Both streams must answer within a moment of the expiry. Without the
	// expiry timer they would wait for the svidLoop, stuck until ~30s after
	// the rotation began.
	deadline := time.NewTimer(time.Until(leaf.NotAfter) + 2*time.Second)
	defer deadline.Stop()
	type x509Next struct {
		resp *workload.X509SVIDResponse
		err  error
	}
	type sdsNext struct {
		resp *discoveryv3.DiscoveryResponse
		err  error
	}
	x509Ch, sdsCh := make(chan x509Next, 1), make(chan sdsNext, 1)
	go func() {
		resp, err := stream.Recv()
		x509Ch <- x509Next{resp, err}
	}()
	go func() {
		resp, err := sdsStream.Recv()
		sdsCh <- sdsNext{resp, err}
	}()
	for x509Ch != nil || sdsCh != nil {
		select {
		case r := <-x509Ch:
			if r.err == nil {
				t.Fatalf("Workload API stream got a message during the outage: %d SVIDs", len(r.resp.Svids))
			}
			if now := time.Now(); now.Before(leaf.NotAfter) {
				t.Fatalf("Workload API stream ended %s before the SVID expired: %v", leaf.NotAfter.Sub(now), r.err)
			}
			if status.Code(r.err) != codes.Unavailable {
				t.Fatalf("Workload API stream ended with %v, want Unavailable", r.err)
			}
			x509Ch = nil
		case r := <-sdsCh:
			if r.err != nil {
				t.Fatalf("SDS stream: %v", r.err)
			}
			if now := time.Now(); now.Before(leaf.NotAfter) {
				t.Fatalf("SDS answered %s before the SVID expired", leaf.NotAfter.Sub(now))
			}
			secrets := secretsByName(t, r.resp)
			if _, ok := secrets[DefaultSVIDName]; ok || len(secrets) != 1 || secrets[DefaultBundleName] == nil {
				t.Fatalf("SDS after expiry serves %v, want only %s", keys(secrets), DefaultBundleName)
			}
			sdsCh = nil
		case <-deadline.C:
			t.Fatalf("2s after the SVID expired the streams still carry it (Workload API done: %v, SDS done: %v; SVIDs cached: %d)",
				x509Ch == nil, sdsCh == nil, len(ta.Cache().Current().SVIDs))
		}
	}
	if n := len(ta.Cache().Current().SVIDs); n != 0 {
		t.Fatalf("%d SVIDs still cached after expiry", n)
	}
	if proxy.hung.Load() == 0 {
		t.Fatal("no request reached the hung server")
	}

	// A workload starting now is entitled but gets nothing until its
	// deadline (TestServerOutage); SDS leaves the SVID out.
	if resp, err := fetchOnce(t, ta, 2*time.Second); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("fresh FetchX509SVID after expiry: %v %v", resp, err)
	}
	unary, err := sdsClient(t, ta).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: SecretTypeURL, ResourceNames: names})
	if err != nil {
		t.Fatal(err)
	}
	if secrets := secretsByName(t, unary); len(secrets) != 1 || secrets[DefaultBundleName] == nil {
		t.Fatalf("FetchSecrets after expiry serves %v", keys(secrets))
	}
}

// TestMatchLeavesOutExpired: what has expired is not served even before
// the cache drops it: the check is made when answering, by the clock.
func TestMatchLeavesOutExpired(t *testing.T) {
	now := time.Now()
	id := spiffeid.RequireFromString("spiffe://example.org/w")
	soon, later := now.Add(time.Second), now.Add(time.Hour)
	c := NewCache()
	c.SetState([]apiv1.Entry{
		{ID: "a", SPIFFEID: id.String(), Selectors: []string{"s:1"}},
		{ID: "b", SPIFFEID: id.String(), Selectors: []string{"s:1"}},
		{ID: "c", SPIFFEID: "spiffe://example.org/brief", Selectors: []string{"s:2"}, ExpiresAt: &soon},
	}, nil, now)
	c.PutSVIDs([]*SVID{
		{EntryID: "a", ID: id, NotAfter: soon},
		{EntryID: "b", ID: id, NotAfter: later},
	})
	snap := c.Current()
	sels := map[string]struct{}{"s:1": {}, "s:2": {}}

	matched, svids := snap.Match(sels, now)
	if !matched || len(svids) != 1 || svids[0].EntryID != "a" || len(snap.MatchEntries(sels, now)) != 2 {
		t.Fatalf("before expiry: matched %v, %d SVIDs", matched, len(svids))
	}
	matched, svids = snap.Match(sels, soon)
	if !matched || len(svids) != 1 || svids[0].EntryID != "b" {
		t.Fatalf("at a's expiry: matched %v, SVIDs %v (want b's, the same ID's unexpired one)", matched, svids)
	}
	if es := snap.MatchEntries(sels, soon); len(es) != 1 || es[0].ID != "a" {
		t.Fatalf("at c's expiry: entries %v", es)
	}
	if matched, _ := snap.Match(map[string]struct{}{"s:2": {}}, soon); matched {
		t.Fatal("an expired entry still matches")
	}
	if matched, svids := snap.Match(sels, later); !matched || len(svids) != 0 {
		t.Fatalf("after every SVID expired: matched %v, %d SVIDs (want entitled, none)", matched, len(svids))
	}
	if next, ok := snap.nextExpiry(); !ok || !next.Equal(soon) {
		t.Fatalf("nextExpiry = %v %v, want %v", next, ok, soon)
	}
}
