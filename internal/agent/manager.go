package agent

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/identity"
)

// maxBatch is how many SVIDs one request to the server asks for.
const maxBatch = 500

// rotationJitter: SVIDs renew at half-life minus up to this fraction of
// their life, spreading renewals of SVIDs issued together.
const rotationJitter = 0.1

// manager keeps the cache current: it follows the server's watch stream
// (with a periodic full resync as a safety net), fetches SVIDs for new
// entries before any workload asks, rotates them at half-life, and, when
// the server cannot be reached, keeps serving what it has and retries with
// exponential backoff.
type manager struct {
	set     Settings
	log     *slog.Logger
	node    *node
	cache   *Cache
	metrics *agentMetrics
	health  *health
	now     func() time.Time

	wake    chan struct{} // entries changed: reconcile SVIDs now
	renewed chan struct{} // agent SVID renewed: reopen the watch with it
}

func newManager(set Settings, log *slog.Logger, n *node, c *Cache, m *agentMetrics) *manager {
	return &manager{
		set: set, log: log, node: n, cache: c, metrics: m, now: time.Now,
		health:  &health{log: log, metrics: m},
		wake:    make(chan struct{}, 1),
		renewed: make(chan struct{}, 1),
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// fatal errors stop the agent.
func fatal(err error) bool { return errors.Is(err, ErrBanned) || errors.Is(err, ErrMustReattest) }

// watchLoop follows the watch stream until ctx ends or a fatal error.
func (m *manager) watchLoop(ctx context.Context) error {
	b := backoff{base: m.set.BackoffBase, max: m.set.BackoffMax}
	resync := time.NewTimer(m.set.ResyncInterval)
	defer resync.Stop()
	for ctx.Err() == nil {
		healthy, err := m.watchOnce(ctx, resync)
		if healthy || err == nil {
			b.reset()
		}
		if err == nil {
			continue
		}
		if rerr := m.node.Recover(ctx, err); rerr != nil {
			if fatal(rerr) {
				return rerr
			}
			err = rerr
		}
		m.health.fail(err)
		if !sleep(ctx, b.next()) {
			return nil
		}
	}
	return nil
}

type watchResult struct {
	ev  apiv1.WatchEvent
	err error
}

// watchOnce runs one watch stream; nil means "reconnect at once". healthy
// says the stream worked for a while (at least the longest backoff), so a
// failure after it is a new outage: the backoff starts over.
//
// Every step is bounded, so that a server that accepts connections and
// never answers is noticed (the error makes the caller mark the agent
// degraded and retry with backoff): opening the stream by the client's
// timeouts (connect, TLS handshake, response headers), and the open
// stream by WatchSilence: no first event, or no event or heartbeat since
// the last one, for that long ends it.
func (m *manager) watchOnce(ctx context.Context, resync *time.Timer) (healthy bool, err error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := m.node.client.Watch(wctx)
	if err != nil {
		return false, fmt.Errorf("open watch stream: %w", err)
	}
	defer stream.Close()
	events := make(chan watchResult)
	go func() {
		for {
			ev, err := stream.Next()
			select {
			case events <- watchResult{ev, err}:
			case <-wctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	var since time.Time // first event
	defer func() { healthy = !since.IsZero() && time.Since(since) >= m.set.BackoffMax }()
	silence := time.NewTimer(m.set.WatchSilence)
	defer silence.Stop()
	for {
		select {
		case r := <-events:
			if r.err != nil {
				return false, fmt.Errorf("watch stream: %w", r.err)
			}
			if since.IsZero() {
				since = time.Now()
			}
			silence.Reset(m.set.WatchSilence)
			m.health.ok()
			if r.ev.Kind == apiv1.WatchState {
				m.metrics.syncs.WithLabelValues("watch").Inc()
				m.apply(r.ev.Entries, r.ev.Bundle)
			}
		case <-silence.C:
			return false, errors.New("watch stream silent: no event or heartbeat from the server")
		case <-resync.C:
			err := m.resync(ctx)
			resync.Reset(m.set.ResyncInterval)
			if err != nil {
				return false, err
			}
		case <-m.renewed:
			return false, nil
		case <-ctx.Done():
			return false, nil
		}
	}
}

// resync fetches the full state outside the stream: the safety net for a
// stream that silently missed something.
func (m *manager) resync(ctx context.Context) error {
	entries, err := m.node.client.AgentEntries(ctx)
	if err != nil {
		return fmt.Errorf("resync entries: %w", err)
	}
	bundle, err := m.node.client.Bundle(ctx, "spiffe")
	if err != nil {
		return fmt.Errorf("resync bundle: %w", err)
	}
	m.metrics.syncs.WithLabelValues("resync").Inc()
	m.apply(entries, bundle)
	return nil
}

func (m *manager) apply(entries []apiv1.Entry, bundleJSON []byte) {
	var b *spiffebundle.Bundle
	if len(bundleJSON) > 0 {
		parsed, err := spiffebundle.Parse(m.node.td, bundleJSON)
		if err != nil {
			m.log.Warn("ignoring an unparsable bundle from the server", "error", err)
		} else {
			b = parsed
			m.node.SetBundle(b)
		}
	}
	m.cache.SetState(entries, b, m.now())
	m.metrics.entries.Set(float64(len(m.cache.Current().Entries)))
	signal(m.wake)
}

// svidLoop issues and rotates SVIDs, and renews the agent's own.
func (m *manager) svidLoop(ctx context.Context) error {
	b := backoff{base: m.set.BackoffBase, max: m.set.BackoffMax}
	for ctx.Err() == nil {
		now := m.now()
		var err error
		before := m.node.renewAt.Load()
		if rerr := m.node.RenewDue(ctx, now); rerr != nil {
			err = fmt.Errorf("renew agent SVID: %w", rerr)
		} else if m.node.renewAt.Load() != before {
			signal(m.renewed)
		}
		m.dropExpired(now)
		if err == nil {
			err = m.reconcile(ctx, now)
		}
		wait := m.nextWake(now)
		if err != nil {
			if rerr := m.node.Recover(ctx, err); rerr != nil && fatal(rerr) {
				return rerr
			}
			m.health.fail(err)
			wait = min(wait, b.next())
		} else {
			b.reset()
		}
		m.metrics.svids.Set(float64(len(m.cache.Current().SVIDs)))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-m.wake:
		case <-t.C:
		}
		t.Stop()
	}
	return nil
}

// dropExpired removes what has expired from the cache.
func (m *manager) dropExpired(now time.Time) bool {
	if !m.cache.DropExpired(now) {
		return false
	}
	m.log.Warn("dropped expired SVIDs or entries: the server has been unreachable for their whole remaining life")
	snap := m.cache.Current()
	m.metrics.svids.Set(float64(len(snap.SVIDs)))
	m.metrics.entries.Set(float64(len(snap.Entries)))
	return true
}

// expiryLoop drops SVIDs and entries from the cache as they expire, on a
// timer of its own. It makes no server call, so it keeps time even while
// the svidLoop waits out a request to a server that does not answer (up
// to the client's 30s timeout): the new snapshot wakes every open stream,
// which then sends an answer without the expired SVID at once.
func (m *manager) expiryLoop(ctx context.Context) error {
	for {
		snap := m.cache.Current()
		now := m.now()
		if m.dropExpired(now) {
			continue
		}
		var (
			timer *time.Timer
			fire  <-chan time.Time
		)
		if next, ok := snap.nextExpiry(); ok {
			// next is after now (DropExpired found nothing due), and the
			// timer never fires early; should the wall clock lag, the next
			// round just waits the rest.
			timer = time.NewTimer(next.Sub(now))
			fire = timer.C
		}
		select {
		case <-ctx.Done():
		case <-snap.Changed(): // new SVIDs or entries: maybe an earlier expiry
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// nextWake is the earliest rotation, expiry or agent renewal ahead.
func (m *manager) nextWake(now time.Time) time.Duration {
	next := time.Unix(0, m.node.renewAt.Load())
	snap := m.cache.Current()
	for _, sv := range snap.SVIDs {
		if sv.RenewAt.Before(next) {
			next = sv.RenewAt
		}
	}
	for _, e := range snap.Entries {
		if e.ExpiresAt != nil && e.ExpiresAt.Before(next) {
			next = *e.ExpiresAt
		}
	}
	d := next.Sub(now)
	return max(d, 50*time.Millisecond)
}

// reconcile issues SVIDs for entries that have none, whose SVID is due
// for rotation, or whose entry changed since it was issued.
func (m *manager) reconcile(ctx context.Context, now time.Time) error {
	snap := m.cache.Current()
	var due []apiv1.Entry
	for _, e := range snap.Entries {
		sv := snap.SVIDs[e.ID]
		if sv == nil || !now.Before(sv.RenewAt) || sv.EntryRevision != e.Revision {
			due = append(due, e)
		}
	}
	for start := 0; start < len(due); start += maxBatch {
		batch := due[start:min(start+maxBatch, len(due))]
		if err := m.issue(ctx, batch, snap); err != nil {
			return err
		}
	}
	return nil
}

func (m *manager) issue(ctx context.Context, entries []apiv1.Entry, snap *Snapshot) error {
	keys := make([]*pendingKey, len(entries))
	reqs := make([]apiv1.SVIDRequest, len(entries))
	for i, e := range entries {
		key, csr, err := newKeyAndCSR()
		if err != nil {
			return err
		}
		keys[i] = &pendingKey{entry: e, key: key}
		reqs[i] = apiv1.SVIDRequest{EntryID: e.ID, CSR: csr}
	}
	results, err := m.node.client.AgentX509SVIDs(ctx, reqs)
	if err != nil {
		return fmt.Errorf("fetch SVIDs: %w", err)
	}
	received := m.now()
	var fresh []*SVID
	for i, r := range results {
		if i >= len(keys) || r.SVID == nil {
			// The entry may have been deleted a moment ago; the next state
			// event settles it.
			m.log.Debug("server issued no SVID for entry", "entry_id", r.EntryID, "reason", r.Error)
			continue
		}
		sv, err := m.toSVID(keys[i], *r.SVID, received)
		if err != nil {
			m.log.Warn("server returned an unusable SVID", "entry_id", r.EntryID, "error", err)
			continue
		}
		if snap.SVIDs[sv.EntryID] != nil {
			m.metrics.rotations.Inc()
		}
		fresh = append(fresh, sv)
	}
	m.cache.PutSVIDs(fresh)
	m.health.ok()
	return nil
}

type pendingKey struct {
	entry apiv1.Entry
	key   crypto.Signer
}

func (m *manager) toSVID(p *pendingKey, s apiv1.X509SVID, received time.Time) (*SVID, error) {
	signer := p.key
	certs := make([]*x509.Certificate, 0, len(s.Chain))
	for _, d := range s.Chain {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("empty chain")
	}
	// Check before serving: the chain verifies to the bundle and the leaf
	// is an SVID for the entry's ID.
	id, err := identity.VerifyX509SVID(certs, m.node, m.now(), x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	want, err := spiffeid.FromString(p.entry.SPIFFEID)
	if err != nil || id != want {
		return nil, fmt.Errorf("SVID names %s, entry says %s", id, p.entry.SPIFFEID)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return nil, err
	}
	leaf := certs[0]
	return &SVID{
		EntryID: p.entry.ID, ID: id, Hint: p.entry.Hint, ChainDER: s.Chain, Certs: certs,
		Key: signer, KeyDER: keyDER, NotAfter: leaf.NotAfter, EntryRevision: p.entry.Revision,
		RenewAt: halfLife(received, leaf.NotAfter, rand.Float64()*rotationJitter),
	}, nil
}

// health tracks whether the agent can reach the server, logging and
// exporting transitions only.
type health struct {
	log      *slog.Logger
	metrics  *agentMetrics
	mu       sync.Mutex
	degraded bool
	since    time.Time
}

func (h *health) fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.degraded {
		h.degraded, h.since = true, time.Now()
		h.metrics.degraded.Set(1)
		h.log.Warn("agent degraded: cannot reach the server; serving cached SVIDs until they expire and retrying with backoff", "error", err)
		return
	}
	h.log.Debug("server still unreachable", "error", err)
}

func (h *health) ok() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.degraded {
		h.degraded = false
		h.metrics.degraded.Set(0)
		h.log.Info("server reachable again: agent recovered", "degraded_for", time.Since(h.since).Round(time.Millisecond))
	}
}

// Degraded reports the current state.
func (h *health) Degraded() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.degraded
}

// backoff is exponential with jitter: each wait is drawn from the upper
// half of an interval that doubles up to max.
type backoff struct {
	base, max time.Duration
	n         int
}

func (b *backoff) next() time.Duration {
	d := b.base << min(b.n, 20)
	if d > b.max || d <= 0 {
		d = b.max
	}
	b.n++
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func (b *backoff) reset() { b.n = 0 }

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
