package netpol

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// oracle decides a connection straight from the API types, the way the
// Kubernetes documentation words it, with apimachinery's label selectors
// and net's CIDRs: nothing of the Analyzer's compilation, indexes or
// bitsets. TestAgainstOracle holds the Analyzer to it.
type oracle struct{ c *Cluster }

func (o oracle) ns(name string) *Namespace { return o.c.Namespace(name) }

func sel(s *metav1.LabelSelector) labels.Selector {
	out, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		panic(err) // validated by Load
	}
	return out
}

func (o oracle) types(p *Policy) (bool, bool) {
	if len(p.Spec.PolicyTypes) == 0 {
		return true, len(p.Spec.Egress) > 0
	}
	var in, eg bool
	for _, t := range p.Spec.PolicyTypes {
		in = in || t == networkingv1.PolicyTypeIngress
		eg = eg || t == networkingv1.PolicyTypeEgress
	}
	return in, eg
}

func (o oracle) peerMatches(policyNS string, peer networkingv1.NetworkPolicyPeer, x *Pod) bool {
	if peer.IPBlock != nil {
		_, cidr, _ := net.ParseCIDR(peer.IPBlock.CIDR)
		for _, ip := range x.IPs {
			nip := net.IP(ip.AsSlice())
			if !cidr.Contains(nip) {
				continue
			}
			excepted := false
			for _, e := range peer.IPBlock.Except {
				_, ex, _ := net.ParseCIDR(e)
				excepted = excepted || ex.Contains(nip)
			}
			if !excepted {
				return true
			}
		}
		return false
	}
	if x.HostNetwork {
		return false
	}
	nsOK := x.Namespace == policyNS
	if peer.NamespaceSelector != nil {
		nsOK = sel(peer.NamespaceSelector).Matches(labels.Set(o.ns(x.Namespace).Labels))
	}
	podOK := peer.PodSelector == nil || sel(peer.PodSelector).Matches(labels.Set(x.Labels))
	return nsOK && podOK
}

func (o oracle) portMatches(ports []networkingv1.NetworkPolicyPort, dst *Pod, proto Protocol, port int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		pp := "TCP"
		if p.Protocol != nil {
			pp = string(*p.Protocol)
		}
		if pp != proto.String() {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.Int:
			hi := p.Port.IntVal
			if p.EndPort != nil {
				hi = *p.EndPort
			}
			if port >= p.Port.IntVal && port <= hi {
				return true
			}
		default:
			if dst.HostNetwork {
				continue
			}
			for _, cp := range dst.Ports {
				if cp.Name == p.Port.StrVal && cp.Protocol == proto && cp.Port == port {
					return true
				}
			}
		}
	}
	return false
}

func sameNode(a, b *Pod) bool {
	return a.HostNetwork && a.NodeName != "" && a.NodeName == b.NodeName
}

func (o oracle) allowed(src, dst *Pod, proto Protocol, port int32) bool {
	if src == dst {
		return true
	}
	egress := func() bool {
		if src.HostNetwork || sameNode(dst, src) {
			return true
		}
		isolated, ok := false, false
		for _, p := range o.c.Policies {
			if _, eg := o.types(p); !eg || p.Namespace != src.Namespace || !sel(&p.Spec.PodSelector).Matches(labels.Set(src.Labels)) {
				continue
			}
			isolated = true
			for _, r := range p.Spec.Egress {
				peerOK := len(r.To) == 0
				for _, peer := range r.To {
					peerOK = peerOK || o.peerMatches(p.Namespace, peer, dst)
				}
				ok = ok || peerOK && o.portMatches(r.Ports, dst, proto, port)
			}
		}
		return !isolated || ok
	}
	ingress := func() bool {
		if dst.HostNetwork || sameNode(src, dst) {
			return true
		}
		isolated, ok := false, false
		for _, p := range o.c.Policies {
			if in, _ := o.types(p); !in || p.Namespace != dst.Namespace || !sel(&p.Spec.PodSelector).Matches(labels.Set(dst.Labels)) {
				continue
			}
			isolated = true
			for _, r := range p.Spec.Ingress {
				peerOK := len(r.From) == 0
				for _, peer := range r.From {
					peerOK = peerOK || o.peerMatches(p.Namespace, peer, src)
				}
				ok = ok || peerOK && o.portMatches(r.Ports, dst, proto, port)
			}
		}
		return !isolated || ok
	}
	return egress() && ingress()
}

// randomCluster writes a small random cluster: namespaces with labels,
// pods (some hostNetwork, some workloads without IPs) with named ports,
// and policies mixing every selector, peer and port form.
func randomCluster(r *rand.Rand) string {
	var b strings.Builder
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	nsNames := []string{"alpha", "beta", "gamma"}[:1+r.IntN(3)]
	for i, ns := range nsNames {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels: {team: %s, env: %s, idx: %q}\n", ns, pick("a", "b"), pick("prod", "dev"), fmt.Sprint(i))
	}
	labelSet := func() string {
		var parts []string
		if r.IntN(4) > 0 {
			parts = append(parts, "app: "+pick("a", "b", "c"))
		}
		if r.IntN(2) == 0 {
			parts = append(parts, "tier: "+pick("front", "back"))
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	nPods := 2 + r.IntN(7)
	for i := 0; i < nPods; i++ {
		ns := pick(nsNames...)
		node := r.IntN(3)
		hostNet := r.IntN(6) == 0
		kind := "Pod"
		if r.IntN(5) == 0 {
			kind = "Deployment"
		}
		var ports []string
		for _, k := range r.Perm(4)[:r.IntN(4)] {
			ports = append(ports, []string{"{name: http, containerPort: 80}", "{name: alt, containerPort: 81}", "{name: dns, containerPort: 53, protocol: UDP}", "{name: web, containerPort: 8080}"}[k])
		}
		spec := fmt.Sprintf("{hostNetwork: %v, nodeName: n%d, containers: [{name: c, image: c, ports: [%s]}]}", hostNet, node, strings.Join(ports, ", "))
		if kind == "Pod" {
			ip := fmt.Sprintf("10.0.%d.%d", i/200, i+1)
			if hostNet {
				ip = fmt.Sprintf("192.168.0.%d", node+1)
			}
			fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: %s, labels: %s}\nspec: %s\nstatus: {podIP: %s, hostIP: 192.168.0.%d}\n",
				i, ns, labelSet(), spec, ip, node+1)
		} else {
			fmt.Fprintf(&b, "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: p%d, namespace: %s}\nspec:\n  selector: {}\n  template:\n    metadata: {labels: %s}\n    spec: %s\n",
				i, ns, labelSet(), spec)
		}
	}
	selector := func() string {
		switch r.IntN(5) {
		case 0:
			return "{}"
		case 1:
			return "{matchLabels: {app: " + pick("a", "b", "c") + "}}"
		case 2:
			return "{matchExpressions: [{key: tier, operator: " + pick("In", "NotIn") + ", values: [" + pick("front", "back", "front, back") + "]}]}"
		case 3:
			return "{matchExpressions: [{key: " + pick("app", "tier") + ", operator: " + pick("Exists", "DoesNotExist") + "}]}"
		default:
			return "{matchLabels: {app: " + pick("a", "b") + "}, matchExpressions: [{key: tier, operator: NotIn, values: [back]}]}"
		}
	}
	nsSelector := func() string {
		switch r.IntN(4) {
		case 0:
			return "{}"
		case 1:
			return "{matchLabels: {team: " + pick("a", "b") + "}}"
		case 2:
			return "{matchLabels: {kubernetes.io/metadata.name: " + pick(nsNames...) + "}}"
		default:
			return "{matchExpressions: [{key: env, operator: " + pick("In", "NotIn") + ", values: [prod]}]}"
		}
	}
	peer := func() string {
		switch r.IntN(4) {
		case 0:
			return "{podSelector: " + selector() + "}"
		case 1:
			return "{namespaceSelector: " + nsSelector() + "}"
		case 2:
			return "{namespaceSelector: " + nsSelector() + ", podSelector: " + selector() + "}"
		default:
			return pick("{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/30]}}", "{ipBlock: {cidr: 10.0.0.4/30}}", "{ipBlock: {cidr: 192.168.0.0/24}}", "{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}")
		}
	}
	port := func() string {
		return pick("{port: 80}", "{port: 80, endPort: 81}", "{protocol: UDP}", "{port: http}", "{port: dns, protocol: UDP}", "{port: alt, protocol: TCP}", "{protocol: SCTP, port: 80}", "{port: 8000, endPort: 9000}")
	}
	rule := func(peerKey string) string {
		var parts []string
		switch r.IntN(3) {
		case 0: // all peers
		case 1:
			parts = append(parts, peerKey+": []")
		default:
			var ps []string
			for k := 0; k <= r.IntN(2); k++ {
				ps = append(ps, peer())
			}
			parts = append(parts, peerKey+": ["+strings.Join(ps, ", ")+"]")
		}
		if r.IntN(3) > 0 {
			var ps []string
			for k := 0; k <= r.IntN(2); k++ {
				ps = append(ps, port())
			}
			parts = append(parts, "ports: ["+strings.Join(ps, ", ")+"]")
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	rules := func(key, peerKey string) string {
		switch r.IntN(4) {
		case 0:
			return ""
		case 1:
			return "  " + key + ": []\n"
		}
		var rs []string
		for k := 0; k <= r.IntN(2); k++ {
			rs = append(rs, rule(peerKey))
		}
		return "  " + key + ": [" + strings.Join(rs, ", ") + "]\n"
	}
	for i := 0; i < r.IntN(6); i++ {
		types := pick("", "  policyTypes: [Ingress]\n", "  policyTypes: [Egress]\n", "  policyTypes: [Ingress, Egress]\n")
		fmt.Fprintf(&b, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np%d, namespace: %s}\nspec:\n  podSelector: %s\n%s%s%s",
			i, pick(nsNames...), selector(), types, rules("ingress", "from"), rules("egress", "to"))
	}
	return b.String()
}

// TestAgainstOracle: on random clusters, Check, the per-port matrix and
// the every-port matrix all agree with the oracle on every pod pair.
func TestAgainstOracle(t *testing.T) {
	n := 400
	if testing.Short() {
		n = 50
	}
	probes := []struct {
		proto Protocol
		port  int32
	}{{TCP, 80}, {TCP, 81}, {UDP, 53}, {UDP, 80}, {SCTP, 80}, {TCP, 8080}, {TCP, 8500}, {TCP, 9999}}
	for seed := 0; seed < n; seed++ {
		r := rand.New(rand.NewPCG(uint64(seed), 11))
		yml := randomCluster(r)
		c := Parse(LoadOptions{}, "random.yaml", []byte(yml))
		if err := c.Err(); err != nil {
			t.Fatalf("seed %d: %v\n%s", seed, err, yml)
		}
		a := NewAnalyzer(c)
		o := oracle{c}
		all := a.Matrix(MatrixOptions{})
		for _, pr := range probes {
			m := a.Matrix(MatrixOptions{Port: pr.port, Protocol: pr.proto})
			for i, src := range c.Pods {
				for j, dst := range c.Pods {
					want := o.allowed(src, dst, pr.proto, pr.port)
					v := a.Check(a.PodEndpoint(i), a.PodEndpoint(j), pr.proto, pr.port)
					if v.Allowed != want || m.Allowed(i, j) != want || all.Ports(i, j).Contains(pr.proto, pr.port) != want {
						t.Fatalf("seed %d: %s → %s %s %d: oracle %v, Check %v (%s), matrix %v, every-port matrix %s\n%s",
							seed, src.ID(), dst.ID(), pr.proto, pr.port, want, v.Allowed, v.Reason, m.Allowed(i, j), all.Ports(i, j), yml)
					}
				}
			}
		}
	}
}
