package gateway

import (
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trustmesh/trustmesh/internal/accesslog"
)

// auditLog writes decision records (accesslog.Record, the proxy's format
// plus the gateway's fields), one JSON line each. Writes are group
// commits: a writer that finds another write in progress adds its line to
// the next batch and waits until that batch is written, so every line is
// in the file before write returns (before the response is sent), and
// under load many lines cost one write system call.
type auditLog struct {
	w      io.Writer
	log    *slog.Logger
	now    func() time.Time
	failed atomic.Uint64

	mu      sync.Mutex
	cond    sync.Cond // on mu: a batch was written
	pending []byte    // lines not yet handed to w
	spare   []byte    // the buffer of the last batch written, for reuse
	lines   int       // lines in pending
	seq     uint64    // lines accepted
	written uint64    // lines handed to w (written or failed)
	writing bool      // a writer holds a batch outside mu
}

// maxAuditBatch bounds the memory a batch keeps for reuse.
const maxAuditBatch = 1 << 20

var auditLinePool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

func (a *auditLog) write(r *accesslog.Record) {
	if r.Event == "" {
		r.Event = accesslog.EventAccessDecision
	}
	var ts time.Time
	if r.Timestamp == "" {
		ts = a.now()
	}
	bp := auditLinePool.Get().(*[]byte)
	line, ok := r.AppendJSON((*bp)[:0], ts)
	if ok {
		line = append(line, '\n')
		a.commit(line)
	} else {
		a.failed.Add(1)
	}
	if cap(line) <= 64<<10 {
		*bp = line[:0]
		auditLinePool.Put(bp)
	}
}

// commit hands line to the writer, in a batch with the lines of
// concurrent callers, and returns once that batch has been written.
func (a *auditLog) commit(line []byte) {
	a.mu.Lock()
	if a.cond.L == nil {
		a.cond.L = &a.mu
	}
	a.pending = append(a.pending, line...)
	a.lines++
	a.seq++
	mine := a.seq
	for a.writing && a.written < mine {
		a.cond.Wait()
	}
	if a.written >= mine { // a batch another caller wrote had it
		a.mu.Unlock()
		return
	}
	// Write the batch, ours and every line that came before it.
	batch, n, upto := a.pending, a.lines, a.seq
	a.pending, a.spare, a.lines = a.spare[:0], nil, 0
	a.writing = true
	a.mu.Unlock()
	_, err := a.w.Write(batch)
	a.mu.Lock()
	a.writing, a.written = false, upto
	if cap(batch) <= maxAuditBatch && a.spare == nil {
		a.spare = batch[:0]
	}
	a.cond.Broadcast()
	a.mu.Unlock()
	if err != nil && a.failed.Add(uint64(n)) == uint64(n) {
		a.log.Error("audit log write failed", "err", err)
	}
}
