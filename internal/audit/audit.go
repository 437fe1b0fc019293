// Package audit writes the control plane's audit trail: one JSON line per
// admin operation and per SVID issued, with time, actor, operation, target
// and outcome. Secrets (join token secrets, keys, JWTs) never go in it.
package audit

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/trustmesh/trustmesh/internal/auditfile"
)

// Outcomes.
const (
	Success = "success"
	Denied  = "denied"
	Failure = "error"
)

// Attribute keys, fixed so the records are stable for log pipelines.
const (
	KeyActor     = "actor"
	KeyOperation = "operation"
	KeyTarget    = "target"
	KeyOutcome   = "outcome"
	KeyReason    = "reason"
)

// Event is one audited action.
type Event struct {
	Actor     string // who: "unix:uid:1000", a SPIFFE ID, "server"
	Operation string // what: "entry.create", "x509svid.issue", …
	Target    string // on what: an entry ID, a SPIFFE ID, a token ID
	Outcome   string // Success, Denied or Failure
	Reason    string // why it was denied or failed (never shown to clients)
	Attrs     []slog.Attr
}

// Logger records events. The zero value discards them.
type Logger struct {
	h      slog.Handler
	failed atomic.Uint64
}

// New writes JSON lines to w.
func New(w io.Writer) *Logger {
	return &Logger{h: slog.NewJSONHandler(w, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			// Every record is an audit record; level and message add nothing.
			if len(groups) == 0 && (a.Key == slog.LevelKey || a.Key == slog.MessageKey) {
				return slog.Attr{}
			}
			return a
		},
	})}
}

// Open appends to the file at path (created 0600 with its directory
// 0700); the file can be reopened for log rotation (auditfile).
func Open(path string) (*Logger, *auditfile.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, nil, fmt.Errorf("create audit log directory: %w", err)
	}
	f, err := auditfile.Open(path)
	if err != nil {
		return nil, nil, err
	}
	return New(f), f, nil
}

// Record writes e.
func (l *Logger) Record(ctx context.Context, e Event) {
	if l == nil || l.h == nil {
		return
	}
	r := slog.NewRecord(timeNow(), slog.LevelInfo, "", 0)
	r.AddAttrs(
		slog.String(KeyActor, e.Actor),
		slog.String(KeyOperation, e.Operation),
		slog.String(KeyTarget, e.Target),
		slog.String(KeyOutcome, e.Outcome),
	)
	if e.Reason != "" {
		r.AddAttrs(slog.String(KeyReason, e.Reason))
	}
	r.AddAttrs(e.Attrs...)
	// A failed audit write must not fail the request it records; it is
	// counted (Failures, exported as a metric) so it cannot go unnoticed.
	if err := l.h.Handle(ctx, r); err != nil {
		l.failed.Add(1)
	}
}

// Failures is the number of records that could not be written.
func (l *Logger) Failures() uint64 {
	if l == nil {
		return 0
	}
	return l.failed.Load()
}
