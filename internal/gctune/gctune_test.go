package gctune

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		live, headroom uint64
		want           int
	}{
		{4 * mib, 64 * mib, 1600},  // small heap: may grow by the headroom
		{64 * mib, 64 * mib, 100},  // at the headroom: GOGC's default
		{512 * mib, 64 * mib, 100}, // large heap: never below the default
		{0, 64 * mib, basePercent}, // nothing known live yet (no collection): the default
		{1, 64 * mib, 1 << 20},     // a tiny heap: capped
		{3 * mib, 64 * mib, 2133},  // rounds down
		{10 * mib, 0, basePercent}, // no headroom: the default
	} {
		if got := percentFor(tc.live, tc.headroom); got != tc.want {
			t.Errorf("percentFor(%d, %d) = %d, want %d", tc.live, tc.headroom, got, tc.want)
		}
	}
}

func gogc() uint64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// The percentage follows the heap after each collection, and goes back
// to the default when ctx ends.
func TestStartTunesAfterCollections(t *testing.T) {
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	defer debug.SetGCPercent(basePercent)
	ctx, cancel := context.WithCancel(context.Background())
	if !Start(ctx, 1<<40) { // far above any live heap here: the cap or close to it
		t.Fatal("Start refused with no GOGC or GOMEMLIMIT set")
	}
	waitGC(t, "a raised percentage", func() bool { return gogc() > 10*basePercent })
	cancel()
	waitGC(t, "the default again", func() bool { return gogc() == basePercent })
}

func TestStartLeavesOperatorsGOGC(t *testing.T) {
	t.Setenv("GOGC", "50")
	if Start(context.Background(), 1<<30) {
		t.Fatal("Start tuned despite GOGC in the environment")
	}
}

// waitGC collects until cond holds (finalizers run after a collection, on
// their own goroutine) or the deadline passes.
func waitGC(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s (GOGC now %d)", what, gogc())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}
