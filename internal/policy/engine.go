package policy

import (
	"context"
	"sync/atomic"
)

// Engine holds the current Set. Swapping in a new one is atomic: an
// evaluation in progress finishes on the Set it started with and never
// waits for a swap.
type Engine struct {
	cur atomic.Pointer[Set]
}

// NewEngine starts with s.
func NewEngine(s *Set) *Engine {
	e := &Engine{}
	e.cur.Store(s)
	return e
}

// Set returns the current policy set.
func (e *Engine) Set() *Set { return e.cur.Load() }

// Swap installs s and returns the previous set.
func (e *Engine) Swap(s *Set) *Set { return e.cur.Swap(s) }

// Evaluate decides in against the current set.
func (e *Engine) Evaluate(ctx context.Context, in *Input) Decision {
	return e.cur.Load().Evaluate(ctx, in)
}

// LoadAndCompile reads policy paths and data files and compiles them.
func LoadAndCompile(ctx context.Context, paths, dataFiles []string, opts Options) (*Set, []Problem) {
	src := Load(paths...)
	for _, f := range dataFiles {
		src.LoadData(f)
	}
	return Compile(ctx, src, opts)
}

// Options returns the options the set was compiled with (defaults filled).
func (s *Set) Options() Options { return s.opts }

// Policies returns the ids (namespace/name) of the AuthorizationPolicies
// in the set, in evaluation order.
func (s *Set) Policies() []string {
	out := make([]string, len(s.policies))
	for i, p := range s.policies {
		out[i] = p.id
	}
	return out
}

// HasRego reports whether the set includes Rego modules.
func (s *Set) HasRego() bool { return s.rego != nil }
