package policy

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Action is an AuthorizationPolicy action.
type Action uint8

// Actions, in evaluation order. ActionNone marks a decision no policy made.
const (
	ActionNone Action = iota
	ActionCustom
	ActionDeny
	ActionAllow
	ActionAudit
)

func (a Action) String() string {
	switch a {
	case ActionCustom:
		return "CUSTOM"
	case ActionDeny:
		return "DENY"
	case ActionAllow:
		return "ALLOW"
	case ActionAudit:
		return "AUDIT"
	}
	return ""
}

// Defaults.
const (
	DefaultTrustDomain = "cluster.local"
	DefaultRegoQuery   = "data.trustmesh.authz.allow"
	DefaultNamespace   = "default"
	// DryRunAnnotation marks a policy that is evaluated and reported but
	// not enforced, as Istio's.
	DryRunAnnotation = "istio.io/dry-run"
)

// DefaultRootNamespaces are mesh-wide by default: Trustmesh's own and
// Istio's, so objects copied from an Istio mesh work as written.
var DefaultRootNamespaces = []string{"trustmesh-system", "istio-system"}

// Options shape how sources compile.
type Options struct {
	// TrustDomain is the local trust domain. In policies, principals in it,
	// in one of TrustDomainAliases, or in "cluster.local" match the local
	// trust domain and every alias, as istiod rewrites them.
	TrustDomain        string
	TrustDomainAliases []string
	RootNamespaces     []string // default DefaultRootNamespaces
	DefaultNamespace   string   // for objects without metadata.namespace; default "default"
	RegoQuery          string   // default DefaultRegoQuery
	RegoVersion        string   // "auto" (default: v1, falling back to v0), "v0" or "v1"
	// DefaultMTLS applies where no PeerAuthentication sets a mode.
	// Trustmesh defaults to STRICT (Istio to PERMISSIVE): secure unless told.
	DefaultMTLS MTLSMode
}

func (o *Options) setDefaults() {
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	if len(o.RootNamespaces) == 0 {
		o.RootNamespaces = DefaultRootNamespaces
	}
	if o.DefaultNamespace == "" {
		o.DefaultNamespace = DefaultNamespace
	}
	if o.RegoQuery == "" {
		o.RegoQuery = DefaultRegoQuery
	}
	if o.RegoVersion == "" {
		o.RegoVersion = "auto"
	}
	if o.DefaultMTLS == "" {
		o.DefaultMTLS = MTLSStrict
	}
}

// Set is a compiled, immutable policy set. It is safe for concurrent use;
// replace it as a whole (see Engine) to change policy.
type Set struct {
	opts         Options
	trustDomains []string // local first, then aliases
	roots        map[string]bool
	root         scopeIndex
	namespaces   map[string]*scopeIndex
	policies     []*compiledPolicy
	hasCustom    bool
	rego         *regoProgram
	peer         peerIndex
}

// scopeIndex holds the policies of one namespace (or of all root
// namespaces): those without a selector, and those with one indexed by
// their first (sorted) selector label.
type scopeIndex struct {
	wide  []*compiledPolicy
	bySel map[string]map[string][]*compiledPolicy
}

func (x *scopeIndex) add(p *compiledPolicy) {
	if len(p.selector) == 0 {
		x.wide = append(x.wide, p)
		return
	}
	k := p.selectorKeys[0]
	if x.bySel == nil {
		x.bySel = map[string]map[string][]*compiledPolicy{}
	}
	byVal := x.bySel[k]
	if byVal == nil {
		byVal = map[string][]*compiledPolicy{}
		x.bySel[k] = byVal
	}
	byVal[p.selector[k]] = append(byVal[p.selector[k]], p)
}

type compiledPolicy struct {
	id           string // namespace/name
	namespace    string
	name         string
	order        int
	action       Action
	dryRun       bool
	provider     string
	selector     map[string]string
	selectorKeys []string // sorted
	rules        []*compiledRule
	// For policies with many rules: which rules a principal can match.
	byPrincipal map[string][]int32
	unindexed   []int32
}

func (p *compiledPolicy) selects(labels map[string]string) bool {
	for k, v := range p.selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

type compiledRule struct {
	from     []*compiledSource
	to       []*compiledOperation
	when     []*compiledCondition
	httpOnly bool          // uses a field that only an HTTP request has
	tcpDeny  *compiledRule // DENY on TCP: this rule without its HTTP-only fields
	// Precomputed reasons, so deciding allocates nothing.
	matchedReason string
}

type compiledSource struct {
	principals, notPrincipals               strList
	requestPrincipals, notRequestPrincipals strList
	namespaces, notNamespaces               strList
	ipBlocks, notIPBlocks                   ipList
	remoteIPBlocks, notRemoteIPBlocks       ipList
}

func (s *compiledSource) httpOnly() bool {
	return s.requestPrincipals.set || s.notRequestPrincipals.set
}

type compiledOperation struct {
	hosts, notHosts     strList
	ports, notPorts     portList
	methods, notMethods strList
	paths, notPaths     strList
}

func (o *compiledOperation) httpOnly() bool {
	return o.hosts.set || o.notHosts.set || o.methods.set || o.notMethods.set || o.paths.set || o.notPaths.set
}

type condKind uint8

const (
	condHeader condKind = iota
	condSourceIP
	condRemoteIP
	condSourceNamespace
	condSourcePrincipal
	condAuthPrincipal
	condAuthAudiences
	condAuthPresenter
	condAuthClaims
	condDestIP
	condDestPort
	condSNI
)

func (k condKind) httpOnly() bool {
	switch k {
	case condHeader, condAuthPrincipal, condAuthAudiences, condAuthPresenter, condAuthClaims:
		return true
	}
	return false
}

type compiledCondition struct {
	key               string
	kind              condKind
	header            string   // canonical header name
	claim             []string // claim path
	values, notValues strList
	ips, notIPs       ipList
	ports, notPorts   portList
}

// compiler collects problems while compiling.
type compiler struct {
	opts     Options
	td       []string
	problems []Problem
}

func (c *compiler) errorf(src source, field, format string, a ...any) {
	c.problems = append(c.problems, Problem{File: src.file, Line: src.lineOf(field), Field: field, Message: fmt.Sprintf(format, a...), Severity: SeverityError})
}

func (c *compiler) warnf(src source, field, format string, a ...any) {
	c.problems = append(c.problems, Problem{File: src.file, Line: src.lineOf(field), Field: field, Message: fmt.Sprintf(format, a...), Severity: SeverityWarning})
}

// Compile validates and compiles sources. It returns every problem found
// (the sources' own first); the Set is nil if any is an error.
func Compile(ctx context.Context, src *Sources, opts Options) (*Set, []Problem) {
	opts.setDefaults()
	c := &compiler{opts: opts}
	c.problems = append(c.problems, src.Problems...)
	c.td = append([]string{opts.TrustDomain}, opts.TrustDomainAliases...)
	s := &Set{opts: opts, trustDomains: c.td, roots: map[string]bool{}, namespaces: map[string]*scopeIndex{}}
	for _, r := range opts.RootNamespaces {
		s.roots[r] = true
	}

	seen := map[string]source{}
	for _, ap := range src.AuthorizationPolicies {
		p := c.compileAuthz(ap)
		if p == nil {
			continue
		}
		if prev, dup := seen["AuthorizationPolicy/"+p.id]; dup {
			c.errorf(ap.src, "metadata.name", "AuthorizationPolicy %s is defined twice (also in %s:%d)", p.id, prev.file, prev.line)
			continue
		}
		seen["AuthorizationPolicy/"+p.id] = ap.src
		s.policies = append(s.policies, p)
	}
	sort.Slice(s.policies, func(i, j int) bool { return s.policies[i].id < s.policies[j].id })
	for i, p := range s.policies {
		p.order = i
		if p.action == ActionCustom {
			s.hasCustom = true
		}
		if s.roots[p.namespace] {
			s.root.add(p)
			continue
		}
		x := s.namespaces[p.namespace]
		if x == nil {
			x = &scopeIndex{}
			s.namespaces[p.namespace] = x
		}
		x.add(p)
	}

	for _, pa := range src.PeerAuthentications {
		pp := c.compilePeer(pa)
		if pp == nil {
			continue
		}
		if prev, dup := seen["PeerAuthentication/"+pp.id]; dup {
			c.errorf(pa.src, "metadata.name", "PeerAuthentication %s is defined twice (also in %s:%d)", pp.id, prev.file, prev.line)
			continue
		}
		seen["PeerAuthentication/"+pp.id] = pa.src
		s.peer.add(pp, s.roots)
	}
	s.peer.sort()

	if len(src.RegoModules) > 0 {
		prog, probs := compileRego(ctx, src.RegoModules, src.Data, opts.RegoQuery, opts.RegoVersion)
		c.problems = append(c.problems, probs...)
		s.rego = prog
	}
	if s.hasCustom && len(src.RegoModules) == 0 {
		for _, p := range s.policies {
			if p.action == ActionCustom {
				c.problems = append(c.problems, Problem{File: "", Message: fmt.Sprintf("CUSTOM AuthorizationPolicy %s needs a Rego policy to delegate to: load .rego modules with it", p.id), Severity: SeverityError})
			}
		}
	}
	sort.SliceStable(c.problems, func(i, j int) bool {
		a, b := c.problems[i], c.problems[j]
		if a.File != b.File {
			return a.File < b.File
		}
		return a.Line < b.Line
	})
	if hasError(c.problems) {
		return nil, c.problems
	}
	return s, c.problems
}

func (c *compiler) compileAuthz(ap *AuthorizationPolicy) *compiledPolicy {
	src := ap.src
	before := len(c.problems)
	name, ns := ap.Metadata.Name, ap.Metadata.Namespace
	if name == "" {
		c.errorf(src, "metadata.name", "AuthorizationPolicy has no metadata.name")
	}
	if ns == "" {
		ns = c.opts.DefaultNamespace
	}
	p := &compiledPolicy{id: ns + "/" + name, namespace: ns, name: name}
	switch ap.Spec.Action {
	case "", "ALLOW":
		p.action = ActionAllow
	case "DENY":
		p.action = ActionDeny
	case "AUDIT":
		p.action = ActionAudit
	case "CUSTOM":
		p.action = ActionCustom
	default:
		c.errorf(src, "spec.action", "unknown action %q: want ALLOW, DENY, AUDIT or CUSTOM", ap.Spec.Action)
	}
	if p.action == ActionCustom {
		if ap.Spec.Provider == nil || ap.Spec.Provider.Name == "" {
			c.errorf(src, "spec.action", "a CUSTOM policy needs provider.name")
		} else {
			p.provider = ap.Spec.Provider.Name
		}
	} else if ap.Spec.Provider != nil {
		c.errorf(src, "spec.provider", "provider is only valid with action CUSTOM")
	}
	if v, ok := ap.Metadata.Annotations[DryRunAnnotation]; ok {
		switch strings.ToLower(v) {
		case "true":
			p.dryRun = true
		case "false":
		default:
			c.errorf(src, "metadata.annotations["+DryRunAnnotation+"]", "want \"true\" or \"false\", not %q", v)
		}
		if p.dryRun && p.action == ActionCustom {
			c.errorf(src, "metadata.annotations["+DryRunAnnotation+"]", "dry-run is not supported for CUSTOM policies")
		}
	}
	if ap.Spec.TargetRef != nil || len(ap.Spec.TargetRefs) > 0 {
		field := "spec.targetRef"
		if ap.Spec.TargetRef == nil {
			field = "spec.targetRefs"
		}
		c.errorf(src, field, "targetRef attaches policy to Gateway API resources, which Trustmesh does not serve; select workloads with spec.selector.matchLabels")
	}
	p.selector, p.selectorKeys = c.compileSelector(src, ap.Spec.Selector)
	for i, r := range ap.Spec.Rules {
		path := fmt.Sprintf("spec.rules[%d]", i)
		cr := c.compileRule(src, path, r)
		if cr == nil {
			continue
		}
		cr.matchedReason = fmt.Sprintf("%s by %s policy %s rule %d", map[bool]string{true: "allowed", false: "denied"}[p.action != ActionDeny && p.action != ActionCustom], p.action, p.id, i)
		p.rules = append(p.rules, cr)
	}
	if len(c.problems) > before && hasError(c.problems[before:]) {
		return nil
	}
	p.indexRules()
	return p
}

func hasError(ps []Problem) bool {
	for _, p := range ps {
		if p.Severity == SeverityError {
			return true
		}
	}
	return false
}

func (c *compiler) compileSelector(src source, sel *WorkloadSelector) (map[string]string, []string) {
	if sel == nil || len(sel.MatchLabels) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, len(sel.MatchLabels))
	for k := range sel.MatchLabels {
		if k == "" {
			c.errorf(src, "spec.selector.matchLabels", "empty label key")
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return sel.MatchLabels, keys
}

// rulePrincipalIndexMin is the rule count from which a policy indexes its
// rules by exact principal.
const rulePrincipalIndexMin = 16

// indexRules builds the principal index for large policies: a rule whose
// every source lists only exact principals can only match one of them.
func (p *compiledPolicy) indexRules() {
	if len(p.rules) < rulePrincipalIndexMin {
		return
	}
	p.byPrincipal = map[string][]int32{}
	for i, r := range p.rules {
		var vals []string
		indexable := len(r.from) > 0
		for _, s := range r.from {
			if !s.principals.set {
				indexable = false
				break
			}
			for v := range s.principals.exact {
				vals = append(vals, v)
			}
			for _, m := range s.principals.ms {
				if m.kind != matchExact {
					indexable = false
				}
				vals = append(vals, m.val)
			}
		}
		if !indexable {
			p.unindexed = append(p.unindexed, int32(i))
			continue
		}
		for _, v := range vals {
			p.byPrincipal[v] = append(p.byPrincipal[v], int32(i))
		}
	}
}

func (c *compiler) compileRule(src source, path string, r *Rule) *compiledRule {
	cr := &compiledRule{}
	if r == nil {
		return cr // `- {}` decodes to an empty rule; a null entry is the same
	}
	for i, f := range r.From {
		fp := fmt.Sprintf("%s.from[%d]", path, i)
		if f == nil || f.Source == nil {
			c.errorf(src, fp, "from entry needs a source")
			continue
		}
		cs := c.compileSource(src, fp+".source", f.Source)
		if cs != nil {
			cr.from = append(cr.from, cs)
		}
	}
	for i, t := range r.To {
		tp := fmt.Sprintf("%s.to[%d]", path, i)
		if t == nil || t.Operation == nil {
			c.errorf(src, tp, "to entry needs an operation")
			continue
		}
		co := c.compileOperation(src, tp+".operation", t.Operation)
		if co != nil {
			cr.to = append(cr.to, co)
		}
	}
	for i, w := range r.When {
		wp := fmt.Sprintf("%s.when[%d]", path, i)
		if w == nil {
			c.errorf(src, wp, "empty condition")
			continue
		}
		cc := c.compileCondition(src, wp, w)
		if cc != nil {
			cr.when = append(cr.when, cc)
		}
	}
	for _, s := range cr.from {
		cr.httpOnly = cr.httpOnly || s.httpOnly()
	}
	for _, o := range cr.to {
		cr.httpOnly = cr.httpOnly || o.httpOnly()
	}
	for _, w := range cr.when {
		cr.httpOnly = cr.httpOnly || w.kind.httpOnly()
	}
	cr.tcpDeny = cr
	if cr.httpOnly {
		cr.tcpDeny = cr.withoutHTTP()
	}
	return cr
}

// withoutHTTP is the rule as Istio applies a DENY policy to TCP: HTTP-only
// fields are dropped, so the rule matches more connections, never fewer.
func (r *compiledRule) withoutHTTP() *compiledRule {
	out := &compiledRule{}
	for _, s := range r.from {
		c := *s
		c.requestPrincipals, c.notRequestPrincipals = strList{}, strList{}
		out.from = append(out.from, &c)
	}
	for _, o := range r.to {
		c := *o
		c.hosts, c.notHosts, c.methods, c.notMethods, c.paths, c.notPaths = strList{}, strList{}, strList{}, strList{}, strList{}, strList{}
		out.to = append(out.to, &c)
	}
	for _, w := range r.when {
		if !w.kind.httpOnly() {
			out.when = append(out.when, w)
		}
	}
	out.tcpDeny = out
	return out
}

func (c *compiler) strings(src source, field string, vals []string) bool {
	ok := true
	for i, v := range vals {
		if v == "" {
			c.errorf(src, fmt.Sprintf("%s[%d]", field, i), "empty value")
			ok = false
		}
	}
	return ok
}

func (c *compiler) compileSource(src source, path string, s *Source) *compiledSource {
	cs := &compiledSource{}
	empty := true
	strField := func(name string, vals []string, principal bool) strList {
		if len(vals) == 0 {
			return strList{}
		}
		empty = false
		c.strings(src, path+"."+name, vals)
		if principal {
			vals = c.expandPrincipals(vals)
		}
		return newStrList(vals, false)
	}
	ipField := func(name string, vals []string) ipList {
		if len(vals) == 0 {
			return ipList{}
		}
		empty = false
		l := ipList{set: true}
		for i, v := range vals {
			p, err := parseIPOrCIDR(v)
			if err != nil {
				c.errorf(src, fmt.Sprintf("%s.%s[%d]", path, name, i), "%v", err)
				continue
			}
			l.prefixes = append(l.prefixes, p)
		}
		return l
	}
	cs.principals = strField("principals", s.Principals, true)
	cs.notPrincipals = strField("notPrincipals", s.NotPrincipals, true)
	if len(s.ServiceAccounts) > 0 || len(s.NotServiceAccounts) > 0 {
		empty = false
		sa := c.serviceAccountPrincipals(src, path+".serviceAccounts", s.ServiceAccounts)
		nsa := c.serviceAccountPrincipals(src, path+".notServiceAccounts", s.NotServiceAccounts)
		if len(sa) > 0 {
			if cs.principals.set {
				c.errorf(src, path+".serviceAccounts", "principals and serviceAccounts cannot both be set")
			}
			cs.principals = newStrList(sa, false)
		}
		if len(nsa) > 0 {
			if cs.notPrincipals.set {
				c.errorf(src, path+".notServiceAccounts", "notPrincipals and notServiceAccounts cannot both be set")
			}
			cs.notPrincipals = newStrList(nsa, false)
		}
	}
	cs.requestPrincipals = strField("requestPrincipals", s.RequestPrincipals, false)
	cs.notRequestPrincipals = strField("notRequestPrincipals", s.NotRequestPrincipals, false)
	cs.namespaces = strField("namespaces", s.Namespaces, false)
	cs.notNamespaces = strField("notNamespaces", s.NotNamespaces, false)
	cs.ipBlocks = ipField("ipBlocks", s.IPBlocks)
	cs.notIPBlocks = ipField("notIpBlocks", s.NotIPBlocks)
	cs.remoteIPBlocks = ipField("remoteIpBlocks", s.RemoteIPBlocks)
	cs.notRemoteIPBlocks = ipField("notRemoteIpBlocks", s.NotRemoteIPBlocks)
	if empty {
		c.errorf(src, path, "source must set at least one field")
		return nil
	}
	return cs
}

// serviceAccountPrincipals turns "namespace/name" service accounts into
// the exact principals they stand for in every local trust domain.
func (c *compiler) serviceAccountPrincipals(src source, field string, vals []string) []string {
	var out []string
	for i, v := range vals {
		ns, sa, ok := strings.Cut(v, "/")
		if !ok || ns == "" || sa == "" || strings.ContainsAny(v, "*") || strings.Contains(sa, "/") {
			c.errorf(src, fmt.Sprintf("%s[%d]", field, i), "%q: want namespace/serviceaccount", v)
			continue
		}
		for _, td := range c.td {
			out = append(out, td+"/ns/"+ns+"/sa/"+sa)
		}
	}
	return out
}

// expandPrincipals applies istiod's trust-domain rewriting: a principal
// whose trust domain is "cluster.local", the local trust domain or an alias
// stands for the same path in the local trust domain and in every alias.
// Principals starting with "*" do not enforce a trust domain and are kept.
func (c *compiler) expandPrincipals(vals []string) []string {
	var out []string
	seen := map[string]bool{}
	add := func(v string) {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	for _, v := range vals {
		if strings.HasPrefix(v, "*") {
			add(v)
			continue
		}
		td, rest, ok := strings.Cut(v, "/")
		if !ok {
			add(v)
			continue
		}
		known := td == DefaultTrustDomain
		for _, t := range c.td {
			known = known || t == td
		}
		if !known {
			add(v)
			continue
		}
		for _, t := range c.td {
			add(t + "/" + rest)
		}
	}
	return out
}

func (c *compiler) compileOperation(src source, path string, o *Operation) *compiledOperation {
	co := &compiledOperation{}
	empty := true
	strField := func(name string, vals []string, fold bool) strList {
		if len(vals) == 0 {
			return strList{}
		}
		empty = false
		c.strings(src, path+"."+name, vals)
		return newStrList(vals, fold)
	}
	portField := func(name string, vals []string) portList {
		if len(vals) == 0 {
			return portList{}
		}
		empty = false
		l := portList{set: true}
		for i, v := range vals {
			n, err := parsePort(v)
			if err != nil {
				c.errorf(src, fmt.Sprintf("%s.%s[%d]", path, name, i), "%v", err)
				continue
			}
			l.ports = append(l.ports, n)
		}
		return l
	}
	pathField := func(name string, vals []string) strList {
		if len(vals) == 0 {
			return strList{}
		}
		empty = false
		l := strList{set: true}
		for i, v := range vals {
			field := fmt.Sprintf("%s.%s[%d]", path, name, i)
			if v == "" {
				c.errorf(src, field, "empty value")
				continue
			}
			if isPathTemplate(v) {
				t, err := compilePathTemplate(v)
				if err != nil {
					c.errorf(src, field, "%v", err)
					continue
				}
				l.ms = append(l.ms, strMatcher{kind: matchTemplate, val: v, tmpl: t})
				continue
			}
			if !strings.HasPrefix(v, "/") && !strings.HasPrefix(v, "*") {
				c.warnf(src, field, "path %q does not start with /: it can never match a normalized request path", v)
			}
			l.ms = append(l.ms, newStrMatcher(v, false))
		}
		l.index()
		return l
	}
	co.hosts = strField("hosts", o.Hosts, true)
	co.notHosts = strField("notHosts", o.NotHosts, true)
	co.ports = portField("ports", o.Ports)
	co.notPorts = portField("notPorts", o.NotPorts)
	co.methods = strField("methods", o.Methods, false)
	co.notMethods = strField("notMethods", o.NotMethods, false)
	for i, m := range append(append([]string{}, o.Methods...), o.NotMethods...) {
		if m != strings.ToUpper(m) && m != "*" {
			field := fmt.Sprintf("%s.methods[%d]", path, i)
			if i >= len(o.Methods) {
				field = fmt.Sprintf("%s.notMethods[%d]", path, i-len(o.Methods))
			}
			c.warnf(src, field, "method %q is matched case-sensitively: HTTP methods are upper case", m)
		}
	}
	co.paths = pathField("paths", o.Paths)
	co.notPaths = pathField("notPaths", o.NotPaths)
	if empty {
		c.errorf(src, path, "operation must set at least one field")
		return nil
	}
	return co
}

// Condition keys (Istio's authorization attributes).
var conditionKeys = map[string]condKind{
	"source.ip":              condSourceIP,
	"remote.ip":              condRemoteIP,
	"source.namespace":       condSourceNamespace,
	"source.principal":       condSourcePrincipal,
	"request.auth.principal": condAuthPrincipal,
	"request.auth.audiences": condAuthAudiences,
	"request.auth.presenter": condAuthPresenter,
	"destination.ip":         condDestIP,
	"destination.port":       condDestPort,
	"connection.sni":         condSNI,
}

func (c *compiler) compileCondition(src source, path string, w *Condition) *compiledCondition {
	cc := &compiledCondition{key: w.Key}
	key := w.Key
	switch {
	case key == "":
		c.errorf(src, path+".key", "key is required")
		return nil
	case strings.HasPrefix(key, "request.headers["):
		name, ok := strings.CutSuffix(strings.TrimPrefix(key, "request.headers["), "]")
		if !ok || name == "" || strings.ContainsAny(name, "[]") {
			c.errorf(src, path+".key", "%q: want request.headers[Header-Name]", key)
			return nil
		}
		cc.kind, cc.header = condHeader, http.CanonicalHeaderKey(name)
	case strings.HasPrefix(key, "request.auth.claims["):
		claim, err := parseClaimPath(strings.TrimPrefix(key, "request.auth.claims"))
		if err != nil {
			c.errorf(src, path+".key", "%q: %v", key, err)
			return nil
		}
		cc.kind, cc.claim = condAuthClaims, claim
	default:
		k, ok := conditionKeys[key]
		if !ok {
			c.errorf(src, path+".key", "unknown condition key %q: want one of request.headers[…], source.ip, remote.ip, source.namespace, source.principal, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[…], destination.ip, destination.port, connection.sni", key)
			return nil
		}
		cc.kind = k
	}
	if len(w.Values) == 0 && len(w.NotValues) == 0 {
		c.errorf(src, path, "condition %s needs values or notValues", key)
		return nil
	}
	switch cc.kind {
	case condSourceIP, condRemoteIP, condDestIP:
		cc.ips = c.conditionIPs(src, path+".values", w.Values)
		cc.notIPs = c.conditionIPs(src, path+".notValues", w.NotValues)
	case condDestPort:
		cc.ports = c.conditionPorts(src, path+".values", w.Values)
		cc.notPorts = c.conditionPorts(src, path+".notValues", w.NotValues)
	default:
		c.strings(src, path+".values", w.Values)
		c.strings(src, path+".notValues", w.NotValues)
		vals, notVals := w.Values, w.NotValues
		if cc.kind == condSourcePrincipal {
			vals, notVals = c.expandPrincipals(vals), c.expandPrincipals(notVals)
		}
		cc.values = newStrList(vals, false)
		cc.notValues = newStrList(notVals, false)
	}
	return cc
}

func (c *compiler) conditionIPs(src source, field string, vals []string) ipList {
	l := ipList{set: len(vals) > 0}
	for i, v := range vals {
		p, err := parseIPOrCIDR(v)
		if err != nil {
			c.errorf(src, fmt.Sprintf("%s[%d]", field, i), "%v", err)
			continue
		}
		l.prefixes = append(l.prefixes, p)
	}
	return l
}

func (c *compiler) conditionPorts(src source, field string, vals []string) portList {
	l := portList{set: len(vals) > 0}
	for i, v := range vals {
		n, err := parsePort(v)
		if err != nil {
			c.errorf(src, fmt.Sprintf("%s[%d]", field, i), "%v", err)
			continue
		}
		l.ports = append(l.ports, n)
	}
	return l
}

// parseClaimPath parses "[a][b]" into ["a", "b"].
func parseClaimPath(s string) ([]string, error) {
	var out []string
	for s != "" {
		if s[0] != '[' {
			return nil, fmt.Errorf("want request.auth.claims[name] or request.auth.claims[outer][inner]")
		}
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return nil, fmt.Errorf("unclosed [")
		}
		name := s[1:end]
		if name == "" || strings.Contains(name, "[") {
			return nil, fmt.Errorf("empty or malformed claim name")
		}
		out = append(out, name)
		s = s[end+1:]
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no claim name")
	}
	return out, nil
}

// creationTime parses metadata.creationTimestamp (zero when absent).
func creationTime(m Metadata) time.Time {
	t, err := time.Parse(time.RFC3339, m.CreationTimestamp)
	if err != nil {
		return time.Time{}
	}
	return t
}

func itoa(i int) string { return strconv.Itoa(i) }
