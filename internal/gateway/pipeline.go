package gateway

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/trustmesh/trustmesh/internal/policy"
)

// The request pipeline, for every proxied request and every forward-auth
// question:
//
//	route (host, path) → authenticate (bearer JWT or session) → checks → allow
//
// A Check is one per-request decision about an authenticated caller. The
// route's allow lists and policy are Checks; device posture and continuous
// risk checks slot in the same way (Options.Checks), each seeing the same
// Request and able to refuse it with a reason that goes to the audit log.

// Check decides one aspect of a request. It must be safe for concurrent use.
type Check interface {
	Name() string
	Check(ctx context.Context, rq *Request) Verdict
}

// Verdict is a Check's answer.
type Verdict struct {
	Allow  bool
	Reason string // why, for the audit log (never sent to the client)
	Policy string // the deciding policy, if any
	Rule   int    // the deciding rule, -1 when none
}

// Request is what checks see.
type Request struct {
	Route    *Route
	Mode     string // proxy or forward_auth
	Method   string
	Host     string // as the client sent it (with its port, if any)
	Path     string // normalized
	URI      string // as received
	Header   http.Header
	ClientIP netip.Addr
	Identity *Identity
}

// Identity is the authenticated caller.
type Identity struct {
	Method            string // session or bearer
	Provider          string // identity provider name (sessions)
	Issuer            string
	Subject           string
	User              string
	Email             string
	EmailVerified     bool
	PreferredUsername string
	Groups            []string
	Scopes            []string
	Audiences         []string
	Presenter         string
	Claims            map[string]any
	SessionRef        string // a short, non-secret reference to the session, for logs
}

// Principal is the policy engine's request.auth.principal: "iss/sub".
func (id *Identity) Principal() string { return id.Issuer + "/" + id.Subject }

// allowCheck is a route's allow lists: ORed within a key, ANDed across.
type allowCheck struct {
	a                    AllowConfig
	allowUnverifiedEmail func(*Identity) bool
}

func (allowCheck) Name() string { return "allow" }

func (c allowCheck) Check(_ context.Context, rq *Request) Verdict {
	id := rq.Identity
	deny := func(reason string) Verdict { return Verdict{Reason: "allow: " + reason, Rule: -1} }
	if len(c.a.Users) > 0 && !slices.Contains(c.a.Users, id.User) {
		return deny("user " + quote(id.User) + " is not in users")
	}
	if len(c.a.Groups) > 0 && !anyIn(id.Groups, c.a.Groups) {
		return deny("none of the caller's groups " + quoteList(id.Groups) + " is in groups " + quoteList(c.a.Groups))
	}
	emailOK := id.Email != "" && (id.EmailVerified || c.allowUnverifiedEmail(id))
	if len(c.a.Emails) > 0 {
		if !emailOK || !slices.ContainsFunc(c.a.Emails, func(e string) bool { return strings.EqualFold(e, id.Email) }) {
			return deny("email " + quote(id.Email) + verifiedNote(id, emailOK) + " is not in emails")
		}
	}
	if len(c.a.Domains) > 0 {
		_, domain, _ := strings.Cut(id.Email, "@")
		if !emailOK || domain == "" || !slices.ContainsFunc(c.a.Domains, func(d string) bool { return strings.EqualFold(strings.TrimPrefix(d, "@"), domain) }) {
			return deny("email domain " + quote(domain) + verifiedNote(id, emailOK) + " is not in domains")
		}
	}
	if len(c.a.Scopes) > 0 && !anyIn(id.Scopes, c.a.Scopes) {
		return deny("none of the granted scopes " + quoteList(id.Scopes) + " is in scopes " + quoteList(c.a.Scopes))
	}
	return Verdict{Allow: true, Reason: "allow lists matched", Rule: -1}
}

func verifiedNote(id *Identity, ok bool) string {
	if !ok && id.Email != "" {
		return " (not verified)"
	}
	return ""
}

func anyIn(have, want []string) bool {
	for _, h := range have {
		if slices.Contains(want, h) {
			return true
		}
	}
	return false
}

// policyCheck asks the policy engine, with request.auth filled from the
// caller's token or session. A route whose policies do not apply to it
// (a selector or namespace that misses) is denied, not allowed: Istio's
// "no policy, allow" would fail open here.
type policyCheck struct {
	engine *policy.Engine
	route  *Route
}

func (policyCheck) Name() string { return "policy" }

func (c policyCheck) Check(ctx context.Context, rq *Request) Verdict {
	id := rq.Identity
	in := policy.Input{
		Source:      policy.Peer{IP: rq.ClientIP},
		Destination: policy.Destination{Namespace: c.route.PolicyNamespace, Labels: c.route.PolicyLabels},
		Request: &policy.Request{
			Method: rq.Method, Path: rq.URI, Host: rq.Host, Headers: rq.Header,
			Auth: &policy.Auth{Principal: id.Principal(), Audiences: id.Audiences, Presenter: id.Presenter, Claims: id.Claims},
		},
	}
	set := c.engine.Set()
	d := set.Evaluate(ctx, &in)
	if !d.Allow {
		d = set.Explain(ctx, &in)
	}
	v := Verdict{Allow: d.Allow, Reason: "policy: " + d.Reason, Policy: d.Policy, Rule: d.Rule}
	if d.Allow && d.Action == policy.ActionNone && !set.HasRego() {
		return Verdict{Reason: "policy: no AuthorizationPolicy applies to route " + quote(c.route.Name) +
			" (namespace " + quote(c.route.PolicyNamespace) + ", labels " + labelString(c.route.PolicyLabels) + "): denied", Rule: -1}
	}
	return v
}

func labelString(m map[string]string) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	slices.Sort(parts)
	return "{" + strings.Join(parts, ",") + "}"
}

// runChecks runs the checks in order; the first refusal decides.
func runChecks(ctx context.Context, checks []Check, rq *Request) (Verdict, string) {
	last := Verdict{Allow: true, Reason: "authenticated", Rule: -1}
	var reasons []string
	for _, c := range checks {
		v := c.Check(ctx, rq)
		if !v.Allow {
			return v, c.Name()
		}
		reasons = append(reasons, v.Reason)
		if v.Policy != "" {
			last.Policy, last.Rule = v.Policy, v.Rule
		}
	}
	if len(reasons) > 0 {
		last.Reason = strings.Join(reasons, "; ")
	}
	return last, ""
}

func quote(s string) string {
	if len(s) > 256 {
		s = s[:256] + "…"
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}

func quoteList(l []string) string {
	if len(l) > 16 {
		l = append(l[:16:16], "…")
	}
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
