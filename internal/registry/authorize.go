package registry

import (
	"context"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustmesh/trustmesh/internal/store"
)

// maxNestingDepth bounds the walk down parent→child chains so a cycle or a
// pathological registry cannot make authorization loop.
const maxNestingDepth = 16

// AuthorizedEntries returns the entries an agent may obtain SVIDs for: the
// entries parented to the agent's own ID, the entries parented to a node
// alias the agent matches (an entry parented to the server ID whose
// selectors are all among the agent's), and, transitively, entries parented
// to any of those entries' IDs. Expired entries are left out. This is the
// only path by which an agent is granted an identity.
func AuthorizedEntries(ctx context.Context, s store.Store, td spiffeid.TrustDomain, agentID string, agentSelectors []store.Selector, now time.Time) ([]store.Entry, error) {
	parents := []string{agentID}
	aliases, err := s.ListEntries(ctx, store.EntryFilter{ParentIDs: []string{ServerID(td).String()}})
	if err != nil {
		return nil, err
	}
	for _, a := range aliases {
		if !Expired(a, now) && len(agentSelectors) > 0 && SelectorsSubset(a.Selectors, agentSelectors) {
			parents = append(parents, a.SPIFFEID)
		}
	}
	visited := map[string]bool{}
	for _, p := range parents {
		visited[p] = true
	}
	seenEntry := map[string]bool{}
	var out []store.Entry
	for depth := 0; len(parents) > 0 && depth < maxNestingDepth; depth++ {
		children, err := s.ListEntries(ctx, store.EntryFilter{ParentIDs: parents})
		if err != nil {
			return nil, err
		}
		parents = nil
		for _, e := range children {
			if Expired(e, now) || seenEntry[e.ID] {
				continue
			}
			seenEntry[e.ID] = true
			out = append(out, e)
			if !visited[e.SPIFFEID] {
				visited[e.SPIFFEID] = true
				parents = append(parents, e.SPIFFEID)
			}
		}
	}
	return out, nil
}
