package netpol

import (
	"fmt"
	"io"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// benchCluster writes a cluster shaped like bench/netpol.sh's: namespaces
// of 100 pods (10 apps × 10 replicas over three tiers), a policy per two
// pods (per namespace a default deny and DNS egress, then ingress and
// egress allows with pod, namespace and AND selectors, matchExpressions,
// named ports, endPort ranges and ipBlocks).
func benchCluster(pods int) string {
	var b strings.Builder
	nsCount := max(1, pods/100)
	perNS := pods / nsCount
	tiers := []string{"frontend", "backend", "db"}
	for n := 0; n < nsCount; n++ {
		ns := fmt.Sprintf("team-%d", n)
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels: {team: t%d, env: %s}\n", ns, n%7, []string{"prod", "staging"}[n%2])
		for i := 0; i < perNS; i++ {
			app := i % 10
			tier := tiers[app%3]
			fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: app-%d-%d\n  namespace: %s\n  labels: {app: app-%d, tier: %s, version: v%d}\n", app, i, ns, app, tier, i%3)
			fmt.Fprintf(&b, "spec:\n  nodeName: node-%d\n  containers:\n  - name: app\n    image: example/app:1\n    ports:\n    - {name: http, containerPort: 8080}\n    - {name: metrics, containerPort: 9090}\n", (n*perNS+i)%50)
			if tier == "db" {
				b.WriteString("    - {name: postgres, containerPort: 5432}\n")
			}
			fmt.Fprintf(&b, "status:\n  phase: Running\n  hostIP: 192.168.%d.%d\n  podIP: 10.%d.%d.%d\n", ((n*perNS+i)%50)/250, (n*perNS+i)%50+1, n/250, n%250, i+1)
		}
		policies := perNS / 2
		fmt.Fprintf(&b, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: %s}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n", ns)
		fmt.Fprintf(&b, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-dns, namespace: %s}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]\n    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]\n", ns)
		for p := 2; p < policies; p++ {
			app := p % 10
			target := fmt.Sprintf("{matchLabels: {app: app-%d}}", app)
			switch p % 6 {
			case 0: // same namespace, by tier
				fmt.Fprintf(&b, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p%d, namespace: %s}\nspec:\n  podSelector: %s\n  ingress:\n  - from: [{podSelector: {matchLabels: {tier: frontend}}}]\n    ports: [{port: http}]\n", p, ns, target)
			case 1: // other namespaces AND pods
				fmt.Fprintf(&b, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p%d, namespace: %s}\nspec:\n  podSelector: %s\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: t%d}}, podSelector: {matchExpressions: [{key: tier, operator: In, values: [frontend, backend]}]}}]\n    ports: [{port: 8080, protocol: TCP}, {port: 9000, endPort: 9100}]\n", p, ns, target, (p/6)%7)
			case 2: // egress to a tier and an ipBlock
				fmt.Fprintf(&b, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p%d, namespace: %s}\nspec:\n  podSelector: %s\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {tier: db}}}]\n    ports: [{port: postgres}]\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.%d.0.0/16]}}]\n    ports: [{port: 443}]\n", p, ns, target, n%250)
			case 3: // namespaces by expression
				fmt.Fprintf(&b, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p%d, namespace: %s}\nspec:\n  podSelector: {matchExpressions: [{key: app, operator: In, values: [app-%d]}, {key: version, operator: NotIn, values: [v9]}]}\n  ingress:\n  - from: [{namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [prod]}]}}]\n    ports: [{port: 9090}]\n", p, ns, app)
			case 4: // egress to other namespaces' backends
				fmt.Fprintf(&b, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p%d, namespace: %s}\nspec:\n  podSelector: %s\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {tier: backend}}}]\n    ports: [{port: 8080}]\n", p, ns, target)
			default: // ingress from an ipBlock and the same app
				fmt.Fprintf(&b, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p%d, namespace: %s}\nspec:\n  podSelector: %s\n  ingress:\n  - from: [{ipBlock: {cidr: 10.%d.0.0/16}}, {podSelector: %s}]\n", p, ns, target, n/250, target)
			}
		}
	}
	return b.String()
}

func benchAnalyzer(b *testing.B, pods int) *Analyzer {
	b.Helper()
	c := Parse(LoadOptions{}, "bench.yaml", []byte(benchCluster(pods)))
	if err := c.Err(); err != nil {
		b.Fatal(err)
	}
	return NewAnalyzer(c)
}

func BenchmarkLoad(b *testing.B) {
	for _, n := range []int{100, 1000} {
		data := []byte(benchCluster(n))
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for i := 0; i < b.N; i++ {
				c := Parse(LoadOptions{}, "bench.yaml", data)
				if len(c.Pods) != n {
					b.Fatalf("%d pods", len(c.Pods))
				}
			}
		})
	}
}

// BenchmarkLoadJSONList loads the 1,000-pod cluster as `kubectl get -o
// json` prints it: one List.
func BenchmarkLoadJSONList(b *testing.B) {
	c := Parse(LoadOptions{}, "bench.yaml", []byte(benchCluster(1000)))
	var items []string
	for _, d := range strings.Split(benchCluster(1000), "---\n") {
		if strings.TrimSpace(d) == "" {
			continue
		}
		j, err := yaml.YAMLToJSON([]byte(d))
		if err != nil {
			b.Fatal(err)
		}
		items = append(items, string(j))
	}
	data := []byte(`{"apiVersion": "v1", "kind": "List", "items": [` + strings.Join(items, ",\n") + "]}")
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		got := Parse(LoadOptions{}, "bench.json", data)
		if len(got.Pods) != len(c.Pods) || len(got.Problems) > 0 {
			b.Fatalf("%d pods, %v", len(got.Pods), got.Problems)
		}
	}
}

func BenchmarkMatrix(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("pods=%d/port", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				a := benchAnalyzerCached(b, n)
				a.Matrix(MatrixOptions{Port: 8080, Protocol: TCP})
			}
		})
		b.Run(fmt.Sprintf("pods=%d/every-port", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				a := benchAnalyzerCached(b, n)
				a.Matrix(MatrixOptions{})
			}
		})
	}
}

var benchClusters = map[int]*Cluster{}

// benchAnalyzerCached compiles a fresh Analyzer (its caches are part of
// the cost) over a cluster parsed once.
func benchAnalyzerCached(b *testing.B, pods int) *Analyzer {
	c, ok := benchClusters[pods]
	if !ok {
		b.StopTimer()
		c = benchAnalyzer(b, pods).c
		benchClusters[pods] = c
		b.StartTimer()
	}
	return NewAnalyzer(c)
}

func BenchmarkCheck(b *testing.B) {
	a := benchAnalyzer(b, 1000)
	from, to := a.PodEndpoint(3), a.PodEndpoint(517)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a.Check(from, to, TCP, 8080)
	}
}

func BenchmarkLint(b *testing.B) {
	for i := 0; i < b.N; i++ {
		a := benchAnalyzerCached(b, 1000)
		a.Lint(LintOptions{})
	}
}

// benchGraph is bench/netpol.sh's graph: a service per 10 pods, each
// calling the next app of its namespace and the same app of the next.
func benchGraph(pods int) *Graph {
	nsCount := max(1, pods/100)
	g := &Graph{}
	for n := 0; n < nsCount; n++ {
		for k := 0; k < 10; k++ {
			g.Services = append(g.Services, &Service{Name: fmt.Sprintf("t%d-app%d", n, k), Namespace: fmt.Sprintf("team-%d", n),
				Labels: map[string]string{"app": fmt.Sprintf("app-%d", k)}, Ports: []GraphPort{{8080, TCP}}})
		}
	}
	for n := 0; n < nsCount; n++ {
		for k := 0; k < 10; k++ {
			g.Edges = append(g.Edges, &Edge{From: fmt.Sprintf("t%d-app%d", n, k), To: fmt.Sprintf("t%d-app%d", n, (k+1)%10), Ports: []GraphPort{{8080, TCP}}})
			if nsCount > 1 {
				g.Edges = append(g.Edges, &Edge{From: fmt.Sprintf("t%d-app%d", n, k), To: fmt.Sprintf("t%d-app%d", (n+1)%nsCount, k), Ports: []GraphPort{{8080, TCP}}})
			}
		}
	}
	return g
}

func BenchmarkGenerate(b *testing.B) {
	g := benchGraph(1000)
	for i := 0; i < b.N; i++ {
		gen, err := Generate(g, GenerateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if err := gen.WriteYAML(io.Discard, "bench"); err != nil {
			b.Fatal(err)
		}
	}
}
