package netpol

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	yamlv3 "gopkg.in/yaml.v3"
	metavalidation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Graph is a declared service graph: the services, and who calls whom on
// which ports. It is what `netpol generate` turns into policies.
//
//	trustDomain: cluster.local         # principals in AuthorizationPolicies
//	dns: {namespace: kube-system, labels: {k8s-app: kube-dns}}
//	services:
//	  - name: api
//	    namespace: default
//	    labels: {app: api}
//	    serviceAccount: api            # default: the name
//	    ports: [8080/TCP]              # 8080, "53/UDP", {port: 8080, protocol: TCP}
//	edges:
//	  - frontend -> api : 8080/TCP     # or → ; ports default to the callee's
//	  - {from: api, to: database, ports: [5432]}
//	  - api -> 10.0.0.0/8 : 443        # a CIDR outside the cluster
type Graph struct {
	TrustDomain string     `yaml:"trustDomain,omitempty"`
	DNS         *DNSTarget `yaml:"dns,omitempty"`
	Services    []*Service `yaml:"services"`
	Edges       []*Edge    `yaml:"edges"`
}

// DNSTarget is where every namespace's DNS egress goes.
type DNSTarget struct {
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
}

// Service is a set of pods with one identity.
type Service struct {
	Name           string            `yaml:"name"`
	Namespace      string            `yaml:"namespace,omitempty"`
	Labels         map[string]string `yaml:"labels"`
	ServiceAccount string            `yaml:"serviceAccount,omitempty"`
	Ports          []GraphPort       `yaml:"ports,omitempty"`
}

// GraphPort is a port and protocol.
type GraphPort struct {
	Port     int32    `yaml:"port"`
	Protocol Protocol `yaml:"-"`
}

func (p GraphPort) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Protocol) }

// Edge allows From to call To on Ports. An end is a service name, or a
// CIDR (or IP) outside the cluster.
type Edge struct {
	From  string      `yaml:"from"`
	To    string      `yaml:"to"`
	Ports []GraphPort `yaml:"ports,omitempty"`
	line  int
}

func (e *Edge) String() string {
	ps := make([]string, len(e.Ports))
	for i, p := range e.Ports {
		ps[i] = p.String()
	}
	return fmt.Sprintf("%s -> %s : %s", e.From, e.To, strings.Join(ps, ","))
}

// MarshalYAML writes a port as "8080/TCP".
func (p GraphPort) MarshalYAML() (any, error) { return p.String(), nil }

// UnmarshalYAML reads 8080, "8080/TCP" or {port: 8080, protocol: TCP}.
func (p *GraphPort) UnmarshalYAML(n *yamlv3.Node) error {
	if n.Kind == yamlv3.MappingNode {
		var m struct {
			Port     int32  `yaml:"port"`
			Protocol string `yaml:"protocol"`
		}
		if err := n.Decode(&m); err != nil {
			return err
		}
		proto := TCP
		if m.Protocol != "" {
			var err error
			if proto, err = ParseProtocol(m.Protocol); err != nil {
				return fmt.Errorf("line %d: %v", n.Line, err)
			}
		}
		*p = GraphPort{Port: m.Port, Protocol: proto}
		return p.check(n.Line)
	}
	if n.Kind != yamlv3.ScalarNode {
		return fmt.Errorf("line %d: a port is 8080, \"8080/TCP\" or {port: 8080, protocol: TCP}", n.Line)
	}
	gp, err := parseGraphPort(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*p = gp
	return nil
}

func (p GraphPort) check(line int) error {
	if p.Port < 1 || p.Port > 65535 {
		return fmt.Errorf("line %d: port %d: must be between 1 and 65535", line, p.Port)
	}
	return nil
}

func parseGraphPort(s string) (GraphPort, error) {
	s = strings.TrimSpace(s)
	num, proto, hasProto := strings.Cut(s, "/")
	n, err := strconv.Atoi(strings.TrimSpace(num))
	if err != nil {
		return GraphPort{}, fmt.Errorf("port %q: want a number, optionally /TCP, /UDP or /SCTP", s)
	}
	gp := GraphPort{Port: int32(n), Protocol: TCP}
	if hasProto {
		if gp.Protocol, err = ParseProtocol(strings.TrimSpace(proto)); err != nil {
			return GraphPort{}, fmt.Errorf("port %q: %v", s, err)
		}
	}
	if n < 1 || n > 65535 {
		return GraphPort{}, fmt.Errorf("port %q: must be between 1 and 65535", s)
	}
	return gp, nil
}

// MarshalYAML writes an edge in its explicit form.
func (e *Edge) MarshalYAML() (any, error) {
	type plain Edge
	return (*plain)(e), nil
}

// UnmarshalYAML reads "a -> b : 8080/TCP", {"a -> b": "8080/TCP"} (how
// YAML reads that string unquoted) or {from: a, to: b, ports: [...]}.
func (e *Edge) UnmarshalYAML(n *yamlv3.Node) error {
	e.line = n.Line
	switch n.Kind {
	case yamlv3.ScalarNode:
		ends, ports, _ := strings.Cut(n.Value, ":")
		return e.parse(n.Line, ends, ports)
	case yamlv3.MappingNode:
		if len(n.Content) == 2 && n.Content[0].Value != "from" && n.Content[0].Value != "to" && n.Content[0].Value != "ports" {
			v := n.Content[1]
			ports := v.Value
			if v.Kind == yamlv3.SequenceNode {
				var list []string
				if err := v.Decode(&list); err != nil {
					return fmt.Errorf("line %d: %v", v.Line, err)
				}
				ports = strings.Join(list, ",")
			} else if v.Kind != yamlv3.ScalarNode {
				return fmt.Errorf("line %d: edge %q: ports are \"8080/TCP\" or a list of them", v.Line, n.Content[0].Value)
			}
			return e.parse(n.Line, n.Content[0].Value, ports)
		}
		type plain struct {
			From  string      `yaml:"from"`
			To    string      `yaml:"to"`
			Ports []GraphPort `yaml:"ports"`
		}
		var p plain
		dec := n
		if err := strictDecode(dec, &p); err != nil {
			return err
		}
		e.From, e.To, e.Ports = strings.TrimSpace(p.From), strings.TrimSpace(p.To), p.Ports
		if e.From == "" || e.To == "" {
			return fmt.Errorf("line %d: an edge needs from and to", n.Line)
		}
		return nil
	}
	return fmt.Errorf("line %d: an edge is \"from -> to : port/protocol\" or {from, to, ports}", n.Line)
}

func (e *Edge) parse(line int, ends, ports string) error {
	ends = strings.ReplaceAll(ends, "→", "->")
	from, to, ok := strings.Cut(ends, "->")
	if !ok {
		return fmt.Errorf("line %d: edge %q: want \"from -> to : port/protocol\"", line, ends)
	}
	e.From, e.To = strings.TrimSpace(from), strings.TrimSpace(to)
	if e.From == "" || e.To == "" {
		return fmt.Errorf("line %d: edge %q: want \"from -> to : port/protocol\"", line, ends)
	}
	for _, p := range strings.Split(ports, ",") {
		if strings.TrimSpace(p) == "" {
			continue
		}
		gp, err := parseGraphPort(p)
		if err != nil {
			return fmt.Errorf("line %d: edge %s -> %s: %v", line, e.From, e.To, err)
		}
		e.Ports = append(e.Ports, gp)
	}
	return nil
}

// strictDecode decodes a node refusing unknown keys, as every Trustmesh
// config does: a misspelt key would otherwise silently change the policies.
func strictDecode(n *yamlv3.Node, v any) error {
	b, err := yamlv3.Marshal(n)
	if err != nil {
		return err
	}
	dec := yamlv3.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("line %d: %v", n.Line, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	return nil
}

// ParseGraph reads and checks a service graph.
func ParseGraph(data []byte) (*Graph, error) {
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var g Graph
	if err := dec.Decode(&g); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty service graph")
		}
		return nil, errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if err := g.Check(); err != nil {
		return nil, err
	}
	return &g, nil
}

// Check validates the graph and fills defaults: namespaces (default),
// service accounts (the name), edge ports (the callee's), the DNS target.
// Two services of a namespace whose labels select each other's pods are an
// error: their policies could not be told apart.
func (g *Graph) Check() error {
	var errs []string
	fail := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if g.DNS == nil {
		g.DNS = &DNSTarget{Namespace: "kube-system", Labels: map[string]string{"k8s-app": "kube-dns"}}
	}
	if len(g.Services) == 0 {
		fail("services: none declared")
	}
	byName := map[string]*Service{}
	for i, s := range g.Services {
		if s == nil {
			fail("services[%d]: empty", i)
			continue
		}
		where := fmt.Sprintf("services[%d] (%s)", i, s.Name)
		for _, msg := range validation.IsDNS1123Label(s.Name) {
			fail("%s: name: %s", where, msg)
		}
		if byName[s.Name] != nil {
			fail("%s: name: declared twice", where)
		}
		byName[s.Name] = s
		if s.Namespace == "" {
			s.Namespace = DefaultNamespace
		}
		for _, msg := range validation.IsDNS1123Label(s.Namespace) {
			fail("%s: namespace %q: %s", where, s.Namespace, msg)
		}
		if s.ServiceAccount == "" {
			s.ServiceAccount = s.Name
		}
		if len(s.Labels) == 0 {
			fail("%s: labels: required: policies select the service's pods by them", where)
		}
		for _, e := range metavalidation.ValidateLabels(s.Labels, field.NewPath("labels")) {
			fail("%s: %s", where, e.ErrorBody())
		}
	}
	for i, s := range g.Services {
		for _, t := range g.Services[i+1:] {
			if s == nil || t == nil || s.Namespace != t.Namespace || len(s.Labels) == 0 || len(t.Labels) == 0 {
				continue
			}
			if labelsMatch(s.Labels, t.Labels) || labelsMatch(t.Labels, s.Labels) {
				fail("services %s (%s) and %s (%s) in namespace %s: one's labels select the other's pods, so their policies would apply to both; give each a label the other lacks",
					s.Name, labelString(s.Labels), t.Name, labelString(t.Labels), s.Namespace)
			}
		}
	}
	end := func(e *Edge, name string) bool {
		if byName[name] != nil {
			return true
		}
		if _, err := parseEnd(name); err == nil {
			return true
		}
		fail("edges: %s: %q is neither a service nor a CIDR", e, name)
		return false
	}
	for i, e := range g.Edges {
		if e == nil {
			fail("edges[%d]: empty", i)
			continue
		}
		okFrom, okTo := end(e, e.From), end(e, e.To)
		if !okFrom || !okTo {
			continue
		}
		if byName[e.From] == nil && byName[e.To] == nil {
			fail("edges: %s: one end must be a service", e)
			continue
		}
		if len(e.Ports) == 0 {
			if callee := byName[e.To]; callee != nil && len(callee.Ports) > 0 {
				e.Ports = append([]GraphPort(nil), callee.Ports...)
			} else {
				fail("edges: %s: no ports: give the edge ports, or the callee's ports", e)
			}
		}
	}
	if g.DNS.Namespace == "" || len(g.DNS.Labels) == 0 {
		fail("dns: namespace and labels are required")
	}
	if len(errs) > 0 {
		return fmt.Errorf("service graph: %s", strings.Join(errs, "\n  "))
	}
	return nil
}

// parseEnd reads a CIDR or an IP (a /32 or /128) as an edge end.
func parseEnd(s string) (netip.Prefix, error) {
	if p, err := parseCIDR(s); err == nil {
		return p, nil
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	ip = ip.Unmap()
	return netip.PrefixFrom(ip, ip.BitLen()), nil
}

func (g *Graph) service(name string) *Service {
	for _, s := range g.Services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Marshal writes the graph as YAML ParseGraph reads.
func (g *Graph) Marshal() ([]byte, error) {
	var b bytes.Buffer
	enc := yamlv3.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(g); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// auditRecord is the part of a proxy audit line (accesslog.Record) a
// graph is built from.
type auditRecord struct {
	Event           string `json:"event"`
	SourcePrincipal string `json:"source_principal"`
	Destination     string `json:"destination"`
	DestinationPort uint32 `json:"destination_port"`
	Protocol        string `json:"protocol"`
	Decision        string `json:"decision"`
}

// AuditSummary says what GraphFromAudit read.
type AuditSummary struct {
	Lines, Allowed, Denied, Unauthenticated, Foreign, Malformed int
	Warnings                                                    []string
}

type principal struct{ td, ns, sa string }

// parsePrincipal reads spiffe://td/ns/<ns>/sa/<sa>.
func parsePrincipal(s string) (principal, bool) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return principal{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" || parts[0] == "" || parts[2] == "" || parts[4] == "" {
		return principal{}, false
	}
	return principal{parts[0], parts[2], parts[4]}, true
}

// GraphFromAudit builds a service graph from a Trustmesh proxy audit log
// (JSON lines): each allowed decision between two /ns/<ns>/sa/<sa>
// identities is an edge on its destination port (TCP). A service is a
// service account; its labels are those every pod running as that account
// shares in c (the cluster's manifests, may be nil), else app=<account>,
// with a warning.
func GraphFromAudit(r io.Reader, c *Cluster) (*Graph, *AuditSummary, error) {
	sum := &AuditSummary{}
	type edgeKey struct{ from, to principal }
	edges := map[edgeKey]map[uint32]bool{}
	services := map[principal]bool{}
	tds := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		sum.Lines++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var rec auditRecord
		if err := json.Unmarshal(line, &rec); err != nil {
			sum.Malformed++
			if sum.Malformed <= 5 {
				sum.Warnings = append(sum.Warnings, fmt.Sprintf("line %d: not a JSON audit record: %v", sum.Lines, trimJSONErr(err)))
			}
			continue
		}
		if rec.Event != "" && rec.Event != "access_decision" {
			continue
		}
		if rec.Decision != "allow" {
			sum.Denied++
			continue
		}
		sum.Allowed++
		src, ok1 := parsePrincipal(rec.SourcePrincipal)
		dst, ok2 := parsePrincipal(rec.Destination)
		switch {
		case rec.SourcePrincipal == "":
			sum.Unauthenticated++ // a plaintext caller has no identity to write a policy for
			continue
		case !ok1 || !ok2:
			sum.Foreign++
			continue
		case rec.DestinationPort < 1 || rec.DestinationPort > 65535:
			sum.Malformed++
			continue
		}
		switch strings.ToLower(rec.Protocol) {
		case "", "http", "tcp", "grpc", "websocket":
		default:
			sum.Malformed++
			continue
		}
		services[src], services[dst] = true, true
		tds[src.td], tds[dst.td] = true, true
		k := edgeKey{src, dst}
		if edges[k] == nil {
			edges[k] = map[uint32]bool{}
		}
		edges[k][rec.DestinationPort] = true
	}
	if err := sc.Err(); err != nil {
		return nil, sum, fmt.Errorf("read audit log: %w", err)
	}
	if len(edges) == 0 {
		return nil, sum, fmt.Errorf("no allowed decisions between /ns/<ns>/sa/<sa> identities in %d lines (%d denied, %d unauthenticated, %d other identities, %d malformed)",
			sum.Lines, sum.Denied, sum.Unauthenticated, sum.Foreign, sum.Malformed)
	}
	g := &Graph{}
	if len(tds) == 1 {
		for td := range tds {
			g.TrustDomain = td
		}
	} else {
		sum.Warnings = append(sum.Warnings, fmt.Sprintf("principals span %d trust domains: AuthorizationPolicies use cluster.local (the local trust domain)", len(tds)))
	}
	// Service names: the account, or account-namespace where one account
	// name is used in several namespaces.
	count := map[string]int{}
	for p := range services {
		count[p.sa]++
	}
	names := map[principal]string{}
	var ps []principal
	for p := range services {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].ns != ps[j].ns {
			return ps[i].ns < ps[j].ns
		}
		return ps[i].sa < ps[j].sa
	})
	used := map[string]bool{}
	for _, p := range ps {
		name := p.sa
		if count[p.sa] > 1 {
			name = p.sa + "-" + p.ns
		}
		if len(validation.IsDNS1123Label(name)) > 0 || used[name] {
			name = dnsLabel(name, used)
		}
		used[name] = true
		names[p] = name
		s := &Service{Name: name, Namespace: p.ns, ServiceAccount: p.sa, Labels: auditLabels(c, p, sum)}
		g.Services = append(g.Services, s)
	}
	for k, ports := range edges {
		e := &Edge{From: names[k.from], To: names[k.to]}
		for p := range ports {
			e.Ports = append(e.Ports, GraphPort{Port: int32(p), Protocol: TCP})
		}
		sort.Slice(e.Ports, func(i, j int) bool { return e.Ports[i].Port < e.Ports[j].Port })
		g.Edges = append(g.Edges, e)
	}
	sort.Slice(g.Edges, func(i, j int) bool {
		if g.Edges[i].From != g.Edges[j].From {
			return g.Edges[i].From < g.Edges[j].From
		}
		return g.Edges[i].To < g.Edges[j].To
	})
	if err := g.Check(); err != nil {
		return g, sum, err
	}
	return g, sum, nil
}

// auditLabels finds the labels all pods of a service account share.
func auditLabels(c *Cluster, p principal, sum *AuditSummary) map[string]string {
	var common map[string]string
	if c != nil {
		for _, pod := range c.Pods {
			if pod.Namespace != p.ns || pod.ServiceAccount != p.sa {
				continue
			}
			if common == nil {
				common = map[string]string{}
				for k, v := range pod.Labels {
					common[k] = v
				}
				continue
			}
			for k, v := range common {
				if pod.Labels[k] != v {
					delete(common, k)
				}
			}
		}
	}
	if len(common) > 0 {
		return common
	}
	why := "no manifests given (-f)"
	if c != nil {
		why = "no pod or workload in the manifests runs as it"
		if common != nil {
			why = "its pods share no label"
		}
	}
	sum.Warnings = append(sum.Warnings, fmt.Sprintf("service account %s/%s: %s; assuming labels app=%s", p.ns, p.sa, why, p.sa))
	return map[string]string{"app": p.sa}
}

// dnsLabel makes a valid, unused DNS label from s.
func dnsLabel(s string, used map[string]bool) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	out := strings.Trim(b.String(), "-")
	if len(out) > 55 {
		out = strings.Trim(out[:55], "-")
	}
	if out == "" {
		out = "svc"
	}
	base := out
	for i := 2; used[out]; i++ {
		out = fmt.Sprintf("%s-%d", base, i)
	}
	return out
}
