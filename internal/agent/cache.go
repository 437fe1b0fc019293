package agent

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
)

// SVID is an X.509-SVID the agent holds for one registration entry.
type SVID struct {
	EntryID  string
	ID       spiffeid.ID
	Hint     string
	ChainDER [][]byte // leaf first
	Certs    []*x509.Certificate
	Key      crypto.Signer
	KeyDER   []byte // PKCS#8
	NotAfter time.Time
	// EntryRevision is the entry revision it was issued for: an entry
	// change (DNS names, TTL) means a new SVID.
	EntryRevision int64
	// RenewAt is half its life (from receipt) minus jitter.
	RenewAt time.Time
}

// Snapshot is the agent's state at one moment: immutable once published.
// Workload API and SDS streams read the current one and wait on Changed
// for the next.
type Snapshot struct {
	Version uint64
	// Entries are the authorized, unexpired entries, ordered by SPIFFE ID
	// then entry ID: the first identity a workload matches is its default.
	Entries []apiv1.Entry
	// SVIDs by entry ID; an entry may not have one yet.
	SVIDs  map[string]*SVID
	Bundle *spiffebundle.Bundle
	// Synced is true once the server's state has been applied.
	Synced bool

	entrySels [][]string // per entry, for matching
	changed   chan struct{}
}

// Changed is closed when a newer snapshot is published.
func (s *Snapshot) Changed() <-chan struct{} { return s.changed }

// Match returns the entries a workload with the given selectors is
// entitled to (every selector of the entry among the workload's), and for
// each distinct SPIFFE ID the first one's SVID if the agent has it.
//
// Entries and SVIDs expired at now are left out even while they are still
// in the snapshot (the cache drops them on a timer, a moment later): the
// agent never serves anything past its expiry.
func (s *Snapshot) Match(workload map[string]struct{}, now time.Time) (matched bool, svids []*SVID) {
	seen := map[spiffeid.ID]bool{}
	for i, e := range s.Entries {
		if expired(e, now) || !subset(s.entrySels[i], workload) {
			continue
		}
		matched = true
		sv := s.SVIDs[e.ID]
		if sv == nil || !now.Before(sv.NotAfter) || seen[sv.ID] {
			continue
		}
		seen[sv.ID] = true
		svids = append(svids, sv)
	}
	return matched, svids
}

// MatchEntries returns the matching unexpired entries themselves (for
// JWT-SVIDs, which are issued per request).
func (s *Snapshot) MatchEntries(workload map[string]struct{}, now time.Time) []apiv1.Entry {
	var out []apiv1.Entry
	seen := map[string]bool{}
	for i, e := range s.Entries {
		if !expired(e, now) && subset(s.entrySels[i], workload) && !seen[e.SPIFFEID] {
			seen[e.SPIFFEID] = true
			out = append(out, e)
		}
	}
	return out
}

// nextExpiry is the earliest expiry of an SVID or entry in the snapshot.
func (s *Snapshot) nextExpiry() (next time.Time, ok bool) {
	for _, sv := range s.SVIDs {
		if !ok || sv.NotAfter.Before(next) {
			next, ok = sv.NotAfter, true
		}
	}
	for _, e := range s.Entries {
		if e.ExpiresAt != nil && (!ok || e.ExpiresAt.Before(next)) {
			next, ok = *e.ExpiresAt, true
		}
	}
	return next, ok
}

func expired(e apiv1.Entry, now time.Time) bool {
	return e.ExpiresAt != nil && !now.Before(*e.ExpiresAt)
}

func subset(want []string, have map[string]struct{}) bool {
	for _, w := range want {
		if _, ok := have[w]; !ok {
			return false
		}
	}
	return true
}

// Cache holds the current snapshot. Writers build a new snapshot from the
// current one under mu and publish it; readers never lock.
type Cache struct {
	mu  sync.Mutex
	cur atomic.Pointer[Snapshot]
}

// NewCache returns a cache with an empty snapshot.
func NewCache() *Cache {
	c := &Cache{}
	c.cur.Store(&Snapshot{SVIDs: map[string]*SVID{}, changed: make(chan struct{})})
	return c
}

// Current returns the current snapshot.
func (c *Cache) Current() *Snapshot { return c.cur.Load() }

// update applies fn to a copy of the current snapshot and publishes it,
// waking every waiter on the old one.
func (c *Cache) update(fn func(next *Snapshot)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.cur.Load()
	next := &Snapshot{
		Version:   old.Version + 1,
		Entries:   old.Entries,
		entrySels: old.entrySels,
		SVIDs:     make(map[string]*SVID, len(old.SVIDs)),
		Bundle:    old.Bundle,
		Synced:    old.Synced,
		changed:   make(chan struct{}),
	}
	for k, v := range old.SVIDs {
		next.SVIDs[k] = v
	}
	fn(next)
	c.cur.Store(next)
	close(old.changed)
}

// SetState replaces the authorized entries and bundle: SVIDs of entries no
// longer present are dropped at once; expired entries are left out.
func (c *Cache) SetState(entries []apiv1.Entry, bundle *spiffebundle.Bundle, now time.Time) {
	live := make([]apiv1.Entry, 0, len(entries))
	for _, e := range entries {
		if !expired(e, now) {
			live = append(live, e)
		}
	}
	sort.Slice(live, func(i, j int) bool {
		if live[i].SPIFFEID != live[j].SPIFFEID {
			return live[i].SPIFFEID < live[j].SPIFFEID
		}
		return live[i].ID < live[j].ID
	})
	c.update(func(s *Snapshot) {
		s.Entries = live
		s.entrySels = make([][]string, len(live))
		keep := make(map[string]bool, len(live))
		for i, e := range live {
			s.entrySels[i] = e.Selectors
			keep[e.ID] = true
		}
		for id := range s.SVIDs {
			if !keep[id] {
				delete(s.SVIDs, id)
			}
		}
		if bundle != nil {
			s.Bundle = bundle
		}
		s.Synced = true
	})
}

// PutSVIDs stores freshly issued SVIDs (for entries still authorized).
func (c *Cache) PutSVIDs(svids []*SVID) {
	c.update(func(s *Snapshot) {
		authorized := make(map[string]bool, len(s.Entries))
		for _, e := range s.Entries {
			authorized[e.ID] = true
		}
		for _, sv := range svids {
			if authorized[sv.EntryID] {
				s.SVIDs[sv.EntryID] = sv
			}
		}
	})
}

// DropExpired removes SVIDs past their expiry and entries past theirs,
// publishing a new snapshot (so open streams answer again, without them).
// It reports whether anything was removed.
func (c *Cache) DropExpired(now time.Time) bool {
	cur := c.Current()
	stale := false
	for _, sv := range cur.SVIDs {
		if !now.Before(sv.NotAfter) {
			stale = true
		}
	}
	for _, e := range cur.Entries {
		if expired(e, now) {
			stale = true
		}
	}
	if !stale {
		return false
	}
	c.update(func(s *Snapshot) {
		live := s.Entries[:0:0]
		var sels [][]string
		for i, e := range s.Entries {
			if !expired(e, now) {
				live = append(live, e)
				sels = append(sels, s.entrySels[i])
			} else {
				delete(s.SVIDs, e.ID)
			}
		}
		s.Entries, s.entrySels = live, sels
		for id, sv := range s.SVIDs {
			if !now.Before(sv.NotAfter) {
				delete(s.SVIDs, id)
			}
		}
	})
	return true
}

func contentHash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}
