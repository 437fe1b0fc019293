package proxy

import (
	"io"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trustmesh/trustmesh/internal/jsonenc"
)

// decisionRecord is one audit line: every decision, allowed or denied, with
// the fields of seed 004's audit_log (timestamp, request_id, source, its IP,
// the destination, what was asked, the outcome and why) plus the policy and
// rule that decided, whether the caller was mTLS-authenticated, and the
// latency. Field names are stable: log pipelines and `trustmesh netpol
// generate --from-audit` read them.
//
// appendRecord encodes it (byte for byte as encoding/json would, which
// TestAuditEncoderMatchesEncodingJSON and FuzzAuditEncoder check): a field
// added here must be added there too.
type decisionRecord struct {
	Timestamp       string   `json:"timestamp"`
	Event           string   `json:"event"` // access_decision
	RequestID       string   `json:"request_id,omitempty"`
	Direction       string   `json:"direction"` // inbound
	Listener        string   `json:"listener"`
	Protocol        string   `json:"protocol"` // http | tcp
	SourcePrincipal string   `json:"source_principal"`
	SourceIP        string   `json:"source_ip"`
	Destination     string   `json:"destination"`
	DestinationPort uint32   `json:"destination_port"`
	Method          string   `json:"method,omitempty"`
	Path            string   `json:"path,omitempty"`
	Host            string   `json:"host,omitempty"`
	Decision        string   `json:"decision"` // allow | deny
	Action          string   `json:"action,omitempty"`
	Policy          *string  `json:"policy"`
	Rule            *int     `json:"rule"`
	Reason          string   `json:"reason"`
	MTLS            bool     `json:"mtls"`
	Authenticated   bool     `json:"authenticated"`
	Status          int      `json:"status,omitempty"`
	LatencyMS       float64  `json:"latency_ms"`
	DryRun          []string `json:"dry_run,omitempty"` // dry-run policies that matched
	Audit           []string `json:"audit,omitempty"`   // AUDIT policies that matched
}

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
func (a *auditLog) write(r *decisionRecord) {
	r.Event = "access_decision"
	bp := recordBuffers.Get().(*[]byte)
	line, ok := appendRecord((*bp)[:0], r, time.Now())
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

// appendRecord appends r as JSON, exactly as json.Marshal(r) would (field
// order, omitempty, null pointers, HTML-safe string escaping, float
// formatting), with the timestamp taken from now when r has none. It does
// not allocate beyond growing b. ok is false where json.Marshal fails (a
// non-finite latency).
func appendRecord(b []byte, r *decisionRecord, now time.Time) (_ []byte, ok bool) {
	if math.IsNaN(r.LatencyMS) || math.IsInf(r.LatencyMS, 0) {
		return b, false
	}
	b = append(b, `{"timestamp":`...)
	if r.Timestamp != "" {
		b = jsonenc.AppendString(b, r.Timestamp)
	} else {
		b = append(b, '"')
		b = now.UTC().AppendFormat(b, time.RFC3339Nano) // no character to escape
		b = append(b, '"')
	}
	b = append(b, `,"event":`...)
	b = jsonenc.AppendString(b, r.Event)
	if r.RequestID != "" {
		b = append(b, `,"request_id":`...)
		b = jsonenc.AppendString(b, r.RequestID)
	}
	b = append(b, `,"direction":`...)
	b = jsonenc.AppendString(b, r.Direction)
	b = append(b, `,"listener":`...)
	b = jsonenc.AppendString(b, r.Listener)
	b = append(b, `,"protocol":`...)
	b = jsonenc.AppendString(b, r.Protocol)
	b = append(b, `,"source_principal":`...)
	b = jsonenc.AppendString(b, r.SourcePrincipal)
	b = append(b, `,"source_ip":`...)
	b = jsonenc.AppendString(b, r.SourceIP)
	b = append(b, `,"destination":`...)
	b = jsonenc.AppendString(b, r.Destination)
	b = append(b, `,"destination_port":`...)
	b = strconv.AppendUint(b, uint64(r.DestinationPort), 10)
	if r.Method != "" {
		b = append(b, `,"method":`...)
		b = jsonenc.AppendString(b, r.Method)
	}
	if r.Path != "" {
		b = append(b, `,"path":`...)
		b = jsonenc.AppendString(b, r.Path)
	}
	if r.Host != "" {
		b = append(b, `,"host":`...)
		b = jsonenc.AppendString(b, r.Host)
	}
	b = append(b, `,"decision":`...)
	b = jsonenc.AppendString(b, r.Decision)
	if r.Action != "" {
		b = append(b, `,"action":`...)
		b = jsonenc.AppendString(b, r.Action)
	}
	b = append(b, `,"policy":`...)
	if r.Policy != nil {
		b = jsonenc.AppendString(b, *r.Policy)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"rule":`...)
	if r.Rule != nil {
		b = strconv.AppendInt(b, int64(*r.Rule), 10)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"reason":`...)
	b = jsonenc.AppendString(b, r.Reason)
	b = append(b, `,"mtls":`...)
	b = strconv.AppendBool(b, r.MTLS)
	b = append(b, `,"authenticated":`...)
	b = strconv.AppendBool(b, r.Authenticated)
	if r.Status != 0 {
		b = append(b, `,"status":`...)
		b = strconv.AppendInt(b, int64(r.Status), 10)
	}
	b = append(b, `,"latency_ms":`...)
	b = jsonenc.AppendFloat(b, r.LatencyMS)
	if len(r.DryRun) > 0 {
		b = append(b, `,"dry_run":`...)
		b = jsonenc.AppendStrings(b, r.DryRun)
	}
	if len(r.Audit) > 0 {
		b = append(b, `,"audit":`...)
		b = jsonenc.AppendStrings(b, r.Audit)
	}
	return append(b, '}'), true
}
