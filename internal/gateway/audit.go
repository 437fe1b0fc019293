package gateway

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

// decisionRecord is one audit line, in the proxy's format
// (internal/proxy/audit.go): the same field names with the same meaning,
// so one pipeline reads both, plus the gateway's own (route, mode, user,
// email, auth_method, idp, session). Event is access_decision for a
// request, login or logout for those. The session field is a short hash
// reference, never the cookie; no token ever appears.
//
// The json tags document the format; appendJSON writes it (the same bytes
// encoding/json.Marshal would, without reflection: TestAuditJSONMatchesMarshal).
type decisionRecord struct {
	Timestamp       string   `json:"timestamp"`
	Event           string   `json:"event"`
	RequestID       string   `json:"request_id,omitempty"`
	Direction       string   `json:"direction"`
	Listener        string   `json:"listener"`
	Protocol        string   `json:"protocol"`
	SourcePrincipal string   `json:"source_principal"`
	SourceIP        string   `json:"source_ip"`
	Destination     string   `json:"destination"`
	DestinationPort uint32   `json:"destination_port"`
	Method          string   `json:"method,omitempty"`
	Path            string   `json:"path,omitempty"`
	Host            string   `json:"host,omitempty"`
	Decision        string   `json:"decision"`
	Action          string   `json:"action,omitempty"`
	Policy          *string  `json:"policy"`
	Rule            *int     `json:"rule"`
	Reason          string   `json:"reason"`
	MTLS            bool     `json:"mtls"`
	Authenticated   bool     `json:"authenticated"`
	Status          int      `json:"status,omitempty"`
	LatencyMS       float64  `json:"latency_ms"`
	DryRun          []string `json:"dry_run,omitempty"`
	Audit           []string `json:"audit,omitempty"`

	Route      string `json:"route,omitempty"`
	Mode       string `json:"mode,omitempty"` // proxy, forward_auth, login, logout, refresh
	User       string `json:"user,omitempty"`
	Email      string `json:"email,omitempty"`
	AuthMethod string `json:"auth_method,omitempty"` // session, bearer
	IdP        string `json:"idp,omitempty"`
	Session    string `json:"session,omitempty"`
	Check      string `json:"check,omitempty"` // the check that refused
}

// appendJSON appends r as encoding/json.Marshal would encode it (field
// order, omitempty, HTML-safe string escaping, ES6 float formatting),
// with ts in RFC 3339 (UTC, nanoseconds) as the timestamp when
// r.Timestamp is empty. ok is false for a latency that JSON cannot
// represent (NaN, ±Inf), where Marshal fails too.
func (r *decisionRecord) appendJSON(b []byte, ts time.Time) (_ []byte, ok bool) {
	if math.IsNaN(r.LatencyMS) || math.IsInf(r.LatencyMS, 0) {
		return b, false
	}
	str := func(name, v string) {
		b = append(b, name...)
		b = jsonenc.AppendString(b, v)
	}
	opt := func(name, v string) {
		if v != "" {
			str(name, v)
		}
	}
	list := func(name string, l []string) {
		if len(l) == 0 {
			return
		}
		b = append(b, name...)
		b = append(b, '[')
		for i, s := range l {
			if i > 0 {
				b = append(b, ',')
			}
			b = jsonenc.AppendString(b, s)
		}
		b = append(b, ']')
	}
	if r.Timestamp != "" {
		str(`{"timestamp":`, r.Timestamp)
	} else {
		// Digits, '-', ':', '.', 'T' and 'Z': nothing to escape.
		b = append(b, `{"timestamp":"`...)
		b = ts.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	str(`,"event":`, r.Event)
	opt(`,"request_id":`, r.RequestID)
	str(`,"direction":`, r.Direction)
	str(`,"listener":`, r.Listener)
	str(`,"protocol":`, r.Protocol)
	str(`,"source_principal":`, r.SourcePrincipal)
	str(`,"source_ip":`, r.SourceIP)
	str(`,"destination":`, r.Destination)
	b = append(b, `,"destination_port":`...)
	b = strconv.AppendUint(b, uint64(r.DestinationPort), 10)
	opt(`,"method":`, r.Method)
	opt(`,"path":`, r.Path)
	opt(`,"host":`, r.Host)
	str(`,"decision":`, r.Decision)
	opt(`,"action":`, r.Action)
	if r.Policy != nil {
		str(`,"policy":`, *r.Policy)
	} else {
		b = append(b, `,"policy":null`...)
	}
	b = append(b, `,"rule":`...)
	if r.Rule != nil {
		b = strconv.AppendInt(b, int64(*r.Rule), 10)
	} else {
		b = append(b, "null"...)
	}
	str(`,"reason":`, r.Reason)
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
	list(`,"dry_run":`, r.DryRun)
	list(`,"audit":`, r.Audit)
	opt(`,"route":`, r.Route)
	opt(`,"mode":`, r.Mode)
	opt(`,"user":`, r.User)
	opt(`,"email":`, r.Email)
	opt(`,"auth_method":`, r.AuthMethod)
	opt(`,"idp":`, r.IdP)
	opt(`,"session":`, r.Session)
	opt(`,"check":`, r.Check)
	return append(b, '}'), true
}

// auditLog writes decision records, one JSON line each. Writes are group
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

func (a *auditLog) write(r *decisionRecord) {
	if r.Event == "" {
		r.Event = "access_decision"
	}
	var ts time.Time
	if r.Timestamp == "" {
		ts = a.now()
	}
	bp := auditLinePool.Get().(*[]byte)
	line, ok := r.appendJSON((*bp)[:0], ts)
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
