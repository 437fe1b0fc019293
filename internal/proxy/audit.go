package proxy

import (
	"io"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
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
		b = appendJSONString(b, r.Timestamp)
	} else {
		b = append(b, '"')
		b = now.UTC().AppendFormat(b, time.RFC3339Nano) // no character to escape
		b = append(b, '"')
	}
	b = append(b, `,"event":`...)
	b = appendJSONString(b, r.Event)
	if r.RequestID != "" {
		b = append(b, `,"request_id":`...)
		b = appendJSONString(b, r.RequestID)
	}
	b = append(b, `,"direction":`...)
	b = appendJSONString(b, r.Direction)
	b = append(b, `,"listener":`...)
	b = appendJSONString(b, r.Listener)
	b = append(b, `,"protocol":`...)
	b = appendJSONString(b, r.Protocol)
	b = append(b, `,"source_principal":`...)
	b = appendJSONString(b, r.SourcePrincipal)
	b = append(b, `,"source_ip":`...)
	b = appendJSONString(b, r.SourceIP)
	b = append(b, `,"destination":`...)
	b = appendJSONString(b, r.Destination)
	b = append(b, `,"destination_port":`...)
	b = strconv.AppendUint(b, uint64(r.DestinationPort), 10)
	if r.Method != "" {
		b = append(b, `,"method":`...)
		b = appendJSONString(b, r.Method)
	}
	if r.Path != "" {
		b = append(b, `,"path":`...)
		b = appendJSONString(b, r.Path)
	}
	if r.Host != "" {
		b = append(b, `,"host":`...)
		b = appendJSONString(b, r.Host)
	}
	b = append(b, `,"decision":`...)
	b = appendJSONString(b, r.Decision)
	if r.Action != "" {
		b = append(b, `,"action":`...)
		b = appendJSONString(b, r.Action)
	}
	b = append(b, `,"policy":`...)
	if r.Policy != nil {
		b = appendJSONString(b, *r.Policy)
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
	b = appendJSONString(b, r.Reason)
	b = append(b, `,"mtls":`...)
	b = strconv.AppendBool(b, r.MTLS)
	b = append(b, `,"authenticated":`...)
	b = strconv.AppendBool(b, r.Authenticated)
	if r.Status != 0 {
		b = append(b, `,"status":`...)
		b = strconv.AppendInt(b, int64(r.Status), 10)
	}
	b = append(b, `,"latency_ms":`...)
	b = appendJSONFloat(b, r.LatencyMS)
	if len(r.DryRun) > 0 {
		b = append(b, `,"dry_run":`...)
		b = appendJSONStrings(b, r.DryRun)
	}
	if len(r.Audit) > 0 {
		b = append(b, `,"audit":`...)
		b = appendJSONStrings(b, r.Audit)
	}
	return append(b, '}'), true
}

func appendJSONStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, s)
	}
	return append(b, ']')
}

// appendJSONFloat formats f as encoding/json does a float64.
func appendJSONFloat(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' { // e-09 → e-9
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// jsonSafe: ASCII bytes encoding/json (escaping HTML) copies unchanged.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendJSONString quotes s as encoding/json does: \" \\ \b \f \n \r \t,
// \u00XX for other control bytes and < > &, \ufffd for invalid UTF-8,
// \u2028 and \u2029 escaped.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
