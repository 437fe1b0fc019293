package proxy

import (
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trustmesh/trustmesh/internal/accesslog"
)

// The proxy writes one accesslog.Record per decision (the format the
// gateway writes too: internal/accesslog).
//
// Audit buffering. Records are appended to a buffer and written
//   - when no HTTP request is in flight any more (the last one to finish
//     writes everything buffered before its response completes): a proxy
//     that is not under concurrent load writes each record before the
//     response it describes reaches the client, as an unbuffered log would;
//   - under load, when auditFlushBytes have accumulated or auditFlushDelay
//     after the first buffered record, whichever comes first;
//   - on shutdown (close).
//
// A crash (SIGKILL, a panic outside a handler, power loss) can therefore
// lose up to auditFlushDelay of records, or auditFlushBytes, taken while
// requests overlapped. A graceful stop loses none.
const (
	auditFlushDelay = 100 * time.Millisecond
	auditFlushBytes = 64 << 10
)

// auditLog writes decision records as JSON lines.
type auditLog struct {
	log    *slog.Logger
	failed atomic.Uint64
	active atomic.Int64 // HTTP requests between begin and end

	mu      sync.Mutex // guards buf, records, armed, closed
	buf     []byte     // encoded records not yet written
	records int        // how many records buf holds
	armed   bool       // timer runs
	closed  bool
	timer   *time.Timer

	wmu   sync.Mutex // serializes writes to w, in buffer order
	w     io.Writer
	spare []byte // a written buffer, reused (wmu)
}

func newAuditLog(w io.Writer, log *slog.Logger) *auditLog {
	a := &auditLog{w: w, log: log}
	a.timer = time.AfterFunc(time.Hour, func() {
		a.mu.Lock()
		a.armed = false
		a.mu.Unlock()
		a.flush()
	})
	a.timer.Stop()
	return a
}

// begin counts an HTTP request in flight; end (deferred, so that a
// panicking handler ends it too) writes the buffer when it was the last.
func (a *auditLog) begin() { a.active.Add(1) }

func (a *auditLog) end() {
	if a.active.Add(-1) == 0 {
		a.flush()
	}
}

var recordBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// write records r. Records written outside begin/end (TCP connections) are
// written at once unless HTTP requests are in flight.
func (a *auditLog) write(r *accesslog.Record) {
	r.Event = accesslog.EventAccessDecision
	bp := recordBuffers.Get().(*[]byte)
	line, ok := r.AppendJSON((*bp)[:0], time.Now())
	if !ok {
		*bp = line
		recordBuffers.Put(bp)
		a.failed.Add(1)
		return
	}
	line = append(line, '\n')
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		a.wmu.Lock()
		a.writeOut(line, 1)
		a.wmu.Unlock()
	} else {
		a.buf = append(a.buf, line...)
		a.records++
		now := len(a.buf) >= auditFlushBytes || a.active.Load() == 0
		if !now && !a.armed {
			a.armed = true
			a.timer.Reset(auditFlushDelay)
		}
		a.mu.Unlock()
		if now {
			a.flush()
		}
	}
	if cap(line) <= 64<<10 {
		*bp = line
		recordBuffers.Put(bp)
	}
}

// flush writes what is buffered. Writes are serialized by wmu and take the
// buffer under it, so the file holds records in the order they were
// buffered; appending goes on meanwhile.
func (a *auditLog) flush() {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	a.mu.Lock()
	out, n := a.buf, a.records
	a.buf, a.records = a.spare[:0], 0
	a.mu.Unlock()
	if n > 0 {
		a.writeOut(out, n)
	}
	if cap(out) > 4*auditFlushBytes { // an outsized burst: let it go
		out = nil
	}
	a.spare = out
}

// writeOut writes n records; the caller holds wmu.
func (a *auditLog) writeOut(b []byte, n int) {
	if _, err := a.w.Write(b); err != nil {
		if a.failed.Add(uint64(n)) == uint64(n) {
			a.log.Error("audit log write failed", "err", err)
		}
	}
}

// close writes what is buffered; later records are written one by one.
func (a *auditLog) close() {
	a.timer.Stop()
	a.wmu.Lock()
	defer a.wmu.Unlock()
	a.mu.Lock()
	out, n := a.buf, a.records
	a.buf, a.records, a.closed = nil, 0, true
	a.mu.Unlock()
	if n > 0 {
		a.writeOut(out, n)
	}
}
