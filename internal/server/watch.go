package server

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
)

// changeHub tells watch streams that the registry or the bundle changed.
// One goroutine per server polls the datastore's revision counters (a
// one-row read) and wakes every stream; since every replica polls the
// shared database, a change made through any replica reaches the agents
// connected to all of them, and nothing about it lives only in memory.
type changeHub struct {
	mu       sync.Mutex
	registry int64
	bundle   uint64
	changed  chan struct{} // closed, and replaced, on every change
}

func newChangeHub() *changeHub { return &changeHub{changed: make(chan struct{})} }

// current returns the revisions and a channel closed at the next change.
func (h *changeHub) current() (int64, uint64, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.registry, h.bundle, h.changed
}

func (h *changeHub) set(reg int64, seq uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if reg == h.registry && seq == h.bundle {
		return
	}
	h.registry, h.bundle = reg, seq
	close(h.changed)
	h.changed = make(chan struct{})
}

// pollChanges feeds the hub until ctx ends.
func (s *Server) pollChanges(ctx context.Context) error {
	t := time.NewTicker(s.set.WatchPoll)
	defer t.Stop()
	for {
		reg, seq, err := s.store.Revisions(ctx)
		if err == nil {
			if _, cached, _ := s.changes.current(); seq != cached {
				// Bring this replica's bundle view up to date first, so the
				// state pushed to agents carries the new bundle.
				if err := s.bundle.Refresh(ctx); err != nil && ctx.Err() == nil {
					s.log.Warn("refresh bundle", "error", err)
				}
			}
			s.changes.set(reg, seq)
		} else if ctx.Err() == nil {
			s.log.Warn("poll registry revision", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// watchAgent streams the calling agent's state (authorized entries and
// trust bundle) as NDJSON: once at once, then on every change, with
// heartbeats in between. It re-checks the agent on every change, so an
// evicted or banned agent's stream ends with an error event.
func (s *Server) watchAgent(w http.ResponseWriter, r *http.Request, req *request) error {
	req.target = req.caller.Actor
	rc := http.NewResponseController(w)
	// The stream outlives the listener's read timeout, which is meant for
	// request bodies.
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	send := func(ev apiv1.WatchEvent) error {
		if err := enc.Encode(ev); err != nil {
			return err
		}
		return rc.Flush()
	}
	heartbeat := time.NewTicker(s.set.WatchHeartbeat)
	defer heartbeat.Stop()
	lastReg, lastSeq := int64(-1), uint64(0)
	first := true
	for {
		reg, seq, changed := s.changes.current()
		if first || reg != lastReg || seq != lastSeq {
			ev, err := s.agentState(r, req, reg, seq)
			if err != nil {
				// The stream is already 200: report in-band and end it.
				ae := asAPIError(err)
				_ = send(apiv1.WatchEvent{Kind: apiv1.WatchError, Error: ae.public, Code: ae.code})
				return nil
			}
			if err := send(ev); err != nil {
				return nil // the agent went away
			}
			first, lastReg, lastSeq = false, reg, seq
		}
		select {
		case <-r.Context().Done():
			return nil
		case <-s.stopping:
			return nil
		case <-changed:
		case <-heartbeat.C:
			if err := send(apiv1.WatchEvent{Kind: apiv1.WatchHeartbeat, Revision: lastReg, BundleSequence: lastSeq}); err != nil {
				return nil
			}
		}
	}
}

// agentState re-authenticates the agent and builds its state event.
func (s *Server) agentState(r *http.Request, req *request, reg int64, seq uint64) (apiv1.WatchEvent, error) {
	c, aerr := s.authAgent(r)
	if aerr != nil {
		return apiv1.WatchEvent{}, aerr
	}
	_, entries, err := s.authorized(r, c)
	if err != nil {
		return apiv1.WatchEvent{}, err
	}
	bundle, err := s.bundle.Bundle().Marshal()
	if err != nil {
		return apiv1.WatchEvent{}, internal(err)
	}
	ev := apiv1.WatchEvent{Kind: apiv1.WatchState, Revision: reg, BundleSequence: seq, Bundle: bundle, Entries: make([]apiv1.Entry, 0, len(entries))}
	for _, e := range entries {
		ev.Entries = append(ev.Entries, entryToAPI(e))
	}
	return ev, nil
}
