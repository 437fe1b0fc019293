package netpol

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Finding is one lint result.
type Finding struct {
	Severity  Severity `json:"severity"`
	Rule      string   `json:"rule"`
	Namespace string   `json:"namespace,omitempty"`
	Object    string   `json:"object,omitempty"` // "NetworkPolicy ns/name"
	Field     string   `json:"field,omitempty"`
	Source    *Source  `json:"source,omitempty"`
	Message   string   `json:"message"`
}

func (f Finding) String() string {
	var b strings.Builder
	if f.Source != nil {
		b.WriteString(f.Source.String() + ": ")
	}
	fmt.Fprintf(&b, "%s [%s] ", f.Severity, f.Rule)
	if f.Object != "" {
		b.WriteString(f.Object)
		if f.Field != "" {
			b.WriteString(" " + f.Field)
		}
		b.WriteString(": ")
	} else if f.Namespace != "" {
		b.WriteString("namespace " + f.Namespace + ": ")
	}
	b.WriteString(f.Message)
	return b.String()
}

// Lint rules, by name.
const (
	RuleNoDefaultDenyIngress = "no-default-deny-ingress"
	RuleNoDefaultDenyEgress  = "no-default-deny-egress"
	RuleDNSBlocked           = "dns-blocked"
	RuleSelectsNoPod         = "selects-no-pod"
	RuleIgnoredRules         = "ignored-rules"
	RuleUnsatisfiable        = "unsatisfiable-selector"
	RulePeerMatchesNothing   = "peer-matches-nothing"
	RuleExceptCoversCIDR     = "except-covers-cidr"
	RuleNamedPortUndeclared  = "named-port-undeclared"
	RuleBroadPeer            = "broad-peer"
	RulePortWithoutProtocol  = "port-without-protocol"
	RuleDuplicatePolicy      = "duplicate-policy"
	RulePeersORed            = "peers-ored"
)

// DefaultSensitivePorts are the TCP ports a broad ingress peer is flagged
// on: remote shells, databases, caches, queues, secrets stores and the
// Kubernetes control plane.
var DefaultSensitivePorts = map[int32]string{
	22: "ssh", 23: "telnet", 445: "smb", 1433: "mssql", 1521: "oracle", 2379: "etcd", 2380: "etcd",
	3306: "mysql", 3389: "rdp", 5432: "postgres", 5984: "couchdb", 6379: "redis", 6443: "kube-apiserver",
	8200: "vault", 9042: "cassandra", 9092: "kafka", 9200: "elasticsearch", 10250: "kubelet",
	11211: "memcached", 27017: "mongodb",
}

// LintOptions tune Lint.
type LintOptions struct {
	// SensitivePorts (TCP) for broad-peer; nil means DefaultSensitivePorts.
	SensitivePorts map[int32]string
	// DNSNamespace and DNSLabels find the cluster DNS pods
	// (kube-system, k8s-app=kube-dns by default). When the input has none,
	// Lint checks against a stand-in pod with those labels.
	DNSNamespace string
	DNSLabels    map[string]string
	// ExcludeNamespaces are not checked for default-deny and DNS.
	ExcludeNamespaces []string
}

func (o *LintOptions) defaults() {
	if o.SensitivePorts == nil {
		o.SensitivePorts = DefaultSensitivePorts
	}
	if o.DNSNamespace == "" {
		o.DNSNamespace = "kube-system"
	}
	if o.DNSLabels == nil {
		o.DNSLabels = map[string]string{"k8s-app": "kube-dns"}
	}
}

type linter struct {
	a        *Analyzer
	opts     LintOptions
	out      []Finding
	exclude  map[string]bool
	selected map[*cpolicy][]int32 // pods each policy selects
}

func (l *linter) add(sev Severity, rule string, p *Policy, field, format string, args ...any) {
	f := Finding{Severity: sev, Rule: rule, Message: fmt.Sprintf(format, args...), Field: field}
	if p != nil {
		f.Namespace = p.Namespace
		f.Object = "NetworkPolicy " + p.ID()
		src := p.FieldSource(field)
		f.Source = &src
	}
	l.out = append(l.out, f)
}

// Lint checks the cluster's policies for what goes wrong in practice.
// Findings come sorted: errors first, then by namespace and object.
func (a *Analyzer) Lint(opts LintOptions) []Finding {
	opts.defaults()
	l := &linter{a: a, opts: opts, exclude: map[string]bool{}, selected: map[*cpolicy][]int32{}}
	for _, ns := range opts.ExcludeNamespaces {
		l.exclude[ns] = true
	}
	var buf []*cpolicy
	for i, p := range a.pods {
		if p.HostNetwork {
			continue
		}
		buf = a.selecting(buf[:0], int32(i))
		for _, cp := range buf {
			l.selected[cp] = append(l.selected[cp], int32(i))
		}
	}
	l.defaultDeny()
	l.dns()
	l.policies()
	l.duplicates()
	sort.SliceStable(l.out, func(i, j int) bool {
		x, y := l.out[i], l.out[j]
		if x.Severity.rank() != y.Severity.rank() {
			return x.Severity.rank() > y.Severity.rank()
		}
		if x.Namespace != y.Namespace {
			return x.Namespace < y.Namespace
		}
		if x.Object != y.Object {
			return x.Object < y.Object
		}
		return x.Field < y.Field
	})
	return l.out
}

func podList(a *Analyzer, idx []int32) string {
	names := make([]string, 0, 4)
	for i, j := range idx {
		if i == 3 {
			names = append(names, fmt.Sprintf("and %d more", len(idx)-3))
			break
		}
		names = append(names, a.pods[j].Name)
	}
	return strings.Join(names, ", ")
}

func (l *linter) defaultDeny() {
	a := l.a
	for ns, n := range a.c.Namespaces {
		if l.exclude[n.Name] || len(a.nsPods[ns]) == 0 {
			continue
		}
		var ing, eg bool
		for _, cp := range a.policies {
			if int(cp.ns) == ns && cp.sel.matchesAll() {
				ing = ing || cp.p.Ingress
				eg = eg || cp.p.Egress
			}
		}
		open := func(pols [][]*cpolicy) []int32 {
			var out []int32
			for _, i := range a.nsPods[ns] {
				if len(pols[i]) == 0 && !a.pods[i].HostNetwork {
					out = append(out, i)
				}
			}
			return out
		}
		if !ing {
			msg := "no default-deny ingress policy (podSelector: {} with policyTypes [Ingress]): a pod no policy selects accepts connections from anywhere"
			if o := open(a.podIngress); len(o) > 0 {
				msg += fmt.Sprintf("; now %d of %d pods are open (%s)", len(o), len(a.nsPods[ns]), podList(a, o))
			}
			l.out = append(l.out, Finding{Severity: SeverityWarning, Rule: RuleNoDefaultDenyIngress, Namespace: n.Name, Message: msg})
		}
		if !eg {
			msg := "no default-deny egress policy (podSelector: {} with policyTypes [Egress]): a pod no policy selects may connect anywhere"
			if o := open(a.podEgress); len(o) > 0 {
				msg += fmt.Sprintf("; now %d of %d pods are unrestricted (%s)", len(o), len(a.nsPods[ns]), podList(a, o))
			}
			l.out = append(l.out, Finding{Severity: SeverityInfo, Rule: RuleNoDefaultDenyEgress, Namespace: n.Name, Message: msg})
		}
	}
}

// dns checks that every pod isolated for egress can still resolve names:
// UDP 53 (every lookup) and TCP 53 (large answers, retries after
// truncation) to the cluster DNS pods, or to an ipBlock (node-local DNS).
func (l *linter) dns() {
	a := l.a
	var targets []int32
	for i, p := range a.pods {
		if p.Namespace == l.opts.DNSNamespace && labelsMatch(l.opts.DNSLabels, p.Labels) {
			targets = append(targets, int32(i))
		}
	}
	check := a
	standIn := false
	if len(targets) == 0 {
		// A stand-in for the cluster DNS, so policies are checked against
		// what the real pods would be.
		c := *a.c
		c.Pods = append(append([]*Pod(nil), a.c.Pods...), &Pod{Namespace: l.opts.DNSNamespace, Name: "kube-dns", Kind: "Pod",
			Labels: l.opts.DNSLabels, Ports: []ContainerPort{{Name: "dns", Port: 53, Protocol: UDP}, {Name: "dns-tcp", Port: 53, Protocol: TCP}}})
		if c.Namespace(l.opts.DNSNamespace) == nil {
			c.Namespaces = append(append([]*Namespace(nil), a.c.Namespaces...), &Namespace{Name: l.opts.DNSNamespace,
				Labels: map[string]string{NamespaceNameLabel: l.opts.DNSNamespace}, Implicit: true})
			sort.Slice(c.Namespaces, func(i, j int) bool { return c.Namespaces[i].Name < c.Namespaces[j].Name })
		}
		check = NewAnalyzer(&c)
		targets = []int32{int32(len(c.Pods) - 1)}
		standIn = true
	}
	dnsName := fmt.Sprintf("%s pods %s", l.opts.DNSNamespace, labelString(l.opts.DNSLabels))
	if standIn {
		dnsName += " (none in the input: checked against a stand-in)"
	}
	type key struct {
		ns    string
		proto Protocol
	}
	blocked := map[key][]int32{}
	for i, p := range a.pods {
		if len(a.podEgress[i]) == 0 || l.exclude[p.Namespace] {
			continue
		}
		for _, proto := range []Protocol{UDP, TCP} {
			ok := false
			for _, t := range targets {
				if check.Check(check.PodEndpoint(i), check.PodEndpoint(int(t)), proto, 53).Allowed {
					ok = true
					break
				}
			}
			if !ok && a.ipBlockAllows(int32(i), proto, 53) {
				ok = true
			}
			if !ok {
				k := key{p.Namespace, proto}
				blocked[k] = append(blocked[k], int32(i))
			}
		}
	}
	keys := make([]key, 0, len(blocked))
	for k := range blocked {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].ns != keys[j].ns {
			return keys[i].ns < keys[j].ns
		}
		return keys[i].proto > keys[j].proto
	})
	for _, k := range keys {
		pods := blocked[k]
		pols := map[string]bool{}
		for _, i := range pods {
			for _, cp := range a.podEgress[i] {
				pols[cp.p.ID()] = true
			}
		}
		names := make([]string, 0, len(pols))
		for n := range pols {
			names = append(names, n)
		}
		sort.Strings(names)
		sev, why := SeverityError, "every name lookup will fail"
		if k.proto == TCP {
			sev, why = SeverityWarning, "lookups with answers too large for UDP will fail"
		}
		l.out = append(l.out, Finding{Severity: sev, Rule: RuleDNSBlocked, Namespace: k.ns,
			Message: fmt.Sprintf("egress isolation (%s) blocks DNS on %s 53 to %s for %d %s (%s): %s; allow egress to them on UDP and TCP 53",
				strings.Join(names, ", "), k.proto, dnsName, len(pods), plural(len(pods), "pod", "pods"), podList(a, pods), why)})
	}
}

func labelsMatch(want, have map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// ipBlockAllows reports whether an egress rule of pod i allows proto/port
// to some ipBlock (a node-local DNS cache is reached that way).
func (a *Analyzer) ipBlockAllows(i int32, proto Protocol, port int32) bool {
	for _, r := range activeRules(a.podEgress[i], Egress) {
		if !a.ports.get(r.numeric).Contains(proto, port) {
			continue
		}
		for _, c := range r.peers {
			if c.kind == peerIPBlock {
				return true
			}
		}
	}
	return false
}

func (l *linter) policies() {
	a := l.a
	havePods := len(a.pods) > 0
	for _, cp := range a.policies {
		p := cp.p
		for _, d := range ignoredRules(p) {
			field := "spec." + d.String()
			l.add(SeverityError, RuleIgnoredRules, p, field, "has %s rules, but policyTypes %v leaves %s out: the rules are ignored (add %s to policyTypes, or remove them)",
				d, p.Spec.PolicyTypes, titleDir(d), titleDir(d))
		}
		if !cp.sel.satisfiable() {
			l.add(SeverityError, RuleUnsatisfiable, p, "spec.podSelector", "%s can match no pod: the policy selects nothing", cp.sel)
		} else if havePods && len(l.selected[cp]) == 0 {
			if len(a.nsPods[cp.ns]) == 0 {
				l.add(SeverityInfo, RuleSelectsNoPod, p, "spec.podSelector", "namespace %s has no pods in the input", p.Namespace)
			} else {
				l.add(SeverityWarning, RuleSelectsNoPod, p, "spec.podSelector", "podSelector %s selects none of the %d pods in namespace %s: it has no effect", cp.sel, len(a.nsPods[cp.ns]), p.Namespace)
			}
		}
		for _, d := range []Direction{Ingress, Egress} {
			rules := cp.ingress
			if d == Egress {
				rules = cp.egress
			}
			for _, r := range rules {
				l.rule(cp, r)
			}
		}
	}
}

func (l *linter) rule(cp *cpolicy, r *crule) {
	a := l.a
	p := cp.p
	base := fmt.Sprintf("spec.%s[%d]", r.dir, r.index)
	peerField := "from"
	if r.dir == Egress {
		peerField = "to"
	}
	var specPeers []networkingv1.NetworkPolicyPeer
	var specPorts []networkingv1.NetworkPolicyPort
	if r.dir == Ingress {
		specPeers, specPorts = p.Spec.Ingress[r.index].From, p.Spec.Ingress[r.index].Ports
	} else {
		specPeers, specPorts = p.Spec.Egress[r.index].To, p.Spec.Egress[r.index].Ports
	}
	havePods := len(a.pods) > 0
	podOnly, nsOnly := -1, -1
	for i, c := range r.peers {
		field := fmt.Sprintf("%s.%s[%d]", base, peerField, i)
		switch c.kind {
		case peerIPBlock:
			if exceptCovers(c.block) {
				l.add(SeverityError, RuleExceptCoversCIDR, p, field+".ipBlock", "the except blocks cover all of %s: the peer matches no address", c.block.cidr)
			}
			continue
		case peerPods:
			if specPeers[i].PodSelector != nil && podOnly < 0 {
				podOnly = i
			}
		case peerNamespaces:
			if nsOnly < 0 {
				nsOnly = i
			}
		}
		unsat := ""
		for _, s := range []*selector{c.podSel, c.nsSel} {
			if s != nil && !s.satisfiable() {
				unsat = s.String()
			}
		}
		if unsat != "" {
			l.add(SeverityError, RuleUnsatisfiable, p, field, "selector %s can match nothing: the peer never matches", unsat)
			continue
		}
		if havePods && !a.peerBits(c).any() {
			msg := c.describe(a) + ": none in the input"
			if c.nsSel != nil {
				matched := 0
				for _, n := range a.c.Namespaces {
					if c.nsSel.matches(n.Labels) {
						matched++
					}
				}
				if matched == 0 {
					msg = fmt.Sprintf("no namespace in the input has labels %s (namespaces carry %s=<name>; other labels must be set on them)", c.nsSel, NamespaceNameLabel)
				}
			}
			l.add(SeverityWarning, RulePeerMatchesNothing, p, field, "%s", msg)
		}
	}
	if podOnly >= 0 && nsOnly >= 0 {
		l.peersORed(cp, r, fmt.Sprintf("%s.%s", base, peerField), podOnly, nsOnly)
	}
	for i, sp := range specPorts {
		if sp.Protocol == nil {
			l.add(SeverityInfo, RulePortWithoutProtocol, p, fmt.Sprintf("%s.ports[%d]", base, i), "no protocol: it means TCP only (UDP and SCTP need their own entries)")
		}
	}
	l.namedPorts(cp, r, base, specPorts)
	if r.dir == Ingress {
		l.broad(cp, r, base, peerField)
	}
}

// peersORed reports a podSelector peer beside a namespaceSelector peer:
// the documented pitfall where one dash too many turns AND into OR. When
// the namespace peer already covers the pod peer's pods, the pod peer is
// redundant and the namespace peer lets in every pod there: a warning.
func (l *linter) peersORed(cp *cpolicy, r *crule, field string, podPeer, nsPeer int) {
	a := l.a
	pods, ns := r.peers[podPeer], r.peers[nsPeer]
	if len(a.pods) > 0 && ns.nsSel.matches(a.c.Namespaces[cp.ns].Labels) {
		var extra []int32
		nb, pb := a.peerBits(ns), a.peerBits(pods)
		for i := range a.pods {
			if nb.has(i) && !pb.has(i) && a.podNS[i] == cp.ns {
				extra = append(extra, int32(i))
			}
		}
		msg := fmt.Sprintf("peer %d (%s) lets every pod of namespace %s in, so peer %d (%s) restricts nothing",
			nsPeer, ns.describe(a), a.c.Namespaces[cp.ns].Name, podPeer, pods.describe(a))
		if len(extra) > 0 {
			msg += fmt.Sprintf(": %d more pods are allowed (%s)", len(extra), podList(a, extra))
		}
		l.add(SeverityWarning, RulePeersORed, cp.p, field, "%s. Peers are ORed; to require both, write them as one peer (no dash before podSelector)", msg)
		return
	}
	l.add(SeverityInfo, RulePeersORed, cp.p, field, "peer %d (%s) and peer %d (%s) are ORed, not ANDed; to require both, write them as one peer (no dash before podSelector)",
		podPeer, pods.describe(a), nsPeer, ns.describe(a))
}

func exceptCovers(b *ipBlock) bool {
	// The excepts cover the cidr if every address of it is in one: walk
	// the cidr's halves down to the excepts (few, so the walk is short).
	var covered func(p netip.Prefix) bool
	covered = func(p netip.Prefix) bool {
		for _, e := range b.except {
			if e.Bits() <= p.Bits() && e.Contains(p.Addr()) {
				return true
			}
		}
		overlap := false
		for _, e := range b.except {
			if p.Overlaps(e) {
				overlap = true
			}
		}
		if !overlap || p.Bits() == p.Addr().BitLen() {
			return false
		}
		lo := netip.PrefixFrom(p.Addr(), p.Bits()+1)
		hiAddr := p.Addr()
		bytes := hiAddr.AsSlice()
		bit := p.Bits()
		bytes[bit/8] |= 0x80 >> (bit % 8)
		hiAddr, _ = netip.AddrFromSlice(bytes)
		hi := netip.PrefixFrom(hiAddr, p.Bits()+1)
		return covered(lo) && covered(hi)
	}
	return covered(b.cidr)
}

func (l *linter) namedPorts(cp *cpolicy, r *crule, base string, specPorts []networkingv1.NetworkPolicyPort) {
	a := l.a
	if len(r.named) == 0 || len(a.pods) == 0 {
		return
	}
	// Named ports resolve on the destination: the selected pods for
	// ingress, the peers for egress.
	var dsts []int32
	if r.dir == Ingress {
		dsts = l.selected[cp]
	} else {
		for i := range a.pods {
			if r.allPeers {
				dsts = append(dsts, int32(i))
				continue
			}
			for _, c := range r.peers {
				if c.kind != peerIPBlock && a.peerBits(c).has(i) {
					dsts = append(dsts, int32(i))
					break
				}
			}
		}
	}
	if len(dsts) == 0 {
		return
	}
	for i, sp := range specPorts {
		if sp.Port == nil || sp.Port.Type != intstr.String {
			continue
		}
		proto, _ := protocolOf(sp.Protocol)
		found := false
		for _, d := range dsts {
			for _, c := range a.pods[d].Ports {
				if c.Name == sp.Port.StrVal && c.Protocol == proto {
					found = true
				}
			}
		}
		if !found {
			who := "the pods it selects"
			if r.dir == Egress {
				who = "the destination pods"
			}
			l.add(SeverityWarning, RuleNamedPortUndeclared, cp.p, fmt.Sprintf("%s.ports[%d].port", base, i),
				"named port %q on %s is declared by none of %s (%d): the entry allows nothing", sp.Port.StrVal, proto, who, len(dsts))
		}
	}
}

// broad flags ingress peers that let the whole cluster or the whole
// internet reach a sensitive port.
func (l *linter) broad(cp *cpolicy, r *crule, base, peerField string) {
	a := l.a
	var hit []string
	ports := a.ports.get(r.numeric)
	for port, name := range l.opts.SensitivePorts {
		ok := ports.Contains(TCP, port)
		if !ok {
			for _, n := range r.named {
				for _, d := range l.selected[cp] {
					for _, c := range a.pods[d].Ports {
						if c.Name == n.name && c.Protocol == n.proto && n.proto == TCP && c.Port == port {
							ok = true
						}
					}
				}
			}
		}
		if ok {
			hit = append(hit, fmt.Sprintf("%d (%s)", port, name))
		}
	}
	if len(hit) == 0 {
		return
	}
	sort.Strings(hit)
	if len(hit) > 4 {
		hit = append(hit[:4], fmt.Sprintf("and %d more", len(hit)-4))
	}
	where := "TCP " + strings.Join(hit, ", ")
	if r.allPorts {
		where = "every port, including TCP " + strings.Join(hit, ", ")
	}
	if r.allPeers {
		l.add(SeverityWarning, RuleBroadPeer, cp.p, base, "no %s: every source inside and outside the cluster may reach %s", peerField, where)
		return
	}
	for i, c := range r.peers {
		field := fmt.Sprintf("%s.%s[%d]", base, peerField, i)
		switch {
		case c.kind == peerIPBlock && c.block.cidr.Bits() == 0:
			l.add(SeverityWarning, RuleBroadPeer, cp.p, field, "%s lets any address reach %s", c.block, where)
		case (c.kind == peerNamespaces || c.kind == peerBoth) && c.nsSel.matchesAll() && (c.podSel == nil || c.podSel.matchesAll()):
			l.add(SeverityWarning, RuleBroadPeer, cp.p, field, "namespaceSelector: {} lets every pod in every namespace reach %s", where)
		}
	}
}

// duplicates finds policies of one namespace with the same meaning.
func (l *linter) duplicates() {
	seen := map[string]*Policy{}
	for _, cp := range l.a.policies {
		k := cp.p.Namespace + "\x00" + normalizedSpec(cp.p)
		if first, ok := seen[k]; ok {
			l.add(SeverityWarning, RuleDuplicatePolicy, cp.p, "", "same selector, types and rules as NetworkPolicy %s: one of them is redundant", first.ID())
			continue
		}
		seen[k] = cp.p
	}
}

// normalizedSpec renders a spec with defaults applied (protocol TCP,
// effective policyTypes), so equal meanings compare equal.
func normalizedSpec(p *Policy) string {
	spec := *p.Spec.DeepCopy()
	spec.PolicyTypes = nil
	if p.Ingress {
		spec.PolicyTypes = append(spec.PolicyTypes, networkingv1.PolicyTypeIngress)
	}
	if p.Egress {
		spec.PolicyTypes = append(spec.PolicyTypes, networkingv1.PolicyTypeEgress)
	}
	tcp := corev1.ProtocolTCP
	fix := func(ps []networkingv1.NetworkPolicyPort) {
		for i := range ps {
			if ps[i].Protocol == nil {
				ps[i].Protocol = &tcp
			}
		}
	}
	for i := range spec.Ingress {
		fix(spec.Ingress[i].Ports)
	}
	for i := range spec.Egress {
		fix(spec.Egress[i].Ports)
	}
	if !p.Ingress {
		spec.Ingress = nil
	}
	if !p.Egress {
		spec.Egress = nil
	}
	b, _ := json.Marshal(spec) // maps marshal in key order
	return string(b)
}

func (b bitset) any() bool {
	for _, w := range b {
		if w != 0 {
			return true
		}
	}
	return false
}
