package proxy

import (
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// decisionRecord is one audit line: every decision, allowed or denied, with
// the fields of seed 004's audit_log (timestamp, request_id, source, its IP,
// the destination, what was asked, the outcome and why) plus the policy and
// rule that decided, whether the caller was mTLS-authenticated, and the
// latency. Field names are stable: log pipelines and `trustmesh netpol
// generate --from-audit` read them.
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

// auditLog writes decision records as JSON lines.
type auditLog struct {
	mu     sync.Mutex
	w      io.Writer
	log    *slog.Logger
	failed atomic.Uint64
}

func newAuditLog(w io.Writer, log *slog.Logger) *auditLog { return &auditLog{w: w, log: log} }

func (a *auditLog) write(r *decisionRecord) {
	r.Event = "access_decision"
	if r.Timestamp == "" {
		r.Timestamp = time.Now().UTC().Format(time.RFC3339Nano)
	}
	line, err := json.Marshal(r)
	if err != nil {
		a.failed.Add(1)
		return
	}
	line = append(line, '\n')
	a.mu.Lock()
	_, err = a.w.Write(line)
	a.mu.Unlock()
	if err != nil {
		if a.failed.Add(1) == 1 {
			a.log.Error("audit log write failed", "err", err)
		}
	}
}
