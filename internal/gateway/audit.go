package gateway

import (
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// decisionRecord is one audit line, in the proxy's format
// (internal/proxy/audit.go): the same field names with the same meaning,
// so one pipeline reads both, plus the gateway's own (route, mode, user,
// email, auth_method, idp, session). Event is access_decision for a
// request, login or logout for those. The session field is a short hash
// reference, never the cookie; no token ever appears.
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

type auditLog struct {
	mu     sync.Mutex
	w      io.Writer
	log    *slog.Logger
	now    func() time.Time
	failed atomic.Uint64
}

func (a *auditLog) write(r *decisionRecord) {
	if r.Event == "" {
		r.Event = "access_decision"
	}
	if r.Timestamp == "" {
		r.Timestamp = a.now().UTC().Format(time.RFC3339Nano)
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
	if err != nil && a.failed.Add(1) == 1 {
		a.log.Error("audit log write failed", "err", err)
	}
}
