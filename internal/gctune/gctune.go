// Package gctune gives a process with a small live heap a floor of
// headroom between garbage collections.
//
// Go's default (GOGC=100) starts a collection when the heap has grown by
// as much as survived the last one. A gateway's live heap is a few MiB,
// so under load it collects every few MiB allocated — about every
// thousand requests — and the collector's work is a tenth of the
// process's CPU (bench/gateway.sh, PROFILE=DIR). With a floor the next
// collection starts at max(live × (1 + GOGC/100), live + headroom): a
// small heap may grow by the headroom first, a large one is collected as
// GOGC says. Memory stays bounded by the live heap plus the headroom.
//
// An operator's GOGC or GOMEMLIMIT in the environment wins: Start does
// nothing then.
package gctune

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// basePercent is GOGC's default.
const basePercent = 100

// Start keeps the floor of headroom bytes until ctx ends. It returns
// false when the environment sets GOGC or GOMEMLIMIT (nothing is tuned).
func Start(ctx context.Context, headroom uint64) bool {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return false
	}
	t := &tuner{ctx: ctx, headroom: headroom, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	t.adjust()
	t.arm()
	return true
}

type tuner struct {
	ctx      context.Context
	headroom uint64
	sample   []metrics.Sample // (only the finalizer goroutine uses it)
}

// sentinel is garbage from the moment it is made: its finalizer runs
// after the next collection, adjusts the percentage for the heap that
// survived it, and arms a new sentinel. (It holds a pointer so that the
// tiny allocator, whose blocks may never be freed, does not take it.)
type sentinel struct{ t *tuner }

func (t *tuner) arm() {
	runtime.SetFinalizer(&sentinel{t: t}, func(s *sentinel) {
		if s.t.ctx.Err() != nil {
			debug.SetGCPercent(basePercent)
			return
		}
		s.t.adjust()
		s.t.arm()
	})
}

func (t *tuner) adjust() {
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return // an older runtime without the metric: leave GOGC alone
	}
	debug.SetGCPercent(percentFor(t.sample[0].Value.Uint64(), t.headroom))
}

// percentFor is the GOGC percentage that lets a heap of live bytes grow
// by at least headroom before the next collection, never below the
// default.
// (Before the first collection nothing is known live: the default then,
// or a heap that never collects would grow without bound.)
func percentFor(live, headroom uint64) int {
	if live == 0 {
		return basePercent
	}
	p := headroom * 100 / live
	if p < basePercent {
		return basePercent
	}
	const maxPercent = 1 << 20 // a tiny heap must not overflow an int
	if p > maxPercent {
		return maxPercent
	}
	return int(p)
}
