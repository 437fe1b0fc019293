package policy

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Decision is the engine's answer, with what decided it.
type Decision struct {
	Allow  bool
	Action Action // the deciding action; ActionNone when no policy decided
	Policy string // "namespace/name" of the deciding policy, "" when none
	Rule   int    // index of the deciding rule, -1 when none
	// Reason says why, in words. Evaluate gives a short one; Explain also
	// lists, for a denial, every policy that applied and why each rule
	// did not match.
	Reason string
	DryRun []DryRunResult // dry-run policies that applied, evaluated but not enforced
	Audit  []string       // AUDIT policies that matched
	// Err is set when the decision could not be made normally (a path that
	// cannot be normalized, a failing Rego evaluation). The request is
	// denied: the engine fails closed.
	Err error
}

// DryRunResult is what a dry-run policy would have done.
type DryRunResult struct {
	Policy  string `json:"policy"`
	Action  string `json:"action"`
	Matched bool   `json:"matched"`
	Rule    *int   `json:"rule"`
}

// attrs is an Input prepared for matching.
type attrs struct {
	in           *Input
	principal    string // source principal without "spiffe://"
	srcNamespace string
	remoteIP     netip.Addr
	http         bool
	path         string // normalized
	// paramFree is path without its segments' ";…" parameters (";" or
	// "%3B" to the end of the segment), "" when path has none: Tomcat,
	// Jetty and Spring serve "/admin;x/users" as "/admin/users". A DENY
	// policy matches if it matches either form, an ALLOW policy only if
	// it matches both, so parameters can neither escape a DENY nor win an
	// ALLOW (Istio matches the path as it is).
	paramFree    string
	method, host string
	// bareHost is host without its port and trailing dot ("" when that is
	// host itself): hosts rules match either form, so a DENY on
	// "admin.example.com" is not escaped by sending "admin.example.com:443"
	// or "admin.example.com." (Istio matches the raw authority only).
	bareHost string
	auth     *Auth
}

func prepare(in *Input) (attrs, error) {
	a := attrs{in: in}
	a.principal = strings.TrimPrefix(in.Source.Principal, "spiffe://")
	a.srcNamespace = in.Source.Namespace
	if a.srcNamespace == "" {
		a.srcNamespace = spiffeNamespace(in.Source.Principal)
	}
	a.remoteIP = in.Source.RemoteIP
	if !a.remoteIP.IsValid() {
		a.remoteIP = in.Source.IP
	}
	if r := in.Request; r != nil {
		a.http = true
		a.method, a.host, a.auth = r.Method, r.Host, r.Auth
		if b := bareHost(r.Host); b != r.Host {
			a.bareHost = b
		}
		p, err := NormalizePath(r.Path)
		if err != nil {
			return a, err
		}
		a.path = p
		a.paramFree = withoutPathParams(p)
	}
	return a, nil
}

// withoutPathParams removes each segment's parameters from a normalized
// path, "" when it has none.
func withoutPathParams(p string) string {
	if !strings.Contains(p, ";") && !strings.Contains(p, "%3B") {
		return ""
	}
	b := make([]byte, 0, len(p))
	for seg := range strings.SplitSeq(p[1:], "/") {
		if i := strings.Index(seg, ";"); i >= 0 {
			seg = seg[:i]
		}
		if i := strings.Index(seg, "%3B"); i >= 0 {
			seg = seg[:i]
		}
		b = append(b, '/')
		b = append(b, seg...)
	}
	// Dot segments again: "/public/..;/admin" is "/admin" once its
	// parameter goes (Tomcat's classic "..;" bypass).
	return removeDotSegments(b)
}

// withoutParams is a with the path's parameter-free form as its path
// (call only when a.paramFree is set).
func (a *attrs) withoutParams() *attrs {
	b := *a
	b.path = a.paramFree
	return &b
}

// matchDeny is match for a DENY policy: under either form of the path.
func (p *compiledPolicy) matchDeny(a *attrs) int {
	if r := p.match(a); r >= 0 || a.paramFree == "" {
		return r
	}
	return p.match(a.withoutParams())
}

// matchAllow is match for an ALLOW policy: under both forms of the path.
func (p *compiledPolicy) matchAllow(a *attrs) int {
	r := p.match(a)
	if r < 0 || a.paramFree == "" {
		return r
	}
	if p.match(a.withoutParams()) < 0 {
		return -1
	}
	return r
}

// Evaluate decides in. It allocates nothing in the common case (no Rego,
// no dry-run or audit policies, a path already normal).
func (s *Set) Evaluate(ctx context.Context, in *Input) Decision {
	return s.evaluate(ctx, in, false)
}

// Explain decides in exactly as Evaluate does, with a full reason.
func (s *Set) Explain(ctx context.Context, in *Input) Decision {
	return s.evaluate(ctx, in, true)
}

func (s *Set) evaluate(ctx context.Context, in *Input, explain bool) Decision {
	a, err := prepare(in)
	if err != nil {
		return Decision{Rule: -1, Reason: "request path rejected: " + err.Error(), Err: err}
	}
	ns := in.Destination.Namespace
	if ns == "" {
		ns = s.opts.DefaultNamespace
	}
	var buf [16]*compiledPolicy
	list := s.applicable(buf[:0], ns, in.Destination.Labels)
	return s.decide(ctx, list, &a, explain)
}

// applicable appends the policies that apply to a workload, in order.
func (s *Set) applicable(dst []*compiledPolicy, ns string, labels map[string]string) []*compiledPolicy {
	dst = s.root.collect(dst, labels)
	if x := s.namespaces[ns]; x != nil && !s.roots[ns] {
		dst = x.collect(dst, labels)
	}
	// Insertion sort by order: the lists are short.
	for i := 1; i < len(dst); i++ {
		for j := i; j > 0 && dst[j].order < dst[j-1].order; j-- {
			dst[j], dst[j-1] = dst[j-1], dst[j]
		}
	}
	return dst
}

func (x *scopeIndex) collect(dst []*compiledPolicy, labels map[string]string) []*compiledPolicy {
	dst = append(dst, x.wide...)
	if x.bySel == nil {
		return dst
	}
	for k, v := range labels {
		byVal := x.bySel[k]
		if byVal == nil {
			continue
		}
		for _, p := range byVal[v] {
			if p.selects(labels) {
				dst = append(dst, p)
			}
		}
	}
	return dst
}

// Reasons that need no formatting.
const (
	reasonNoPolicy       = "no AuthorizationPolicy applies to this workload: allowed (Istio's default)"
	reasonNoAllowApplies = "no ALLOW policy applies to this workload: allowed"
	reasonNoAllowMatched = "no ALLOW policy matched"
)

func (s *Set) decide(ctx context.Context, list []*compiledPolicy, a *attrs, explain bool) Decision {
	d := Decision{Rule: -1}
	for _, p := range list {
		switch {
		case p.dryRun:
			rule := p.match(a)
			r := DryRunResult{Policy: p.id, Action: p.action.String(), Matched: rule >= 0}
			if rule >= 0 {
				r.Rule = &rule
			}
			d.DryRun = append(d.DryRun, r)
		case p.action == ActionAudit:
			if p.match(a) >= 0 {
				d.Audit = append(d.Audit, p.id)
			}
		}
	}

	// 1. CUSTOM: Rego. With CUSTOM policies, Rego is asked about the
	// requests they match (as Istio's ext_authz); without any, about every
	// request.
	regoAllowed := false
	if s.rego != nil {
		ask, by, rule := !s.hasCustom, "", -1
		for _, p := range list {
			if ask || p.action != ActionCustom || p.dryRun {
				continue
			}
			if r := p.match(a); r >= 0 {
				ask, by, rule = true, p.id, r
				break
			}
		}
		if ask {
			ok, reason, err := s.rego.eval(ctx, a)
			if !ok {
				d.Action, d.Policy, d.Rule, d.Reason, d.Err = ActionCustom, by, rule, reason, err
				if by != "" {
					d.Reason = fmt.Sprintf("denied by CUSTOM policy %s rule %d: %s", by, rule, reason)
				}
				return d
			}
			regoAllowed = true
		}
	}

	// 2. DENY.
	for _, p := range list {
		if p.action != ActionDeny || p.dryRun {
			continue
		}
		if r := p.matchDeny(a); r >= 0 {
			d.Action, d.Policy, d.Rule, d.Reason = ActionDeny, p.id, r, p.rules[r].matchedReason
			return d
		}
	}

	// 3. ALLOW, or allowed when none applies.
	allows := 0
	for _, p := range list {
		if p.action != ActionAllow || p.dryRun {
			continue
		}
		allows++
		if r := p.matchAllow(a); r >= 0 {
			d.Allow, d.Action, d.Policy, d.Rule, d.Reason = true, ActionAllow, p.id, r, p.rules[r].matchedReason
			return d
		}
	}
	if allows == 0 {
		d.Allow = true
		switch {
		case regoAllowed:
			d.Action, d.Reason = ActionCustom, s.rego.allowedReason
		case len(list) == 0:
			d.Reason = reasonNoPolicy
		default:
			d.Reason = reasonNoAllowApplies
		}
		return d
	}
	d.Reason = reasonNoAllowMatched
	if explain {
		d.Reason = explainNoAllow(list, a, allows)
	}
	return d
}

// match returns the index of the first rule of p that matches, or -1.
func (p *compiledPolicy) match(a *attrs) int {
	if p.byPrincipal == nil {
		for i, r := range p.rules {
			if p.ruleMatches(r, a) {
				return i
			}
		}
		return -1
	}
	// Rules indexed under the principal, merged in order with the rules
	// that could match any principal.
	idx, un := p.byPrincipal[a.principal], p.unindexed
	i, j := 0, 0
	for i < len(idx) || j < len(un) {
		var r int32
		if j >= len(un) || (i < len(idx) && idx[i] < un[j]) {
			r = idx[i]
			i++
		} else {
			r = un[j]
			j++
		}
		if p.ruleMatches(p.rules[r], a) {
			return int(r)
		}
	}
	return -1
}

// ruleMatches applies Istio's TCP rule: HTTP-only fields make a rule never
// match, except in a DENY policy, where they are ignored.
func (p *compiledPolicy) ruleMatches(r *compiledRule, a *attrs) bool {
	if !a.http && r.httpOnly {
		if p.action != ActionDeny {
			return false
		}
		r = r.tcpDeny
	}
	return r.mismatch(a) == ""
}

// mismatch returns "" when the rule matches, else the first reason it
// does not. The reasons are constants, so matching allocates nothing.
func (r *compiledRule) mismatch(a *attrs) string {
	if len(r.from) > 0 {
		why := ""
		for _, s := range r.from {
			w := s.mismatch(a)
			if w == "" {
				why = ""
				break
			}
			if why == "" {
				why = w
			}
		}
		if why != "" {
			return why
		}
	}
	if len(r.to) > 0 {
		why := ""
		for _, o := range r.to {
			w := o.mismatch(a)
			if w == "" {
				why = ""
				break
			}
			if why == "" {
				why = w
			}
		}
		if why != "" {
			return why
		}
	}
	for _, w := range r.when {
		if !w.matches(a) {
			return "condition " + w.key + " not met"
		}
	}
	return ""
}

func (s *compiledSource) mismatch(a *attrs) string {
	switch {
	case s.principals.set && !s.principals.any(a.principal):
		if a.principal == "" {
			return "principal mismatch (no mTLS identity)"
		}
		return "principal mismatch"
	case s.notPrincipals.set && s.notPrincipals.any(a.principal):
		return "principal excluded by notPrincipals"
	case s.requestPrincipals.set && !s.requestPrincipals.any(a.authPrincipal()):
		return "request principal mismatch"
	case s.notRequestPrincipals.set && s.notRequestPrincipals.any(a.authPrincipal()):
		return "request principal excluded by notRequestPrincipals"
	case s.namespaces.set && !s.namespaces.any(a.srcNamespace):
		return "namespace mismatch"
	case s.notNamespaces.set && s.notNamespaces.any(a.srcNamespace):
		return "namespace excluded by notNamespaces"
	case s.ipBlocks.set && !s.ipBlocks.contains(a.in.Source.IP):
		return "source IP not in ipBlocks"
	case s.notIPBlocks.set && s.notIPBlocks.contains(a.in.Source.IP):
		return "source IP in notIpBlocks"
	case s.remoteIPBlocks.set && !s.remoteIPBlocks.contains(a.remoteIP):
		return "remote IP not in remoteIpBlocks"
	case s.notRemoteIPBlocks.set && s.notRemoteIPBlocks.contains(a.remoteIP):
		return "remote IP in notRemoteIpBlocks"
	}
	return ""
}

// bareHost drops a port (host:port, [v6]:port) and a trailing dot, without
// allocating.
func bareHost(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") &&
		(strings.HasPrefix(h, "[") || strings.Count(h, ":") == 1) {
		h = h[:i]
	}
	return strings.TrimSuffix(h, ".")
}

// hostIn matches the Host as sent or without its port and trailing dot.
func (a *attrs) hostIn(l *strList) bool {
	return l.any(a.host) || (a.bareHost != "" && l.any(a.bareHost))
}

func (a *attrs) authPrincipal() string {
	if a.auth == nil {
		return ""
	}
	return a.auth.Principal
}

func (o *compiledOperation) mismatch(a *attrs) string {
	port := a.in.Destination.Port
	switch {
	case o.hosts.set && !a.hostIn(&o.hosts):
		return "host mismatch"
	case o.notHosts.set && a.hostIn(&o.notHosts):
		return "host excluded by notHosts"
	case o.ports.set && !o.ports.contains(port):
		return "port mismatch"
	case o.notPorts.set && o.notPorts.contains(port):
		return "port excluded by notPorts"
	case o.methods.set && !o.methods.any(a.method):
		return "method mismatch"
	case o.notMethods.set && o.notMethods.any(a.method):
		return "method excluded by notMethods"
	case o.paths.set && !o.paths.any(a.path):
		return "path mismatch"
	case o.notPaths.set && o.notPaths.any(a.path):
		return "path excluded by notPaths"
	}
	return ""
}

func (w *compiledCondition) matches(a *attrs) bool {
	in := a.in
	switch w.kind {
	case condSourceIP:
		return ipCond(&w.ips, &w.notIPs, in.Source.IP)
	case condRemoteIP:
		return ipCond(&w.ips, &w.notIPs, a.remoteIP)
	case condDestIP:
		return ipCond(&w.ips, &w.notIPs, in.Destination.IP)
	case condDestPort:
		p := in.Destination.Port
		return (!w.ports.set || w.ports.contains(p)) && !(w.notPorts.set && w.notPorts.contains(p))
	case condSourceNamespace:
		return w.strCond(a.srcNamespace)
	case condSourcePrincipal:
		return w.strCond(a.principal)
	case condSNI:
		return w.strCond(in.Connection.SNI)
	case condHeader:
		v := ""
		if in.Request != nil {
			switch vs := in.Request.Headers[w.header]; len(vs) {
			case 0:
			case 1:
				v = vs[0]
			default:
				v = strings.Join(vs, ",")
			}
		}
		return w.strCond(v)
	case condAuthPrincipal:
		return w.strCond(a.authPrincipal())
	case condAuthPresenter:
		v := ""
		if a.auth != nil {
			v = a.auth.Presenter
		}
		return w.strCond(v)
	case condAuthAudiences:
		var auds []string
		if a.auth != nil {
			auds = a.auth.Audiences
		}
		return (!w.values.set || w.values.anyOf(auds)) && !(w.notValues.set && w.notValues.anyOf(auds))
	case condAuthClaims:
		var claims map[string]any
		if a.auth != nil {
			claims = a.auth.Claims
		}
		v := lookupClaim(claims, w.claim)
		return (!w.values.set || claimMatches(&w.values, v)) && !(w.notValues.set && claimMatches(&w.notValues, v))
	}
	return false
}

func (w *compiledCondition) strCond(v string) bool {
	return (!w.values.set || w.values.any(v)) && !(w.notValues.set && w.notValues.any(v))
}

func ipCond(in, notIn *ipList, a netip.Addr) bool {
	return (!in.set || in.contains(a)) && !(notIn.set && notIn.contains(a))
}

func lookupClaim(claims map[string]any, path []string) any {
	var cur any = claims
	for _, k := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	return cur
}

// claimMatches matches a string claim, or any string in a list claim, as
// Istio does; other claim types never match.
func claimMatches(l *strList, v any) bool {
	switch t := v.(type) {
	case string:
		return l.any(t)
	case []string:
		return l.anyOf(t)
	case []any:
		for _, e := range t {
			if s, ok := e.(string); ok && l.any(s) {
				return true
			}
		}
	}
	return false
}

// explainNoAllow lists every ALLOW policy that applied and why each of its
// rules did not match.
func explainNoAllow(list []*compiledPolicy, a *attrs, allows int) string {
	var b strings.Builder
	b.WriteString(reasonNoAllowMatched)
	fmt.Fprintf(&b, "; %d %s applied: ", allows, plural(allows, "policy", "policies"))
	first := true
	for _, p := range list {
		if p.action != ActionAllow || p.dryRun {
			continue
		}
		if !first {
			b.WriteString(", ")
		}
		first = false
		b.WriteString(p.id)
		if len(p.rules) == 0 {
			b.WriteString(" (no rules: allows nothing)")
			continue
		}
		b.WriteString(" (")
		for i, r := range p.rules {
			if i > 0 {
				b.WriteString("; ")
			}
			why := ""
			if !a.http && r.httpOnly {
				why = "HTTP-only fields never match a TCP connection"
			} else {
				why = r.mismatch(a)
			}
			if why == "" && a.paramFree != "" {
				// It matched the path as sent; not without its parameters.
				why = r.mismatch(a.withoutParams()) + " (path without its ;parameters " + strconv.Quote(a.paramFree) + ")"
			}
			fmt.Fprintf(&b, "rule %d: %s", i, why)
		}
		b.WriteString(")")
	}
	return b.String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
