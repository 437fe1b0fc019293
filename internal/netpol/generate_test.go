package netpol

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/trustmesh/trustmesh/internal/policy"
)

// seedGraph is the seeds' service matrix (frontend → api → database,
// frontend → auth, api → cache/auth, auth → database), one namespace.
const seedGraph = `
services:
  - {name: frontend, labels: {app: frontend}, ports: [8080]}
  - {name: api, labels: {app: api}, ports: [8080]}
  - {name: auth, labels: {app: auth}, ports: [9000]}
  - {name: database, labels: {app: database}, ports: [5432]}
  - {name: cache, labels: {app: cache}, ports: [6379/TCP]}
edges:
  - frontend -> api : 8080/TCP
  - frontend → auth
  - "api -> database : 5432/TCP"
  - {from: api, to: cache}
  - api -> auth : 9000
  - auth -> database: 5432/TCP
`

// servicePods writes, for each service, two replica pods with its labels
// and ports (so an edge from a service to itself is between two pods),
// and the cluster DNS pod.
func servicePods(g *Graph) string {
	var b strings.Builder
	pod := func(ns, name, sa string, labels map[string]string, ports []GraphPort) {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: %q\n  namespace: %q\n  labels:\n", name, ns)
		keys := make([]string, 0, len(labels))
		for k := range labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "    %q: %q\n", k, labels[k])
		}
		fmt.Fprintf(&b, "spec:\n  serviceAccountName: %q\n  containers:\n  - name: app\n    image: app\n", sa)
		if len(ports) > 0 {
			b.WriteString("    ports:\n")
			for _, p := range ports {
				fmt.Fprintf(&b, "    - {containerPort: %d, protocol: %s}\n", p.Port, p.Protocol)
			}
		}
	}
	for _, s := range g.Services {
		pod(s.Namespace, s.Name+"-1", s.ServiceAccount, s.Labels, s.Ports)
		pod(s.Namespace, s.Name+"-2", s.ServiceAccount, s.Labels, s.Ports)
	}
	pod(g.DNS.Namespace, "coredns", "coredns", g.DNS.Labels, []GraphPort{{53, UDP}, {53, TCP}})
	return b.String()
}

func generateYAML(t *testing.T, g *Graph, opts GenerateOptions) (*Generated, []byte) {
	t.Helper()
	gen, err := Generate(g, opts)
	if err != nil {
		t.Fatalf("generate: %v", err)
	}
	var buf bytes.Buffer
	if err := gen.WriteYAML(&buf, "generated"); err != nil {
		t.Fatal(err)
	}
	return gen, buf.Bytes()
}

// expectedPorts is what the graph allows from service a to service b.
func expectedPorts(g *Graph, from, to string) PortSet {
	var s PortSet
	for _, e := range g.Edges {
		if e.From == from && e.To == to {
			for _, p := range e.Ports {
				s.add(p.Protocol, uint16(p.Port), uint16(p.Port))
			}
		}
	}
	s.norm()
	return s
}

// checkGenerated holds generated NetworkPolicies to the graph: between
// every two pods exactly the declared ports pass, every pod reaches DNS on
// UDP and TCP 53 and nothing else is allowed (a pod to itself aside).
func checkGenerated(t *testing.T, g *Graph, manifests []byte) {
	t.Helper()
	a := load(t, servicePods(g), string(manifests))
	m := a.Matrix(MatrixOptions{})
	svcOf := func(p *Pod) string {
		if p.Namespace == g.DNS.Namespace && labelsMatch(g.DNS.Labels, p.Labels) {
			return "(dns)"
		}
		return strings.TrimSuffix(strings.TrimSuffix(p.Name, "-1"), "-2")
	}
	var dnsPorts PortSet
	dnsPorts.add(UDP, 53, 53)
	dnsPorts.add(TCP, 53, 53)
	for i, from := range m.Endpoints {
		for j, to := range m.Endpoints {
			got := m.Ports(i, j)
			var want PortSet
			fs, ts := svcOf(from.Pod), svcOf(to.Pod)
			switch {
			case i == j:
				want = AllPorts()
			case fs == "(dns)":
				want = PortSet{} // DNS egress is open, service ingress is not
			case ts == "(dns)":
				want = dnsPorts
			default:
				want = expectedPorts(g, fs, ts)
			}
			if !got.Equal(want) {
				t.Errorf("%s → %s: allowed %s, declared %s", from, to, got, want)
			}
		}
	}
	// External CIDR ends: the caller's pods reach the CIDR on exactly the
	// edge's ports.
	for _, e := range g.Edges {
		cidr, err := parseEnd(e.To)
		if err != nil {
			continue
		}
		want := expectedPorts(g, e.From, e.To)
		for i, p := range a.pods {
			if svcOf(p) != e.From {
				continue
			}
			got := a.ports.get(a.sidePorts(Egress, a.PodEndpoint(i), a.IPEndpoint(cidr.Addr())))
			if !got.Equal(want) {
				t.Errorf("%s → %s: allowed %s, declared %s", p.ID(), cidr.Addr(), got, want)
			}
		}
	}
}

// checkIstio holds the AuthorizationPolicies to the graph through the
// policy engine the proxies run: a caller's principal is allowed on a
// callee's TCP port exactly when an edge declares it.
func checkIstio(t *testing.T, g *Graph, manifests []byte, ports []int32) {
	t.Helper()
	src := &policy.Sources{}
	src.Parse("generated.yaml", manifests)
	set, problems := policy.Compile(context.Background(), src, policy.Options{TrustDomain: "example.org"})
	for _, p := range problems {
		t.Errorf("policy engine: %s", p)
	}
	if set == nil {
		t.Fatal("generated AuthorizationPolicies do not compile")
	}
	for _, from := range g.Services {
		for _, to := range g.Services {
			for _, port := range ports {
				var want bool
				for _, e := range g.Edges {
					if e.From == from.Name && e.To == to.Name {
						for _, p := range e.Ports {
							want = want || (p.Protocol == TCP && p.Port == port)
						}
					}
				}
				in := &policy.Input{
					Source:      policy.Peer{Principal: fmt.Sprintf("spiffe://example.org/ns/%s/sa/%s", from.Namespace, from.ServiceAccount)},
					Destination: policy.Destination{Namespace: to.Namespace, Labels: to.Labels, Port: uint32(port)},
					Connection:  policy.Connection{MTLS: true},
				}
				d := set.Evaluate(context.Background(), in)
				if d.Allow != want {
					t.Errorf("mesh %s → %s:%d: allow=%v, declared %v (%s)", from.Name, to.Name, port, d.Allow, want, d.Reason)
				}
			}
		}
	}
}

func TestGenerateSeedGraph(t *testing.T) {
	g, err := ParseGraph([]byte(seedGraph))
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Edges) != 6 || g.Edges[1].To != "auth" || len(g.Edges[1].Ports) != 1 || g.Edges[1].Ports[0] != (GraphPort{9000, TCP}) {
		t.Fatalf("edges parsed wrong: %v", g.Edges)
	}
	gen, out := generateYAML(t, g, GenerateOptions{})
	// Per namespace a default deny and DNS, per edge ingress + egress.
	if n := len(gen.NetworkPolicies); n != 2+2*6 {
		t.Errorf("%d NetworkPolicies, want 14", n)
	}
	checkGenerated(t, g, out)
	checkIstio(t, g, out, []int32{53, 5432, 6379, 8080, 9000, 9090})
}

// TestGenerateRoundTrips decodes the generated YAML with the k8s.io/api
// types (through Load) and gets back exactly the generated specs, with no
// problem reported.
func TestGenerateRoundTrips(t *testing.T) {
	g, err := ParseGraph([]byte(seedGraph + "  - api -> 10.0.0.0/8 : 443\n  - 0.0.0.0/0 -> frontend : 8080\n"))
	if err != nil {
		t.Fatal(err)
	}
	gen, out := generateYAML(t, g, GenerateOptions{})
	c := Parse(LoadOptions{}, "generated.yaml", out)
	if len(c.Problems) > 0 {
		t.Fatalf("problems decoding generated YAML: %v", c.Problems)
	}
	if len(c.Policies) != len(gen.NetworkPolicies) {
		t.Fatalf("decoded %d policies, generated %d", len(c.Policies), len(gen.NetworkPolicies))
	}
	byID := map[string]*Policy{}
	for _, p := range c.Policies {
		byID[p.ID()] = p
	}
	for _, want := range gen.NetworkPolicies {
		got := byID[want.Namespace+"/"+want.Name]
		if got == nil {
			t.Errorf("%s/%s not decoded", want.Namespace, want.Name)
			continue
		}
		if !reflect.DeepEqual(got.Spec, want.Spec) {
			t.Errorf("%s: decoded spec differs:\n got %+v\nwant %+v", got.ID(), got.Spec, want.Spec)
		}
	}
	if c.Ignored["security.istio.io/v1 AuthorizationPolicy"] != len(gen.AuthorizationPolicies) {
		t.Errorf("ignored kinds %v, want %d AuthorizationPolicies", c.Ignored, len(gen.AuthorizationPolicies))
	}
	checkGenerated(t, g, out)
	// JSON output is the same objects.
	var js bytes.Buffer
	if err := gen.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	cj := Parse(LoadOptions{}, "generated.json", js.Bytes())
	if len(cj.Problems) > 0 || len(cj.Policies) != len(c.Policies) {
		t.Errorf("JSON output: %d policies, problems %v", len(cj.Policies), cj.Problems)
	}
}

// TestGenerateProperty: for random graphs (namespaces, labels, ports over
// TCP/UDP/SCTP, self edges, defaulted ports), the generated policies allow
// exactly the declared edges, in the NetworkPolicy analysis and in the
// mesh's policy engine.
func TestGenerateProperty(t *testing.T) {
	iterations := 150
	if testing.Short() {
		iterations = 20
	}
	for seed := 0; seed < iterations; seed++ {
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		g := randomGraph(r)
		yml, err := g.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		// The graph survives its own YAML form.
		g2, err := ParseGraph(yml)
		if err != nil {
			t.Fatalf("seed %d: re-reading the graph: %v\n%s", seed, err, yml)
		}
		_, out := generateYAML(t, g2, GenerateOptions{})
		checkGenerated(t, g2, out)
		checkIstio(t, g2, out, []int32{53, 80, 443, 5432, 8080, 9000})
		if t.Failed() {
			t.Fatalf("seed %d: graph:\n%s\npolicies:\n%s", seed, yml, out)
		}
	}
}

func randomGraph(r *rand.Rand) *Graph {
	g := &Graph{}
	namespaces := []string{"shop", "data", "edge"}[:1+r.IntN(3)]
	pool := []GraphPort{{80, TCP}, {443, TCP}, {5432, TCP}, {8080, TCP}, {9000, TCP}, {53, UDP}, {9000, UDP}, {80, SCTP}}
	n := 2 + r.IntN(5)
	for i := 0; i < n; i++ {
		s := &Service{Name: fmt.Sprintf("svc%d", i), Namespace: namespaces[r.IntN(len(namespaces))]}
		switch r.IntN(3) {
		case 0:
			s.Labels = map[string]string{"app": s.Name}
		case 1:
			s.Labels = map[string]string{"component": s.Name, "team": []string{"a", "b"}[r.IntN(2)]}
		default:
			s.Labels = map[string]string{"app.kubernetes.io/name": s.Name, "tier": "backend"}
		}
		if r.IntN(4) == 0 {
			s.ServiceAccount = "sa-" + s.Name
		}
		for _, k := range r.Perm(len(pool))[:r.IntN(3)] {
			s.Ports = append(s.Ports, pool[k])
		}
		g.Services = append(g.Services, s)
	}
	edges := r.IntN(2 * n)
	for i := 0; i < edges; i++ {
		from, to := g.Services[r.IntN(n)], g.Services[r.IntN(n)]
		e := &Edge{From: from.Name, To: to.Name}
		if len(to.Ports) == 0 || r.IntN(2) == 0 {
			for _, k := range r.Perm(len(pool))[:1+r.IntN(2)] {
				e.Ports = append(e.Ports, pool[k])
			}
		} // else: the callee's ports, by default
		g.Edges = append(g.Edges, e)
	}
	if r.IntN(3) == 0 {
		g.Edges = append(g.Edges, &Edge{From: g.Services[0].Name, To: "203.0.113.0/24", Ports: []GraphPort{{443, TCP}}})
	}
	return g
}

func TestGenerateRefusesAmbiguousServices(t *testing.T) {
	_, err := ParseGraph([]byte(`
services:
  - {name: api, labels: {app: api}, ports: [80]}
  - {name: api-canary, labels: {app: api, track: canary}, ports: [80]}
edges: [api -> api-canary]
`))
	if err == nil || !strings.Contains(err.Error(), "select the other's pods") {
		t.Fatalf("want an ambiguity error, got %v", err)
	}
	g, err := ParseGraph([]byte(`
services:
  - {name: a, labels: {app: a}, serviceAccount: shared, ports: [80]}
  - {name: b, labels: {app: b}, serviceAccount: shared, ports: [80]}
  - {name: c, labels: {app: c}, ports: [80]}
edges: [a -> c]
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(g, GenerateOptions{}); err == nil || !strings.Contains(err.Error(), "share service account") {
		t.Fatalf("want a shared-account error, got %v", err)
	}
	if _, err := Generate(g, GenerateOptions{NoIstio: true}); err != nil {
		t.Fatalf("without Istio output a shared account is fine: %v", err)
	}
}

func TestParseGraphErrors(t *testing.T) {
	for _, tc := range []struct{ graph, want string }{
		{"", "empty service graph"},
		{"services: []", "none declared"},
		{"services: [{name: a, labels: {app: a}}]\nedges: [a -> b : 80]", `"b" is neither a service nor a CIDR`},
		{"services: [{name: a, labels: {app: a}}]\nedges: [a -> a]", "no ports"},
		{"services: [{name: a, labels: {app: a}}]\nedges: [a -> a : 99999]", "between 1 and 65535"},
		{"services: [{name: a, labels: {app: a}}]\nedges: [a -> a : 80/ICMP]", "unknown protocol"},
		{"services: [{name: a}]", "labels: required"},
		{"services: [{name: A_1, labels: {app: a}}]", "name:"},
		{"services: [{name: a, labels: {app: a}, prots: [80]}]", "field prots not found"},
		{"services: [{name: a, labels: {app: a}}, {name: a, labels: {app: b}}]", "declared twice"},
		{"services: [{name: a, labels: {app: a}}]\nedges: [a : 80]", `want "from -> to : port/protocol"`},
		{"services: [{name: a, labels: {app: a}}]\nedges: [10.0.0.0/8 -> 0.0.0.0/0 : 80]", "one end must be a service"},
	} {
		_, err := ParseGraph([]byte(tc.graph))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error containing %q", tc.graph, err, tc.want)
		}
	}
}

const auditLog = `{"timestamp":"2026-12-01T22:14:03Z","event":"access_decision","direction":"inbound","listener":"http","protocol":"http","source_principal":"spiffe://example.org/ns/shop/sa/frontend","source_ip":"10.0.0.1","destination":"spiffe://example.org/ns/shop/sa/api","destination_port":8080,"decision":"allow","policy":"shop/api-allow","rule":0,"reason":"","mtls":true,"authenticated":true,"latency_ms":0.2}
{"event":"access_decision","protocol":"tcp","source_principal":"spiffe://example.org/ns/shop/sa/api","destination":"spiffe://example.org/ns/data/sa/postgres","destination_port":5432,"decision":"allow"}
{"event":"access_decision","protocol":"http","source_principal":"spiffe://example.org/ns/shop/sa/frontend","destination":"spiffe://example.org/ns/data/sa/postgres","destination_port":5432,"decision":"deny"}
{"event":"access_decision","protocol":"http","source_principal":"","destination":"spiffe://example.org/ns/shop/sa/api","destination_port":8080,"decision":"allow"}
{"event":"access_decision","protocol":"http","source_principal":"spiffe://example.org/ns/shop/sa/frontend","destination":"spiffe://example.org/ns/shop/sa/api","destination_port":8443,"decision":"allow"}
not json
`

func TestGraphFromAudit(t *testing.T) {
	manifests := Parse(LoadOptions{}, "m.yaml", []byte(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, tier: front, version: v2}}
    spec: {serviceAccountName: frontend, containers: [{name: web, image: web}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-old, namespace: shop, labels: {app: web, tier: front, version: v1}}
spec: {serviceAccountName: frontend, containers: [{name: web, image: web}]}
`))
	g, sum, err := GraphFromAudit(strings.NewReader(auditLog), manifests)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Allowed != 4 || sum.Denied != 1 || sum.Unauthenticated != 1 || sum.Malformed != 1 {
		t.Errorf("summary %+v", sum)
	}
	if g.TrustDomain != "example.org" {
		t.Errorf("trust domain %q", g.TrustDomain)
	}
	fe := g.service("frontend")
	if fe == nil || !reflect.DeepEqual(fe.Labels, map[string]string{"app": "web", "tier": "front"}) || fe.Namespace != "shop" {
		t.Fatalf("frontend service %+v: want the labels its pods share", fe)
	}
	if api := g.service("api"); api == nil || api.Labels["app"] != "api" {
		t.Errorf("api service %+v: want the fallback label app=api", api)
	}
	var edges []string
	for _, e := range g.Edges {
		edges = append(edges, e.String())
	}
	want := []string{"api -> postgres : 5432/TCP", "frontend -> api : 8080/TCP,8443/TCP"}
	if !reflect.DeepEqual(edges, want) {
		t.Errorf("edges %v, want %v (denied and unauthenticated calls left out)", edges, want)
	}
	_, out := generateYAML(t, g, GenerateOptions{})
	checkGenerated(t, g, out)
	checkIstio(t, g, out, []int32{5432, 8080, 8443})
	if _, _, err := GraphFromAudit(strings.NewReader("{}\n"), nil); err == nil {
		t.Error("an audit log without allowed decisions must be an error")
	}
}
