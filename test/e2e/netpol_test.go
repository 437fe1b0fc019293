package e2e

import (
	"encoding/csv"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// netpolExamples holds the seeds' NetworkPolicies; runStdin (policy_test.go)
// feeds -f -.
var netpolExamples = filepath.Join("..", "..", "examples", "netpol")

type netpolSide struct {
	Allowed   bool     `json:"allowed"`
	Isolated  bool     `json:"isolated"`
	Exempt    string   `json:"exempt"`
	Policies  []string `json:"policies"`
	AllowedBy []struct {
		Policy string `json:"policy"`
		Rule   int    `json:"rule"`
	} `json:"allowed_by"`
	Reason string `json:"reason"`
}

type netpolCheck struct {
	Allowed bool       `json:"allowed"`
	Egress  netpolSide `json:"egress"`
	Ingress netpolSide `json:"ingress"`
	Reason  string     `json:"reason"`
}

func netpolCheckJSON(t *testing.T, args ...string) netpolCheck {
	t.Helper()
	out := mustRun(t, append([]string{"netpol", "check", "-o", "json"}, args...)...)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("check output %q: %v", out, err)
	}
	// The fields external checks read are always there.
	for _, k := range []string{"allowed", "egress", "ingress", "reason"} {
		if _, ok := raw[k]; !ok {
			t.Fatalf("check output lacks %q: %s", k, out)
		}
	}
	for _, side := range []string{"egress", "ingress"} {
		var s map[string]json.RawMessage
		_ = json.Unmarshal(raw[side], &s)
		for _, k := range []string{"allowed", "policies"} {
			if _, ok := s[k]; !ok {
				t.Fatalf("check output lacks %s.%s: %s", side, k, out)
			}
		}
	}
	var v netpolCheck
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestNetpolCheckExplain drives check and explain on the seed's zero-trust
// policies: the frontend is allowed into the api, but default-deny-all
// isolates its egress too, so the connection is denied.
func TestNetpolCheckExplain(t *testing.T) {
	dir := filepath.Join(netpolExamples, "seed-zero-trust-api")
	fe, api := "default/frontend-7d9f8b6c5-x2k4p", "default/api-6b7c9d8f5-q4w8e"
	v := netpolCheckJSON(t, "-f", dir, "--from", fe, "--to", api, "--port", "8443")
	if v.Allowed || v.Egress.Allowed || !v.Ingress.Allowed {
		t.Errorf("frontend → api:8443: %+v", v)
	}
	if strings.Join(v.Egress.Policies, ",") != "default/default-deny-all" || strings.Join(v.Ingress.Policies, ",") != "default/default-deny-all,default/zero-trust-api" {
		t.Errorf("policies: egress %v ingress %v", v.Egress.Policies, v.Ingress.Policies)
	}
	if len(v.Ingress.AllowedBy) != 1 || v.Ingress.AllowedBy[0].Policy != "default/zero-trust-api" || v.Ingress.AllowedBy[0].Rule != 0 {
		t.Errorf("ingress allowed_by %+v", v.Ingress.AllowedBy)
	}
	if !strings.HasPrefix(v.Reason, "denied: ") || !strings.Contains(v.Reason, "no egress rule allows TCP 8443") {
		t.Errorf("reason %q", v.Reason)
	}
	// The api's DNS rule, by named protocol and port; a port name resolves
	// on the destination.
	v = netpolCheckJSON(t, "-f", dir, "--from", api, "--to", "kube-system/coredns-76f75df574-abcde", "--port", "dns", "--protocol", "udp")
	if !v.Allowed || !v.Egress.Allowed || v.Ingress.Isolated {
		t.Errorf("api → dns: %+v", v)
	}
	// An address outside the cluster: only the api's egress decides.
	v = netpolCheckJSON(t, "-f", dir, "--from", api, "--to", "8.8.8.8", "--port", "53", "--protocol", "UDP")
	if v.Allowed || v.Ingress.Exempt != "external" || len(v.Ingress.Policies) != 0 {
		t.Errorf("api → 8.8.8.8: %+v", v)
	}
	// Table output says the same in words.
	out := mustRun(t, "netpol", "check", "-f", dir, "--from", fe, "--to", api, "--port", "8443")
	if !strings.HasPrefix(out, "DENIED: ") || !strings.Contains(out, "allowed by default/zero-trust-api ingress rule 0") {
		t.Errorf("check table:\n%s", out)
	}
	out = mustRun(t, "netpol", "explain", "-f", dir, "--from", fe, "--to", api, "--port", "mtls")
	for _, want := range []string{
		"on TCP 8443: DENIED",
		"✗ default/default-deny-all: has no egress rules, so it allows nothing",
		"✓ default/zero-trust-api rule 0: peer 0 (pods app=frontend,zero-trust=enabled in namespace default) matches",
		"not selecting " + fe + ": default/zero-trust-api: podSelector requires app=api (has app=frontend)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("explain lacks %q:\n%s", want, out)
		}
	}
	// A Pod and a workload of one name: ambiguous, candidates listed.
	tmp := t.TempDir()
	if err := os.WriteFile(filepath.Join(tmp, "two.yaml"), []byte(`
apiVersion: v1
kind: Pod
metadata: {name: api}
spec: {containers: [{name: a, image: a}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec: {containers: [{name: a, image: a}]}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := run(t, "netpol", "check", "-f", tmp, "--from", "default/api", "--to", "default/api", "--port", "80")
	if code != 1 || !strings.Contains(errOut, "ambiguous") || !strings.Contains(errOut, "default/pod/api") || !strings.Contains(errOut, "default/deployment/api") {
		t.Errorf("ambiguous name: exit %d: %s", code, errOut)
	}
	mustRun(t, "netpol", "check", "-f", tmp, "--from", "default/deployment/api", "--to", "default/pod/api", "--port", "80")
	_, errOut, code = run(t, "netpol", "check", "-f", tmp, "--from", "default/web", "--to", "default/api", "--port", "80")
	if code != 1 || !strings.Contains(errOut, "no pod or workload of that name") {
		t.Errorf("unknown pod: exit %d: %s", code, errOut)
	}
}

func TestNetpolMatrixFormats(t *testing.T) {
	dir := filepath.Join(netpolExamples, "seed-default-deny-then-allow")
	out := mustRun(t, "netpol", "matrix", "-f", dir, "--port", "8080", "-o", "json")
	var m struct {
		Port      *int       `json:"port"`
		Protocol  *string    `json:"protocol"`
		Endpoints []string   `json:"endpoints"`
		Allowed   [][]bool   `json:"allowed"`
		Ports     [][]string `json:"ports"`
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("matrix json %q: %v", out, err)
	}
	idx := map[string]int{}
	for i, e := range m.Endpoints {
		idx[e] = i
	}
	if m.Port == nil || *m.Port != 8080 || *m.Protocol != "TCP" || len(m.Allowed) != 5 || m.Ports != nil {
		t.Fatalf("matrix json header: %s", out)
	}
	if !m.Allowed[idx["default/frontend"]][idx["default/api"]] || m.Allowed[idx["default/batch"]][idx["default/api"]] || m.Allowed[idx["production/frontend"]][idx["production/api"]] {
		t.Errorf("matrix cells wrong: %s", out)
	}
	out = mustRun(t, "netpol", "matrix", "-f", dir, "-o", "json")
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatal(err)
	}
	if m.Port != nil || m.Ports[idx["default/frontend"]][idx["default/api"]] != "TCP:8080" || m.Ports[idx["default/batch"]][idx["default/frontend"]] != "all" {
		t.Errorf("every-port matrix: %v", m.Ports)
	}
	out = mustRun(t, "netpol", "matrix", "-f", dir, "-o", "csv")
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || len(rows) != 1+25 || strings.Join(rows[0], ",") != "from,to,allowed,ports" {
		t.Fatalf("csv: %v\n%s", err, out)
	}
	out = mustRun(t, "netpol", "matrix", "-f", dir, "-o", "dot", "--namespace", "default")
	if !strings.HasPrefix(out, "digraph netpol {") || !strings.Contains(out, `"default/frontend" -> "default/api" [label="TCP:8080"];`) || strings.Contains(out, "production/") {
		t.Errorf("dot:\n%s", out)
	}
	out = mustRun(t, "netpol", "matrix", "-f", dir, "--port", "8080")
	if !strings.Contains(out, "FROM \\ TO") || !strings.Contains(out, "✓") || !strings.Contains(out, "✗") {
		t.Errorf("table:\n%s", out)
	}
	out = mustRun(t, "netpol", "matrix", "-f", dir, "--port", "8080", "--ip", "203.0.113.9", "-o", "csv")
	if !strings.Contains(out, "203.0.113.9,default/api,false,none") || !strings.Contains(out, "203.0.113.9,default/frontend,true,TCP:8080") {
		t.Errorf("--ip rows:\n%s", out)
	}
}

func TestNetpolLint(t *testing.T) {
	out, _, code := run(t, "netpol", "lint", "-f", filepath.Join(netpolExamples, "seed-microsegmentation"))
	if code != 1 || !strings.Contains(out, "error [dns-blocked]") || !strings.Contains(out, "warning [peers-ored]") {
		t.Errorf("lint the seed: exit %d\n%s", code, out)
	}
	out, _, code = run(t, "netpol", "lint", "-f", filepath.Join(netpolExamples, "seed-microsegmentation"), "-o", "json")
	var rep struct {
		Findings []struct {
			Severity string `json:"severity"`
			Rule     string `json:"rule"`
			Message  string `json:"message"`
		} `json:"findings"`
		Errors int  `json:"errors"`
		Pass   bool `json:"pass"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 1 || rep.Pass || rep.Errors == 0 {
		t.Errorf("lint json: exit %d, %v: %s", code, err, out)
	}
	// Generated policies with the services' pods lint clean of errors;
	// --fail-on warning also fails on warnings.
	dir := t.TempDir()
	pods := filepath.Join(dir, "pods.yaml")
	if err := os.WriteFile(pods, []byte(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: frontend}
spec:
  selector: {matchLabels: {app: frontend}}
  template:
    metadata: {labels: {app: frontend}}
    spec: {containers: [{name: f, image: f, ports: [{containerPort: 8080}]}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec: {containers: [{name: a, image: a, ports: [{containerPort: 8080}]}]}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	generated := filepath.Join(netpolExamples, "service-graph", "policies.yaml")
	out, _, code = run(t, "netpol", "lint", "-f", pods, "-f", generated)
	if code != 0 || strings.Contains(out, "error [") {
		t.Errorf("lint generated policies: exit %d\n%s", code, out)
	}
	_, _, code = run(t, "netpol", "lint", "-f", pods, "-f", generated, "--fail-on", "warning")
	if code != 1 {
		t.Errorf("--fail-on warning: exit %d, want 1 (the stand-in kube-system has no default deny)", code)
	}
	// Invalid input is reported as findings, with file and document.
	out, _, code = runStdin(t, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 90, endPort: 80}]\n", "netpol", "lint", "-f", "-")
	if code != 1 || !strings.Contains(out, "<stdin>:7 (document 1): error [invalid-object] NetworkPolicy default/p spec.ingress[0].ports[0].endPort") {
		t.Errorf("lint invalid stdin: exit %d\n%s", code, out)
	}
}

// TestNetpolGenerate: generate's output is what kubectl and the mesh's
// policy engine accept, and it allows exactly the graph's edges.
func TestNetpolGenerate(t *testing.T) {
	dir := t.TempDir()
	graph := filepath.Join(netpolExamples, "service-graph", "services.yaml")
	out := mustRun(t, "netpol", "generate", "--graph", graph)
	policies := filepath.Join(dir, "policies.yaml")
	if err := os.WriteFile(policies, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	// The policy engine accepts the AuthorizationPolicies.
	vout := mustRun(t, "policy", "validate", policies)
	if !strings.HasPrefix(vout, "valid: 5 AuthorizationPolicies") {
		t.Errorf("policy validate: %s", vout)
	}
	// Pods for the services; then the generated NetworkPolicies allow
	// exactly the edges.
	var pods strings.Builder
	for _, svc := range []string{"frontend", "api", "auth", "database", "cache"} {
		pods.WriteString("---\napiVersion: v1\nkind: Pod\nmetadata: {name: " + svc + ", labels: {app: " + svc + "}}\nspec: {containers: [{name: c, image: c}]}\n")
	}
	podsFile := filepath.Join(dir, "pods.yaml")
	if err := os.WriteFile(podsFile, []byte(pods.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		from, to, port string
		want           bool
	}{
		{"frontend", "api", "8080", true}, {"frontend", "auth", "9000", true}, {"api", "database", "5432", true},
		{"api", "cache", "6379", true}, {"api", "auth", "9000", true}, {"auth", "database", "5432", true},
		{"frontend", "database", "5432", false}, {"api", "frontend", "8080", false}, {"frontend", "api", "9000", false},
		{"cache", "database", "5432", false},
	} {
		v := netpolCheckJSON(t, "-f", podsFile, "-f", policies, "--from", "default/"+tc.from, "--to", "default/"+tc.to, "--port", tc.port)
		if v.Allowed != tc.want {
			t.Errorf("%s → %s:%s allowed=%v, want %v (%s)", tc.from, tc.to, tc.port, v.Allowed, tc.want, v.Reason)
		}
	}
	// JSON output is a List kubectl reads.
	out = mustRun(t, "netpol", "generate", "--graph", graph, "-o", "json", "--no-istio")
	var list struct {
		Kind  string `json:"kind"`
		Items []struct {
			Kind string `json:"kind"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || list.Kind != "List" || len(list.Items) != 14 {
		t.Errorf("json: %v, %d items", err, len(list.Items))
	}
	// From the proxy audit log: the observed graph, then policies.
	audit := filepath.Join(netpolExamples, "service-graph", "audit.log")
	gout, errOut, code := run(t, "netpol", "generate", "--from-audit", audit, "--print-graph")
	if code != 0 || !strings.Contains(gout, "from: frontend") || !strings.Contains(gout, "- 8080/TCP") || !strings.Contains(errOut, "3 edges") {
		t.Errorf("--print-graph: exit %d\n%s\n%s", code, gout, errOut)
	}
	graph2 := filepath.Join(dir, "observed.yaml")
	if err := os.WriteFile(graph2, []byte(gout), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "netpol", "generate", "--graph", graph2)
	aout := mustRun(t, "netpol", "generate", "--from-audit", audit, "-f", podsFile)
	if !strings.Contains(aout, "- example.org/ns/default/sa/frontend\n") {
		t.Errorf("audit policies lack the observed principal:\n%s", aout)
	}
}

func TestNetpolDiffAndUsage(t *testing.T) {
	dir := filepath.Join(netpolExamples, "seed-default-deny-then-allow")
	proposed := t.TempDir()
	if err := os.WriteFile(filepath.Join(proposed, "allow.yaml"), []byte(`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-frontend-to-api, namespace: production}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: frontend}}}], ports: [{port: 8080}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-frontend-egress, namespace: production}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 8080}]}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, code := run(t, "netpol", "diff", "-f", dir, "--against", dir, "--against", proposed, "--exit-code")
	if code != 1 || !strings.Contains(out, "production/frontend (Deployment)  production/api (Deployment)  +TCP:8080") || !strings.Contains(out, "1 pairs gain access, 0 lose access") {
		t.Errorf("diff: exit %d\n%s", code, out)
	}
	out = mustRun(t, "netpol", "diff", "-f", dir, "--against", dir, "-o", "json")
	var rep struct {
		Changes   []any `json:"changes"`
		Unchanged int   `json:"unchanged"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Changes) != 0 || rep.Unchanged != 25 {
		t.Errorf("no-op diff: %v %s", err, out)
	}
	// Usage errors exit 2; bad input exits 1 with file and document.
	for _, args := range [][]string{
		{"netpol", "check", "--from", "a", "--to", "b", "--port", "80"},
		{"netpol", "check", "-f", dir, "--from", "a", "--to", "b", "--port", "0"},
		{"netpol", "check", "-f", dir, "--from", "a", "--to", "b", "--port", "80", "--protocol", "ICMP"},
		{"netpol", "matrix", "-f", dir, "-o", "xml"},
		{"netpol", "lint", "-f", dir, "--fail-on", "info"},
		{"netpol", "generate"},
		{"netpol", "generate", "--graph", "g.yaml", "--from-audit", "a.log"},
		{"netpol", "diff", "-f", dir},
		{"netpol", "matrix", "-f", dir, "extra"},
	} {
		_, errOut, code := run(t, args...)
		if code != 2 || !strings.Contains(errOut, "Run 'trustmesh netpol") {
			t.Errorf("%v: exit %d, want 2: %s", args, code, errOut)
		}
	}
	_, errOut, code := runStdin(t, "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\nnot: [valid\n", "netpol", "matrix", "-f", "-")
	if code != 1 || !strings.Contains(errOut, "<stdin>:5 (document 2): invalid YAML") {
		t.Errorf("bad stdin: exit %d: %s", code, errOut)
	}
	// Unknown fields are warnings: reported, and the command goes on.
	out, errOut, code = runStdin(t, "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: a, image: a}], hostNetwrk: true}\n", "netpol", "matrix", "-f", "-", "-o", "csv")
	if code != 0 || !strings.Contains(errOut, "warning: Pod default/a: spec.hostNetwrk: unknown field") || !strings.Contains(out, "default/a,default/a,true,all") {
		t.Errorf("unknown field: exit %d\n%s\n%s", code, out, errOut)
	}
}
