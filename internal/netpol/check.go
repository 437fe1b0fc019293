package netpol

import (
	"fmt"
	"strings"
)

// Verdict is the decision on one connection, with the evidence.
type Verdict struct {
	From, To Endpoint
	Protocol Protocol
	Port     int32
	Allowed  bool
	Egress   Side // the source's egress
	Ingress  Side // the destination's ingress
	Reason   string
}

// Exemptions: why policy does not decide a side.
const (
	ExemptSelf        = "self"         // a pod cannot block traffic to itself
	ExemptNode        = "node"         // traffic between a pod and its own node is always allowed
	ExemptHostNetwork = "host-network" // hostNetwork pods are not selected by policies
	ExemptExternal    = "external"     // this end is outside the cluster: no policy of ours applies
)

// Side is one direction's decision.
type Side struct {
	Allowed bool
	// Isolated: some policy selects the pod for this direction, so only
	// what those policies allow passes.
	Isolated bool
	// Exempt names why no policy decides this side ("" if policies do).
	Exempt string
	// Policies isolating the pod for this direction ("ns/name"), sorted.
	Policies []string
	// AllowedBy lists the rules that allow the connection.
	AllowedBy []RuleRef
	// Evaluated has every applicable policy with why each rule did or
	// did not match.
	Evaluated []PolicyEval
	Reason    string
}

// RuleRef names a rule: a policy and its index in spec.ingress or spec.egress.
type RuleRef struct {
	Policy string `json:"policy"`
	Rule   int    `json:"rule"`
}

// PolicyEval is one applicable policy's rules, evaluated.
type PolicyEval struct {
	Policy string
	Rules  []RuleEval // empty: the policy allows nothing in this direction
}

// RuleEval says whether a rule matched and why (not).
type RuleEval struct {
	Index   int
	Matched bool
	Peer    string // which peer matched, or why none did
	Ports   string // which port matched, or what the rule allows instead
}

// Check decides whether from may connect to port on to. port must be
// numeric (resolve named ports with ResolvePort first).
func (a *Analyzer) Check(from, to Endpoint, proto Protocol, port int32) Verdict {
	v := Verdict{From: from, To: to, Protocol: proto, Port: port}
	v.Egress = a.egressSide(from, to, proto, port)
	v.Ingress = a.ingressSide(from, to, proto, port)
	v.Allowed = v.Egress.Allowed && v.Ingress.Allowed
	conn := fmt.Sprintf("%s → %s on %s %d", from, to, proto, port)
	switch {
	case v.Allowed:
		v.Reason = "allowed: " + conn + ": " + v.Egress.Reason + "; " + v.Ingress.Reason
	case !v.Egress.Allowed && !v.Ingress.Allowed:
		v.Reason = "denied: " + conn + ": " + v.Egress.Reason + "; " + v.Ingress.Reason
	case !v.Egress.Allowed:
		v.Reason = "denied: " + conn + ": " + v.Egress.Reason
	default:
		v.Reason = "denied: " + conn + ": " + v.Ingress.Reason
	}
	return v
}

// ResolvePort turns a port name into the number the destination pod
// declares for it on proto.
func (a *Analyzer) ResolvePort(to Endpoint, proto Protocol, name string) (int32, error) {
	if to.Pod == nil {
		return 0, fmt.Errorf("port %q: a named port needs a pod destination, not %s", name, to)
	}
	for _, cp := range to.Pod.Ports {
		if cp.Name == name && cp.Protocol == proto {
			return cp.Port, nil
		}
	}
	var names []string
	for _, cp := range to.Pod.Ports {
		if cp.Name != "" {
			names = append(names, fmt.Sprintf("%s (%s %d)", cp.Name, cp.Protocol, cp.Port))
		}
	}
	have := "it declares no named ports"
	if len(names) > 0 {
		have = "it declares " + strings.Join(names, ", ")
	}
	return 0, fmt.Errorf("port %q: %s has no %s port of that name; %s", name, to, proto, have)
}

func samePod(a, b Endpoint) bool { return a.Pod != nil && a.Pod == b.Pod }

// onNodeOf reports whether x is the node pod p runs on: a hostNetwork pod
// on that node, or the node's address.
func onNodeOf(x Endpoint, p *Pod) bool {
	if x.Pod != nil {
		if !x.Pod.HostNetwork {
			return false
		}
		if x.Pod.NodeName != "" && x.Pod.NodeName == p.NodeName {
			return true
		}
		return x.Pod.HostIP.IsValid() && x.Pod.HostIP == p.HostIP
	}
	return x.IP.IsValid() && p.HostIP.IsValid() && x.IP == p.HostIP
}

func (a *Analyzer) egressSide(from, to Endpoint, proto Protocol, port int32) Side {
	switch {
	case from.Pod == nil:
		return Side{Allowed: true, Exempt: ExemptExternal, Reason: fmt.Sprintf("egress: %s is outside the cluster", from)}
	case from.Pod.HostNetwork:
		return Side{Allowed: true, Exempt: ExemptHostNetwork, Reason: fmt.Sprintf("egress: %s uses the host network, which policies do not select", from)}
	case samePod(from, to):
		return Side{Allowed: true, Exempt: ExemptSelf, Reason: "egress: a pod cannot block traffic to itself"}
	case onNodeOf(to, from.Pod):
		return Side{Allowed: true, Exempt: ExemptNode, Reason: fmt.Sprintf("egress: %s is the node %s runs on, which is always allowed", to, from)}
	}
	return a.decide(Egress, a.podEgress[from.idx], from, to, proto, port)
}

func (a *Analyzer) ingressSide(from, to Endpoint, proto Protocol, port int32) Side {
	switch {
	case to.Pod == nil:
		return Side{Allowed: true, Exempt: ExemptExternal, Reason: fmt.Sprintf("ingress: %s is outside the cluster", to)}
	case to.Pod.HostNetwork:
		return Side{Allowed: true, Exempt: ExemptHostNetwork, Reason: fmt.Sprintf("ingress: %s uses the host network, which policies do not select", to)}
	case samePod(from, to):
		return Side{Allowed: true, Exempt: ExemptSelf, Reason: "ingress: a pod cannot block traffic to itself"}
	case onNodeOf(from, to.Pod):
		return Side{Allowed: true, Exempt: ExemptNode, Reason: fmt.Sprintf("ingress: %s is the node %s runs on, which is always allowed", from, to)}
	}
	return a.decide(Ingress, a.podIngress[to.idx], from, to, proto, port)
}

// decide evaluates every rule of every policy isolating the pod (self) for
// dir; peer is the other end, dst the destination (for named ports).
func (a *Analyzer) decide(dir Direction, pols []*cpolicy, from, to Endpoint, proto Protocol, port int32) Side {
	self, peer := to, from
	if dir == Egress {
		self, peer = from, to
	}
	s := Side{}
	if len(pols) == 0 {
		s.Allowed = true
		s.Reason = fmt.Sprintf("%s: %s is not isolated (no policy selects it for %s)", dir, self, titleDir(dir))
		return s
	}
	s.Isolated = true
	for _, cp := range pols {
		s.Policies = append(s.Policies, cp.p.ID())
		pe := PolicyEval{Policy: cp.p.ID()}
		rules := cp.ingress
		if dir == Egress {
			rules = cp.egress
		}
		for _, r := range rules {
			re := a.evalRule(r, peer, to, proto, port)
			if re.Matched {
				s.AllowedBy = append(s.AllowedBy, RuleRef{Policy: cp.p.ID(), Rule: r.index})
			}
			pe.Rules = append(pe.Rules, re)
		}
		s.Evaluated = append(s.Evaluated, pe)
	}
	s.Allowed = len(s.AllowedBy) > 0
	if s.Allowed {
		refs := make([]string, len(s.AllowedBy))
		for i, r := range s.AllowedBy {
			refs[i] = fmt.Sprintf("%s %s rule %d", r.Policy, dir, r.Rule)
		}
		s.Reason = fmt.Sprintf("%s: allowed by %s", dir, strings.Join(refs, ", "))
	} else {
		s.Reason = fmt.Sprintf("%s: %s is isolated by %s and no %s rule allows %s %d %s %s", dir, self,
			strings.Join(s.Policies, ", "), dir, proto, port, map[Direction]string{Ingress: "from", Egress: "to"}[dir], peer)
	}
	return s
}

func titleDir(d Direction) string {
	if d == Ingress {
		return "Ingress"
	}
	return "Egress"
}

// evalRule evaluates one rule for a peer (the other end) toward dst.
func (a *Analyzer) evalRule(r *crule, peer, dst Endpoint, proto Protocol, port int32) RuleEval {
	re := RuleEval{Index: r.index}
	peerOK := r.allPeers
	if r.allPeers {
		re.Peer = "all " + map[Direction]string{Ingress: "sources", Egress: "destinations"}[r.dir]
	} else {
		var why []string
		for i, c := range r.peers {
			ok, reason := a.peerMatches(c, peer)
			if ok {
				peerOK = true
				re.Peer = fmt.Sprintf("peer %d (%s) matches %s", i, c.describe(a), peer)
				break
			}
			why = append(why, fmt.Sprintf("peer %d (%s): %s", i, c.describe(a), reason))
		}
		if !peerOK {
			re.Peer = strings.Join(why, "; ")
		}
	}
	set := a.ports.get(a.rulePorts(r, dst.idx))
	portOK := set.Contains(proto, port)
	switch {
	case r.allPorts:
		re.Ports = "all ports"
	case portOK:
		re.Ports = fmt.Sprintf("%s %d is allowed", proto, port)
	default:
		re.Ports = fmt.Sprintf("%s %d is not allowed (the rule allows %s)", proto, port, a.describePorts(r, dst))
	}
	re.Matched = peerOK && portOK
	return re
}

func (a *Analyzer) describePorts(r *crule, dst Endpoint) string {
	parts := []string{}
	if s := a.ports.get(r.numeric); !s.IsEmpty() {
		parts = append(parts, s.String())
	}
	for _, n := range r.named {
		resolved := "undeclared on " + dst.String()
		if dst.Pod != nil && !dst.Pod.HostNetwork {
			for _, cp := range dst.Pod.Ports {
				if cp.Name == n.name && cp.Protocol == n.proto {
					resolved = fmt.Sprintf("%d on %s", cp.Port, dst)
				}
			}
		}
		parts = append(parts, fmt.Sprintf("%s:%s (%s)", n.proto, n.name, resolved))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// peerMatches reports whether peer c selects endpoint e, and why not.
func (a *Analyzer) peerMatches(c *cpeer, e Endpoint) (bool, string) {
	if c.kind == peerIPBlock {
		var ips []string
		if e.Pod == nil {
			if c.block.contains(e.IP) {
				return true, ""
			}
			return false, e.IP.String() + " is outside it"
		}
		for _, ip := range e.Pod.IPs {
			if c.block.contains(ip) {
				return true, ""
			}
			ips = append(ips, ip.String())
		}
		if len(ips) == 0 {
			return false, e.String() + " has no IP address in the input"
		}
		return false, e.String() + " (" + strings.Join(ips, ", ") + ") is outside it"
	}
	if e.Pod == nil {
		return false, e.String() + " is not a pod: selectors match pods only"
	}
	if e.Pod.HostNetwork {
		return false, e.String() + " uses the host network: selectors do not match it"
	}
	if a.peerMatchesPod(c, e.idx) {
		return true, ""
	}
	ns := a.c.Namespaces[a.podNS[e.idx]]
	switch c.kind {
	case peerPods:
		if a.podNS[e.idx] != c.ns {
			return false, fmt.Sprintf("%s is in namespace %s, not %s", e, ns.Name, a.c.Namespaces[c.ns].Name)
		}
		return false, e.String() + " " + c.podSel.mismatch(e.Pod.Labels)
	case peerNamespaces:
		return false, "namespace " + ns.Name + " " + c.nsSel.mismatch(ns.Labels)
	default:
		if m := c.nsSel.mismatch(ns.Labels); m != "" {
			return false, "namespace " + ns.Name + " " + m
		}
		return false, e.String() + " " + c.podSel.mismatch(e.Pod.Labels)
	}
}

// NotSelecting returns the policies of pod's namespace that do not select
// it, with the reason, for explaining why a policy someone expected to
// apply does not.
func (a *Analyzer) NotSelecting(e Endpoint) []string {
	if e.Pod == nil {
		return nil
	}
	var out []string
	for _, cp := range a.policies {
		if cp.ns != a.podNS[e.idx] {
			continue
		}
		if e.Pod.HostNetwork {
			out = append(out, cp.p.ID()+": "+e.String()+" uses the host network")
			continue
		}
		if m := cp.sel.mismatch(e.Pod.Labels); m != "" {
			out = append(out, fmt.Sprintf("%s: podSelector %s", cp.p.ID(), m))
		}
	}
	return out
}

// ignoredRules returns the directions whose rules a policy has but its
// policyTypes leave out, so the rules never apply.
func ignoredRules(p *Policy) []Direction {
	var out []Direction
	if !p.Ingress && len(p.Spec.Ingress) > 0 {
		out = append(out, Ingress)
	}
	if !p.Egress && len(p.Spec.Egress) > 0 {
		out = append(out, Egress)
	}
	return out
}

// Explain renders the verdict in plain words, side by side.
func (v *Verdict) Explain(a *Analyzer) string {
	var b strings.Builder
	word := "DENIED"
	if v.Allowed {
		word = "ALLOWED"
	}
	fmt.Fprintf(&b, "%s → %s on %s %d: %s\n", describeEndpoint(v.From), describeEndpoint(v.To), v.Protocol, v.Port, word)
	side := func(title string, s Side, self Endpoint) {
		fmt.Fprintf(&b, "\n%s: %s\n", title, map[bool]string{true: "allowed", false: "denied"}[s.Allowed])
		if s.Exempt != "" || !s.Isolated {
			fmt.Fprintf(&b, "  %s\n", strings.TrimPrefix(strings.TrimPrefix(s.Reason, "egress: "), "ingress: "))
		} else {
			fmt.Fprintf(&b, "  %s is isolated by %d %s: %s\n", self, len(s.Policies), plural(len(s.Policies), "policy", "policies"), strings.Join(s.Policies, ", "))
			for _, pe := range s.Evaluated {
				if len(pe.Rules) == 0 {
					fmt.Fprintf(&b, "  ✗ %s: has no %s rules, so it allows nothing\n", pe.Policy, strings.ToLower(strings.SplitN(title, " ", 2)[0]))
					continue
				}
				for _, r := range pe.Rules {
					mark := "✗"
					if r.Matched {
						mark = "✓"
					}
					fmt.Fprintf(&b, "  %s %s rule %d: %s; %s\n", mark, pe.Policy, r.Index, r.Peer, r.Ports)
				}
			}
		}
		if a != nil && self.Pod != nil && s.Exempt == "" {
			ns := a.NotSelecting(self)
			for i, n := range ns {
				if i == 10 {
					fmt.Fprintf(&b, "  · and %d more policies of namespace %s do not select %s\n", len(ns)-10, self.Pod.Namespace, self)
					break
				}
				fmt.Fprintf(&b, "  · not selecting %s: %s\n", self, n)
			}
			for _, cp := range a.policies {
				if cp.ns == a.podNS[self.idx] && !self.Pod.HostNetwork && cp.sel.matches(self.Pod.Labels) {
					for _, d := range ignoredRules(cp.p) {
						if (d == Egress) == strings.HasPrefix(title, "Egress") {
							fmt.Fprintf(&b, "  ! %s has %s rules but its policyTypes leave %s out, so they are ignored\n", cp.p.ID(), d, titleDir(d))
						}
					}
				}
			}
		}
	}
	side("Egress from "+v.From.String(), v.Egress, v.From)
	side("Ingress to "+v.To.String(), v.Ingress, v.To)
	return b.String()
}

func describeEndpoint(e Endpoint) string {
	if e.Pod == nil {
		return e.IP.String() + " (outside the cluster)"
	}
	s := fmt.Sprintf("%s (%s, %s", e.Pod.ID(), e.Pod.Kind, labelString(e.Pod.Labels))
	if e.Pod.HostNetwork {
		s += ", hostNetwork"
	}
	return s + ")"
}
