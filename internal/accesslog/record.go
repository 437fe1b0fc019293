// Package accesslog defines the access-decision audit record that the
// sidecar proxy and the access gateway both write, one JSON line per
// decision, so that one log pipeline (and `trustmesh netpol generate
// --from-audit`) reads both. The fields are seed 004's audit_log
// (timestamp, request_id, source and its IP, destination, what was asked,
// the decision and why) plus the policy and rule that decided, whether the
// caller was mTLS-authenticated, the latency, and the gateway's own
// (route, user, identity provider…), which the proxy leaves empty and the
// encoding then omits.
//
// Records are encoded on the request path, so AppendJSON writes them by
// hand, without reflection or allocation; the tests check it byte for byte
// against encoding/json.Marshal of the same struct, whose tags therefore
// document the format. Field names are stable.
package accesslog

import (
	"math"
	"strconv"
	"time"

	"github.com/trustmesh/trustmesh/internal/jsonenc"
)

// EventAccessDecision is the event of a request's decision; the gateway
// also writes login, logout, handoff and userinfo events.
const EventAccessDecision = "access_decision"

// Record is one audit line. A field added here must be added to
// AppendJSON too (TestAppendJSONMatchesMarshal fails until it is).
type Record struct {
	Timestamp       string   `json:"timestamp"`
	Event           string   `json:"event"`
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

	// The gateway's fields. Session is a short hash reference, never the
	// cookie; no token ever appears in a record.
	Route      string `json:"route,omitempty"`
	Mode       string `json:"mode,omitempty"` // proxy, forward_auth, login, logout, refresh
	User       string `json:"user,omitempty"`
	Email      string `json:"email,omitempty"`
	AuthMethod string `json:"auth_method,omitempty"` // session, bearer
	IdP        string `json:"idp,omitempty"`
	Session    string `json:"session,omitempty"`
	Check      string `json:"check,omitempty"` // the check that refused
}

// AppendJSON appends r exactly as json.Marshal(r) would encode it (field
// order, omitempty, null pointers, HTML-safe string escaping, float
// format), with now in RFC 3339 (UTC, nanoseconds) as the timestamp when
// r has none. It does not allocate beyond growing b. ok is false where
// json.Marshal fails: a latency that JSON cannot represent (NaN, ±Inf).
func (r *Record) AppendJSON(b []byte, now time.Time) (_ []byte, ok bool) {
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
	b = field(b, `,"event":`, r.Event)
	b = optional(b, `,"request_id":`, r.RequestID)
	b = field(b, `,"direction":`, r.Direction)
	b = field(b, `,"listener":`, r.Listener)
	b = field(b, `,"protocol":`, r.Protocol)
	b = field(b, `,"source_principal":`, r.SourcePrincipal)
	b = field(b, `,"source_ip":`, r.SourceIP)
	b = field(b, `,"destination":`, r.Destination)
	b = append(b, `,"destination_port":`...)
	b = strconv.AppendUint(b, uint64(r.DestinationPort), 10)
	b = optional(b, `,"method":`, r.Method)
	b = optional(b, `,"path":`, r.Path)
	b = optional(b, `,"host":`, r.Host)
	b = field(b, `,"decision":`, r.Decision)
	b = optional(b, `,"action":`, r.Action)
	if r.Policy != nil {
		b = field(b, `,"policy":`, *r.Policy)
	} else {
		b = append(b, `,"policy":null`...)
	}
	if r.Rule != nil {
		b = append(b, `,"rule":`...)
		b = strconv.AppendInt(b, int64(*r.Rule), 10)
	} else {
		b = append(b, `,"rule":null`...)
	}
	b = field(b, `,"reason":`, r.Reason)
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
	b = optional(b, `,"route":`, r.Route)
	b = optional(b, `,"mode":`, r.Mode)
	b = optional(b, `,"user":`, r.User)
	b = optional(b, `,"email":`, r.Email)
	b = optional(b, `,"auth_method":`, r.AuthMethod)
	b = optional(b, `,"idp":`, r.IdP)
	b = optional(b, `,"session":`, r.Session)
	b = optional(b, `,"check":`, r.Check)
	return append(b, '}'), true
}

// field appends name (with its leading comma and colon) and v.
func field(b []byte, name, v string) []byte {
	b = append(b, name...)
	return jsonenc.AppendString(b, v)
}

// optional is field for an omitempty string.
func optional(b []byte, name, v string) []byte {
	if v == "" {
		return b
	}
	return field(b, name, v)
}
