package netpol

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Analyzer is a compiled, indexed Cluster. It is immutable once built
// except for caches, and not safe for concurrent use.
type Analyzer struct {
	c          *Cluster
	pods       []*Pod
	podNS      []int32 // namespace index of each pod
	podProfile []int32 // port-profile index of each pod (equal container ports share one)
	profiles   [][]ContainerPort
	nsIndex    map[string]int32
	nsPods     [][]int32 // pods of each namespace
	policies   []*cpolicy
	byNS       []nsPolicies
	podIngress [][]*cpolicy // policies isolating each pod for ingress
	podEgress  [][]*cpolicy // … for egress
	peers      map[string]*cpeer
	rules      []*crule
	ports      *portSets
	byIP       map[netip.Addr]int32
	byName     map[string][]int32 // "ns/name" → pods (a Pod and a workload may share it)
}

// nsPolicies indexes a namespace's policies by a label every selected pod
// must carry; policies without one (empty selectors, expressions only)
// are checked for every pod.
type nsPolicies struct {
	byLabel   map[string][]*cpolicy
	unindexed []*cpolicy
}

type cpolicy struct {
	p       *Policy
	ns      int32
	sel     *selector
	ingress []*crule // spec.ingress, compiled even when Ingress is not in effect (for lint)
	egress  []*crule
}

// Direction of a rule or a side of a connection.
type Direction uint8

// Directions.
const (
	Ingress Direction = iota
	Egress
)

func (d Direction) String() string {
	if d == Ingress {
		return "ingress"
	}
	return "egress"
}

type crule struct {
	id       int
	policy   *cpolicy
	dir      Direction
	index    int
	allPeers bool // no from/to: every source or destination
	peers    []*cpeer
	allPorts bool // no ports: every port of every protocol
	numeric  psID // the numeric and protocol-wide ports
	named    []namedPort
	resolved []psID // per port profile, +1 (0: not computed); named rules only
}

type namedPort struct {
	proto Protocol
	name  string
}

type peerKind uint8

const (
	peerPods       peerKind = iota // podSelector: pods in the policy's namespace
	peerNamespaces                 // namespaceSelector: all pods of those namespaces
	peerBoth                       // both: those pods in those namespaces
	peerIPBlock
)

type cpeer struct {
	kind   peerKind
	ns     int32 // the policy's namespace (peerPods)
	podSel *selector
	nsSel  *selector
	block  *ipBlock
	key    string
	bits   bitset // pods matched; nil until computed
}

type ipBlock struct {
	cidr   netip.Prefix
	except []netip.Prefix
}

func (b *ipBlock) contains(ip netip.Addr) bool {
	if !b.cidr.Contains(ip) {
		return false
	}
	for _, e := range b.except {
		if e.Contains(ip) {
			return false
		}
	}
	return true
}

func (b *ipBlock) String() string {
	s := "ipBlock " + b.cidr.String()
	if len(b.except) > 0 {
		ex := make([]string, len(b.except))
		for i, e := range b.except {
			ex[i] = e.String()
		}
		s += " except " + strings.Join(ex, ",")
	}
	return s
}

// NewAnalyzer compiles c. Policies must be valid (Load refuses the rest).
func NewAnalyzer(c *Cluster) *Analyzer {
	a := &Analyzer{c: c, nsIndex: map[string]int32{}, peers: map[string]*cpeer{}, ports: newPortSets(),
		byIP: map[netip.Addr]int32{}, byName: map[string][]int32{}}
	for i, ns := range c.Namespaces {
		a.nsIndex[ns.Name] = int32(i)
	}
	a.nsPods = make([][]int32, len(c.Namespaces))
	a.byNS = make([]nsPolicies, len(c.Namespaces))
	profileIDs := map[string]int32{}
	a.pods = c.Pods
	a.podNS = make([]int32, len(c.Pods))
	a.podProfile = make([]int32, len(c.Pods))
	for i, p := range c.Pods {
		ns := a.nsIndex[p.Namespace]
		a.podNS[i] = ns
		a.nsPods[ns] = append(a.nsPods[ns], int32(i))
		key := profileKey(p.Ports)
		id, ok := profileIDs[key]
		if !ok {
			id = int32(len(a.profiles))
			profileIDs[key] = id
			a.profiles = append(a.profiles, p.Ports)
		}
		a.podProfile[i] = id
		for _, ip := range p.IPs {
			if !p.HostNetwork {
				a.byIP[ip] = int32(i)
			}
		}
		a.byName[p.ID()] = append(a.byName[p.ID()], int32(i))
	}
	for _, p := range c.Policies {
		cp := a.compilePolicy(p)
		a.policies = append(a.policies, cp)
		x := &a.byNS[cp.ns]
		if k, ok := cp.sel.indexKey(); ok {
			if x.byLabel == nil {
				x.byLabel = map[string][]*cpolicy{}
			}
			x.byLabel[k] = append(x.byLabel[k], cp)
		} else {
			x.unindexed = append(x.unindexed, cp)
		}
	}
	a.podIngress = make([][]*cpolicy, len(c.Pods))
	a.podEgress = make([][]*cpolicy, len(c.Pods))
	var buf []*cpolicy
	for i, p := range c.Pods {
		if p.HostNetwork {
			continue // not selected: see doc.go
		}
		buf = a.selecting(buf[:0], int32(i))
		for _, cp := range buf {
			if cp.p.Ingress {
				a.podIngress[i] = append(a.podIngress[i], cp)
			}
			if cp.p.Egress {
				a.podEgress[i] = append(a.podEgress[i], cp)
			}
		}
	}
	return a
}

func profileKey(ps []ContainerPort) string {
	var b strings.Builder
	for _, p := range ps {
		if p.Name == "" {
			continue // only named ports matter for resolution
		}
		fmt.Fprintf(&b, "%s/%d/%d;", p.Name, p.Protocol, p.Port)
	}
	return b.String()
}

// selecting appends the policies whose podSelector selects pod i, in
// policy order, looking only at the candidates the label index yields.
func (a *Analyzer) selecting(dst []*cpolicy, i int32) []*cpolicy {
	x := &a.byNS[a.podNS[i]]
	labels := a.pods[i].Labels
	start := len(dst)
	for _, cp := range x.unindexed {
		if cp.sel.matches(labels) {
			dst = append(dst, cp)
		}
	}
	if len(x.byLabel) > 0 {
		for k, v := range labels {
			for _, cp := range x.byLabel[k+"="+v] {
				if cp.sel.matches(labels) {
					dst = append(dst, cp)
				}
			}
		}
	}
	out := dst[start:]
	sort.Slice(out, func(i, j int) bool { return out[i].p.ID() < out[j].p.ID() })
	return dst
}

func (a *Analyzer) compilePolicy(p *Policy) *cpolicy {
	cp := &cpolicy{p: p, ns: a.nsIndex[p.Namespace], sel: compileSelector(&p.Spec.PodSelector)}
	for i, r := range p.Spec.Ingress {
		cp.ingress = append(cp.ingress, a.compileRule(cp, Ingress, i, r.From, r.Ports))
	}
	for i, r := range p.Spec.Egress {
		cp.egress = append(cp.egress, a.compileRule(cp, Egress, i, r.To, r.Ports))
	}
	return cp
}

func (a *Analyzer) compileRule(cp *cpolicy, dir Direction, index int, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) *crule {
	r := &crule{id: len(a.rules), policy: cp, dir: dir, index: index, allPeers: len(peers) == 0, allPorts: len(ports) == 0}
	a.rules = append(a.rules, r)
	for i := range peers {
		r.peers = append(r.peers, a.compilePeer(cp, &peers[i]))
	}
	if r.allPorts {
		r.numeric = allPorts
		return r
	}
	var set PortSet
	for _, p := range ports {
		proto, _ := protocolOf(p.Protocol)
		switch {
		case p.Port == nil:
			set.addAll(proto)
		case p.Port.Type == intstr.String:
			r.named = append(r.named, namedPort{proto, p.Port.StrVal})
		default:
			hi := p.Port.IntVal
			if p.EndPort != nil {
				hi = *p.EndPort
			}
			set.add(proto, uint16(p.Port.IntVal), uint16(hi))
		}
	}
	set.norm()
	r.numeric = a.ports.intern(set)
	if len(r.named) > 0 {
		r.resolved = make([]psID, len(a.profiles))
	}
	return r
}

func (a *Analyzer) compilePeer(cp *cpolicy, p *networkingv1.NetworkPolicyPeer) *cpeer {
	c := &cpeer{ns: cp.ns}
	switch {
	case p.IPBlock != nil:
		c.kind = peerIPBlock
		b := &ipBlock{}
		b.cidr, _ = parseCIDR(p.IPBlock.CIDR)
		for _, e := range p.IPBlock.Except {
			x, _ := parseCIDR(e)
			b.except = append(b.except, x)
		}
		c.block = b
		c.key = "ip:" + b.String()
	case p.NamespaceSelector != nil && p.PodSelector != nil:
		c.kind = peerBoth
		c.nsSel, c.podSel = compileSelector(p.NamespaceSelector), compileSelector(p.PodSelector)
		c.key = "both:" + c.nsSel.key + "|" + c.podSel.key
	case p.NamespaceSelector != nil:
		c.kind = peerNamespaces
		c.nsSel = compileSelector(p.NamespaceSelector)
		c.key = "ns:" + c.nsSel.key
	default:
		c.kind = peerPods
		c.podSel = compileSelector(p.PodSelector)
		c.key = fmt.Sprintf("pods:%d|%s", cp.ns, c.podSel.key)
	}
	if shared, ok := a.peers[c.key]; ok {
		return shared
	}
	a.peers[c.key] = c
	return c
}

// String describes the peer in words.
func (c *cpeer) describe(a *Analyzer) string {
	switch c.kind {
	case peerIPBlock:
		return c.block.String()
	case peerNamespaces:
		if c.nsSel.matchesAll() {
			return "all pods in all namespaces"
		}
		return "all pods in namespaces " + c.nsSel.String()
	case peerBoth:
		ns := "namespaces " + c.nsSel.String()
		if c.nsSel.matchesAll() {
			ns = "all namespaces"
		}
		if c.podSel.matchesAll() {
			return "all pods in " + ns
		}
		return "pods " + c.podSel.String() + " in " + ns
	default:
		ns := a.c.Namespaces[c.ns].Name
		if c.podSel.matchesAll() {
			return "all pods in namespace " + ns
		}
		return "pods " + c.podSel.String() + " in namespace " + ns
	}
}

// matchesPod reports whether the peer selects pod i.
func (a *Analyzer) peerMatchesPod(c *cpeer, i int32) bool {
	p := a.pods[i]
	if c.kind == peerIPBlock {
		for _, ip := range p.IPs {
			if c.block.contains(ip) {
				return true
			}
		}
		return false
	}
	if p.HostNetwork {
		return false // selectors do not see hostNetwork pods: their traffic is the node's
	}
	switch c.kind {
	case peerPods:
		return a.podNS[i] == c.ns && c.podSel.matches(p.Labels)
	case peerNamespaces:
		return c.nsSel.matches(a.c.Namespaces[a.podNS[i]].Labels)
	default:
		return c.nsSel.matches(a.c.Namespaces[a.podNS[i]].Labels) && c.podSel.matches(p.Labels)
	}
}

// peerBits returns the set of pods the peer selects, computing it once.
func (a *Analyzer) peerBits(c *cpeer) bitset {
	if c.bits != nil {
		return c.bits
	}
	b := newBitset(len(a.pods))
	switch c.kind {
	case peerPods:
		for _, i := range a.nsPods[c.ns] {
			if a.peerMatchesPod(c, i) {
				b.set(int(i))
			}
		}
	case peerNamespaces, peerBoth:
		for ns, n := range a.c.Namespaces {
			if !c.nsSel.matches(n.Labels) {
				continue
			}
			for _, i := range a.nsPods[ns] {
				if a.peerMatchesPod(c, i) {
					b.set(int(i))
				}
			}
		}
	default:
		for i := range a.pods {
			if a.peerMatchesPod(c, int32(i)) {
				b.set(i)
			}
		}
	}
	c.bits = b
	return b
}

// rulePorts returns the ports rule r allows toward pod dst (named ports
// resolve on the destination pod; -1 for a destination outside the
// cluster, where named ports resolve to nothing).
func (a *Analyzer) rulePorts(r *crule, dst int32) psID {
	if len(r.named) == 0 {
		return r.numeric
	}
	if dst < 0 || a.pods[dst].HostNetwork {
		return r.numeric // a hostNetwork destination is its node, which has no named ports
	}
	prof := a.podProfile[dst]
	if id := r.resolved[prof]; id != 0 {
		return id - 1
	}
	set := a.ports.get(r.numeric)
	var add PortSet
	for _, n := range r.named {
		for _, cp := range a.profiles[prof] {
			if cp.Name == n.name && cp.Protocol == n.proto {
				add.add(n.proto, uint16(cp.Port), uint16(cp.Port))
			}
		}
	}
	add.norm()
	id := a.ports.intern(set.Union(add))
	r.resolved[prof] = id + 1
	return id
}

// Cluster returns the cluster the analyzer was built from.
func (a *Analyzer) Cluster() *Cluster { return a.c }

// Endpoint is one end of a connection: a pod (or workload), or an IP
// address outside the cluster.
type Endpoint struct {
	Pod *Pod
	IP  netip.Addr
	idx int32 // pod index, -1 for an IP
}

// String is "ns/name" for a pod, the address for an IP.
func (e Endpoint) String() string {
	if e.Pod != nil {
		return e.Pod.ID()
	}
	return e.IP.String()
}

// PodEndpoint returns the endpoint for the i-th pod of the cluster.
func (a *Analyzer) PodEndpoint(i int) Endpoint { return Endpoint{Pod: a.pods[i], idx: int32(i)} }

// IPEndpoint returns the endpoint for an address: the pod that has it, if
// any, else an address outside the cluster.
func (a *Analyzer) IPEndpoint(ip netip.Addr) Endpoint {
	ip = ip.Unmap()
	if i, ok := a.byIP[ip]; ok {
		return Endpoint{Pod: a.pods[i], idx: i}
	}
	return Endpoint{IP: ip, idx: -1}
}

// Resolve reads an endpoint reference: an IP address, "ns/name" (a Pod or
// workload), "ns/kind/name" to choose between a Pod and a workload of one
// name, or "name" in the default namespace.
func (a *Analyzer) Resolve(ref string) (Endpoint, error) {
	if ip, err := netip.ParseAddr(ref); err == nil {
		return a.IPEndpoint(ip), nil
	}
	parts := strings.Split(ref, "/")
	var ns, kind, name string
	switch len(parts) {
	case 1:
		ns, name = DefaultNamespace, parts[0]
	case 2:
		ns, name = parts[0], parts[1]
	case 3:
		ns, kind, name = parts[0], parts[1], parts[2]
	default:
		return Endpoint{}, fmt.Errorf("%q: want NS/NAME, NS/KIND/NAME or an IP address", ref)
	}
	if ns == "" || name == "" {
		return Endpoint{}, fmt.Errorf("%q: want NS/NAME, NS/KIND/NAME or an IP address", ref)
	}
	var found []int32
	for _, i := range a.byName[ns+"/"+name] {
		if kind == "" || strings.EqualFold(a.pods[i].Kind, kind) {
			found = append(found, i)
		}
	}
	switch len(found) {
	case 1:
		return Endpoint{Pod: a.pods[found[0]], idx: found[0]}, nil
	case 0:
		return Endpoint{}, fmt.Errorf("%s: no pod or workload of that name in the input%s", ref, a.suggest(ns, name))
	}
	cands := make([]string, len(found))
	for i, j := range found {
		p := a.pods[j]
		cands[i] = fmt.Sprintf("%s/%s/%s", p.Namespace, strings.ToLower(p.Kind), p.Name)
	}
	return Endpoint{}, fmt.Errorf("%s is ambiguous: it names %s; name one as NS/KIND/NAME", ref, strings.Join(cands, ", "))
}

func (a *Analyzer) suggest(ns, name string) string {
	if i, ok := a.nsIndex[ns]; ok {
		var names []string
		for _, j := range a.nsPods[i] {
			names = append(names, a.pods[j].Name)
			if len(names) == 5 {
				names = append(names, "…")
				break
			}
		}
		if len(names) > 0 {
			return " (namespace " + ns + " has " + strings.Join(names, ", ") + ")"
		}
	}
	return " (no pods in namespace " + ns + ")"
}

// bitset is a fixed-size set of small integers.
type bitset []uint64

func newBitset(n int) bitset { return make(bitset, (n+63)/64) }

func (b bitset) set(i int)      { b[i>>6] |= 1 << (uint(i) & 63) }
func (b bitset) has(i int) bool { return b[i>>6]&(1<<(uint(i)&63)) != 0 }

func (b bitset) or(o bitset) {
	for i := range b {
		b[i] |= o[i]
	}
}

func (b bitset) orAnd(x, y bitset) {
	for i := range b {
		b[i] |= x[i] & y[i]
	}
}
