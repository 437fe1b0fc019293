package netpol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	yamlv3 "gopkg.in/yaml.v3"
)

// Labels and annotations on generated objects.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "trustmesh"
	EdgeAnnotation = "trustmesh.io/edges"
)

// GenerateOptions tune Generate.
type GenerateOptions struct {
	// TrustDomain of principals in AuthorizationPolicies; default the
	// graph's, else cluster.local (which Istio and Trustmesh read as the
	// local trust domain).
	TrustDomain string
	// NoIstio leaves the AuthorizationPolicies out.
	NoIstio bool
}

// Generated is what Generate makes: NetworkPolicies (per namespace a
// default deny, DNS egress, then for every edge an ingress policy on the
// callee and an egress policy on the caller), and the matching Istio
// AuthorizationPolicies (per namespace allow-nothing, per callee the
// callers' principals on the edge's TCP ports).
type Generated struct {
	NetworkPolicies       []*networkingv1.NetworkPolicy
	AuthorizationPolicies []*AuthorizationPolicy
}

// AuthorizationPolicy is the security.istio.io/v1 schema, as much of it
// as generated policies use.
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              AuthorizationPolicySpec `json:"spec"`
}

// AuthorizationPolicySpec is an AuthorizationPolicy's spec.
type AuthorizationPolicySpec struct {
	Selector *WorkloadSelector `json:"selector,omitempty"`
	Action   string            `json:"action,omitempty"`
	Rules    []AuthzRule       `json:"rules,omitempty"`
}

// WorkloadSelector selects workloads by labels.
type WorkloadSelector struct {
	MatchLabels map[string]string `json:"matchLabels"`
}

// AuthzRule allows requests from any source to any operation listed.
type AuthzRule struct {
	From []AuthzFrom `json:"from,omitempty"`
	To   []AuthzTo   `json:"to,omitempty"`
}

// AuthzFrom wraps a source.
type AuthzFrom struct {
	Source AuthzSource `json:"source"`
}

// AuthzSource is who may call.
type AuthzSource struct {
	Principals []string `json:"principals,omitempty"`
	IPBlocks   []string `json:"ipBlocks,omitempty"`
}

// AuthzTo wraps an operation.
type AuthzTo struct {
	Operation AuthzOperation `json:"operation"`
}

// AuthzOperation is what may be called.
type AuthzOperation struct {
	Ports []string `json:"ports,omitempty"`
}

// mergedEdge is every declared edge between two ends, ports united.
type mergedEdge struct {
	from, to string
	ports    []GraphPort
}

func mergeEdges(g *Graph) []*mergedEdge {
	byKey := map[[2]string]*mergedEdge{}
	var out []*mergedEdge
	for _, e := range g.Edges {
		k := [2]string{e.From, e.To}
		m := byKey[k]
		if m == nil {
			m = &mergedEdge{from: e.From, to: e.To}
			byKey[k] = m
			out = append(out, m)
		}
		m.ports = append(m.ports, e.Ports...)
	}
	for _, m := range out {
		sort.Slice(m.ports, func(i, j int) bool {
			if m.ports[i].Protocol != m.ports[j].Protocol {
				return m.ports[i].Protocol < m.ports[j].Protocol
			}
			return m.ports[i].Port < m.ports[j].Port
		})
		uniq := m.ports[:0]
		for i, p := range m.ports {
			if i == 0 || p != m.ports[i-1] {
				uniq = append(uniq, p)
			}
		}
		m.ports = uniq
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].from != out[j].from {
			return out[i].from < out[j].from
		}
		return out[i].to < out[j].to
	})
	return out
}

func (m *mergedEdge) String() string {
	ps := make([]string, len(m.ports))
	for i, p := range m.ports {
		ps[i] = p.String()
	}
	return fmt.Sprintf("%s -> %s : %s", m.from, m.to, strings.Join(ps, ","))
}

// Generate makes least-privilege policies for exactly the graph's edges.
func Generate(g *Graph, opts GenerateOptions) (*Generated, error) {
	if err := g.Check(); err != nil {
		return nil, err
	}
	td := opts.TrustDomain
	if td == "" {
		td = g.TrustDomain
	}
	if td == "" {
		td = "cluster.local"
	}
	out := &Generated{}
	namespaces := map[string]bool{}
	for _, s := range g.Services {
		namespaces[s.Namespace] = true
	}
	nsList := make([]string, 0, len(namespaces))
	for ns := range namespaces {
		nsList = append(nsList, ns)
	}
	sort.Strings(nsList)
	meta := func(ns, name string, edges ...*mergedEdge) metav1.ObjectMeta {
		m := metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{ManagedByLabel: ManagedByValue}}
		if len(edges) > 0 {
			var es []string
			for _, e := range edges {
				es = append(es, e.String())
			}
			m.Annotations = map[string]string{EdgeAnnotation: strings.Join(es, "; ")}
		}
		return m
	}
	npType := metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"}
	udp, tcp := corev1.ProtocolUDP, corev1.ProtocolTCP
	dnsPort := intstr.FromInt32(53)
	byNS := map[string][]*networkingv1.NetworkPolicy{}
	for _, ns := range nsList {
		byNS[ns] = append(byNS[ns],
			&networkingv1.NetworkPolicy{TypeMeta: npType, ObjectMeta: meta(ns, "default-deny"), Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			}},
			&networkingv1.NetworkPolicy{TypeMeta: npType, ObjectMeta: meta(ns, "allow-dns"), Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				Egress: []networkingv1.NetworkPolicyEgressRule{{
					To: []networkingv1.NetworkPolicyPeer{{
						NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{NamespaceNameLabel: g.DNS.Namespace}},
						PodSelector:       &metav1.LabelSelector{MatchLabels: copyLabels(g.DNS.Labels)},
					}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &dnsPort}, {Protocol: &tcp, Port: &dnsPort}},
				}},
			}})
	}
	edges := mergeEdges(g)
	names := map[string]string{}
	add := func(p *networkingv1.NetworkPolicy, e *mergedEdge) error {
		k := p.Namespace + "/" + p.Name
		if prev, ok := names[k]; ok {
			return fmt.Errorf("edges %s and %s both make NetworkPolicy %s: rename a service", prev, e, k)
		}
		for _, msg := range validation.IsDNS1123Subdomain(p.Name) {
			return fmt.Errorf("edge %s: policy name %q: %s", e, p.Name, msg)
		}
		names[k] = e.String()
		byNS[p.Namespace] = append(byNS[p.Namespace], p)
		return nil
	}
	for _, e := range edges {
		caller, callee := g.service(e.from), g.service(e.to)
		ports := npPorts(e.ports)
		if callee != nil {
			p := &networkingv1.NetworkPolicy{TypeMeta: npType, ObjectMeta: meta(callee.Namespace, callee.Name+"-from-"+endName(e.from), e),
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: copyLabels(callee.Labels)},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
					Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{peerFor(g, e.from, callee.Namespace)}, Ports: ports}},
				}}
			if err := add(p, e); err != nil {
				return nil, err
			}
		}
		if caller != nil {
			p := &networkingv1.NetworkPolicy{TypeMeta: npType, ObjectMeta: meta(caller.Namespace, caller.Name+"-to-"+endName(e.to), e),
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: copyLabels(caller.Labels)},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
					Egress:      []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{peerFor(g, e.to, caller.Namespace)}, Ports: npPorts(e.ports)}},
				}}
			if err := add(p, e); err != nil {
				return nil, err
			}
		}
	}
	for _, ns := range nsList {
		out.NetworkPolicies = append(out.NetworkPolicies, byNS[ns]...)
	}
	if opts.NoIstio {
		return out, nil
	}
	if err := checkAccounts(g, edges); err != nil {
		return nil, err
	}
	apType := metav1.TypeMeta{APIVersion: "security.istio.io/v1", Kind: "AuthorizationPolicy"}
	for _, ns := range nsList {
		out.AuthorizationPolicies = append(out.AuthorizationPolicies, &AuthorizationPolicy{TypeMeta: apType, ObjectMeta: meta(ns, "allow-nothing")})
	}
	for _, s := range g.Services {
		var rules []AuthzRule
		var in []*mergedEdge
		for _, e := range edges {
			if e.to != s.Name {
				continue
			}
			var ports []string
			for _, p := range e.ports {
				if p.Protocol == TCP { // the mesh carries TCP only
					ports = append(ports, strconv.Itoa(int(p.Port)))
				}
			}
			if len(ports) == 0 {
				continue
			}
			var src AuthzSource
			if caller := g.service(e.from); caller != nil {
				src.Principals = []string{fmt.Sprintf("%s/ns/%s/sa/%s", td, caller.Namespace, caller.ServiceAccount)}
			} else {
				cidr, _ := parseEnd(e.from)
				src.IPBlocks = []string{cidr.String()}
			}
			rules = append(rules, AuthzRule{From: []AuthzFrom{{Source: src}}, To: []AuthzTo{{Operation: AuthzOperation{Ports: ports}}}})
			in = append(in, e)
		}
		if len(rules) == 0 {
			continue
		}
		out.AuthorizationPolicies = append(out.AuthorizationPolicies, &AuthorizationPolicy{TypeMeta: apType, ObjectMeta: meta(s.Namespace, s.Name+"-allow", in...),
			Spec: AuthorizationPolicySpec{Selector: &WorkloadSelector{MatchLabels: copyLabels(s.Labels)}, Action: "ALLOW", Rules: rules}})
	}
	sort.SliceStable(out.AuthorizationPolicies, func(i, j int) bool {
		return out.AuthorizationPolicies[i].Namespace < out.AuthorizationPolicies[j].Namespace
	})
	return out, nil
}

// checkAccounts refuses callers that share a service account but not
// their edges: AuthorizationPolicies name callers by account, so they
// would allow each other's calls.
func checkAccounts(g *Graph, edges []*mergedEdge) error {
	out := map[string]string{}
	for _, e := range edges {
		out[e.from] += e.String() + ";"
	}
	byAccount := map[string]*Service{}
	for _, s := range g.Services {
		k := s.Namespace + "/" + s.ServiceAccount
		if o, ok := byAccount[k]; ok && out[o.Name] != out[s.Name] {
			return fmt.Errorf("services %s and %s share service account %s but not their calls: AuthorizationPolicies identify callers by account, so each would be allowed the other's calls; give them their own accounts (or --no-istio)", o.Name, s.Name, k)
		}
		byAccount[k] = s
	}
	return nil
}

func copyLabels(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func npPorts(ps []GraphPort) []networkingv1.NetworkPolicyPort {
	out := make([]networkingv1.NetworkPolicyPort, len(ps))
	for i, p := range ps {
		proto := corev1.Protocol(p.Protocol.String())
		port := intstr.FromInt32(p.Port)
		out[i] = networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &port}
	}
	return out
}

// peerFor selects an edge end from a policy in namespace ns: a service's
// pods (with its namespace when it is another), or a CIDR.
func peerFor(g *Graph, end, ns string) networkingv1.NetworkPolicyPeer {
	if s := g.service(end); s != nil {
		p := networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: copyLabels(s.Labels)}}
		if s.Namespace != ns {
			p.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{NamespaceNameLabel: s.Namespace}}
		}
		return p
	}
	cidr, _ := parseEnd(end)
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr.String()}}
}

// endName is an edge end as it appears in a policy name.
func endName(end string) string {
	if _, err := parseEnd(end); err == nil {
		p, _ := parseEnd(end)
		return strings.NewReplacer("/", "-", ":", "-").Replace(p.String())
	}
	return end
}

// GeneratedHeader is the comment generated YAML starts with.
func GeneratedHeader(source string) string {
	return "Generated by trustmesh netpol generate from " + source + ".\n" +
		"Per namespace: default-deny and allow-dns; then one policy per side of each\n" +
		"declared edge, and the mesh's AuthorizationPolicies. Nothing else is allowed."
}

// Objects returns every generated object, NetworkPolicies first.
func (g *Generated) Objects() []any {
	var out []any
	for _, p := range g.NetworkPolicies {
		out = append(out, p)
	}
	for _, p := range g.AuthorizationPolicies {
		out = append(out, p)
	}
	return out
}

// WriteYAML writes the objects as a multi-document YAML stream.
func (g *Generated) WriteYAML(w io.Writer, header string) error {
	if header != "" {
		for _, l := range strings.Split(strings.TrimRight(header, "\n"), "\n") {
			if _, err := fmt.Fprintf(w, "# %s\n", l); err != nil {
				return err
			}
		}
	}
	for i, o := range g.Objects() {
		m, err := cleanObject(o)
		if err != nil {
			return err
		}
		// Encoded from the JSON form, so the k8s.io/api types' json names
		// are the keys; yaml.v3 quotes strings YAML 1.1 would misread
		// (yes, on, …), so kubectl reads back exactly these values.
		var buf bytes.Buffer
		enc := yamlv3.NewEncoder(&buf)
		enc.SetIndent(2)
		if err := enc.Encode(m); err != nil {
			return err
		}
		b := buf.Bytes()
		if i > 0 || header != "" {
			if _, err := io.WriteString(w, "---\n"); err != nil {
				return err
			}
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// WriteJSON writes the objects as a v1 List.
func (g *Generated) WriteJSON(w io.Writer) error {
	list := map[string]any{"apiVersion": "v1", "kind": "List", "items": []any{}}
	var items []any
	for _, o := range g.Objects() {
		m, err := cleanObject(o)
		if err != nil {
			return err
		}
		items = append(items, m)
	}
	if items != nil {
		list["items"] = items
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(list)
}

// cleanObject renders an object as a map without the fields an unset
// ObjectMeta writes (creationTimestamp: null).
func cleanObject(o any) (map[string]any, error) {
	b, err := json.Marshal(o)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if md, ok := m["metadata"].(map[string]any); ok {
		delete(md, "creationTimestamp")
	}
	return m, nil
}
