package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/apiclient"
	"github.com/trustmesh/trustmesh/internal/store/storetest"
)

// TestKill9LosesNoAcknowledgedEntry creates entries from several writers,
// kill -9s the server while creations are in flight, restarts it and
// checks every creation the server acknowledged is there.
func TestKill9LosesNoAcknowledgedEntry(t *testing.T) {
	for _, tc := range []struct {
		name      string
		datastore func(t *testing.T) []string
	}{
		{"sqlite", func(t *testing.T) []string { return nil }},
		{"postgres", func(t *testing.T) []string { return []string{"--datastore", storetest.PostgresURL(t)} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "server")
			extra := tc.datastore(t)
			acked := map[string]bool{}
			for round := 0; round < 3; round++ {
				srv := startServer(t, dataDir, extra...)
				got := createUntilKilled(t, srv, round)
				for id := range got {
					acked[id] = true
				}
				if len(got) == 0 {
					t.Fatalf("round %d: no creation acknowledged before the kill", round)
				}
			}
			srv := startServer(t, dataDir, extra...)
			c := apiclient.NewSocket(srv.socket)
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			entries, err := c.ListEntries(ctx, "", "")
			if err != nil {
				t.Fatal(err)
			}
			stored := map[string]bool{}
			for _, e := range entries {
				stored[e.ID] = true
			}
			lost := 0
			for id := range acked {
				if !stored[id] {
					lost++
				}
			}
			if lost > 0 {
				t.Fatalf("%d of %d acknowledged entries lost after kill -9", lost, len(acked))
			}
			t.Logf("%d acknowledged entries, %d stored, none lost", len(acked), len(stored))
		})
	}
}

// createUntilKilled runs writers against srv, kills it once enough
// creations are acknowledged (while others are still in flight) and
// returns the acknowledged entry IDs.
func createUntilKilled(t *testing.T, srv *serverProc, round int) map[string]bool {
	t.Helper()
	const writers, killAfter = 4, 60
	var (
		mu    sync.Mutex
		acked = map[string]bool{}
		wg    sync.WaitGroup
	)
	enough := make(chan struct{})
	var once sync.Once
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := apiclient.NewSocket(srv.socket)
			defer c.Close()
			for i := 0; ; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				e, err := c.CreateEntry(ctx, apiv1.EntryCreate{
					SPIFFEID:  fmt.Sprintf("spiffe://example.org/r%d/w%d/e%d", round, w, i),
					ParentID:  "spiffe://example.org/trustmesh/agent/join_token/0011223344556677",
					Selectors: []string{"unix:uid:1000"},
				})
				cancel()
				if err != nil {
					return // the server is gone; this creation was never acknowledged
				}
				mu.Lock()
				acked[e.ID] = true
				if len(acked) >= killAfter {
					once.Do(func() { close(enough) })
				}
				mu.Unlock()
			}
		}(w)
	}
	select {
	case <-enough:
	case <-time.After(60 * time.Second):
		t.Fatal("writers too slow")
	}
	srv.kill()
	wg.Wait()
	return acked
}
