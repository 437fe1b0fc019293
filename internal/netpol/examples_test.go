package netpol

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite examples/netpol/service-graph/policies.yaml")

const examples = "../../examples/netpol"

func loadExample(t *testing.T, dir string) *Analyzer {
	t.Helper()
	c := Load(LoadOptions{}, filepath.Join(examples, dir))
	for _, p := range c.Problems {
		t.Errorf("%s: problem: %s", dir, p)
	}
	if t.Failed() {
		t.FailNow()
	}
	return NewAnalyzer(c)
}

// conn is one connection and what each side decides.
type conn struct {
	from, to        string
	proto           Protocol
	port            int32
	egress, ingress bool   // each side's decision
	allowedBy       string // "ns/name rule" allowing the deciding side(s), checked when set
}

func checkConns(t *testing.T, a *Analyzer, conns []conn) {
	t.Helper()
	for _, c := range conns {
		from, err := a.Resolve(c.from)
		if err != nil {
			t.Fatal(err)
		}
		to, err := a.Resolve(c.to)
		if err != nil {
			t.Fatal(err)
		}
		v := a.Check(from, to, c.proto, c.port)
		if v.Egress.Allowed != c.egress || v.Ingress.Allowed != c.ingress || v.Allowed != (c.egress && c.ingress) {
			t.Errorf("%s → %s %s %d: egress %v ingress %v, want egress %v ingress %v\n  %s", c.from, c.to, c.proto, c.port,
				v.Egress.Allowed, v.Ingress.Allowed, c.egress, c.ingress, v.Reason)
		}
		if c.allowedBy != "" {
			var by []string
			for _, r := range append(v.Egress.AllowedBy, v.Ingress.AllowedBy...) {
				by = append(by, r.Policy+" "+string(rune('0'+r.Rule)))
			}
			if !slices.Contains(by, c.allowedBy) {
				t.Errorf("%s → %s %s %d: allowed by %v, want %q", c.from, c.to, c.proto, c.port, by, c.allowedBy)
			}
		}
	}
}

// onlyAllowed checks the every-port matrix: between different pods,
// exactly these cells allow something, and they allow exactly these ports.
func onlyAllowed(t *testing.T, a *Analyzer, want map[[2]string]string) {
	t.Helper()
	m := a.Matrix(MatrixOptions{})
	for i, f := range m.Endpoints {
		for j, to := range m.Endpoints {
			if i == j {
				if !m.Ports(i, j).IsAll() {
					t.Errorf("%s → itself: %s, want all (a pod cannot block itself)", f, m.Ports(i, j))
				}
				continue
			}
			got := m.Ports(i, j).String()
			w, ok := want[[2]string{f.String(), to.String()}]
			if !ok {
				w = "none"
			}
			if got != w {
				t.Errorf("%s → %s: %s, want %s", f, to, got, w)
			}
		}
	}
}

func lintRules(a *Analyzer) map[string][]Finding {
	out := map[string][]Finding{}
	for _, f := range a.Lint(LintOptions{}) {
		out[f.Rule] = append(out[f.Rule], f)
	}
	return out
}

func wantFinding(t *testing.T, rules map[string][]Finding, rule string, sev Severity, contains string) {
	t.Helper()
	for _, f := range rules[rule] {
		if f.Severity == sev && strings.Contains(f.String(), contains) {
			return
		}
	}
	t.Errorf("no %s %s finding containing %q; have %v", sev, rule, contains, rules[rule])
}

// The seed "How to Implement Zero Trust Networking": its default deny
// isolates every pod of default for egress too, and only the api gets
// egress rules, so the frontend and gateway cannot reach the api they are
// allowed into, and nothing may reach the database.
func TestExampleSeedZeroTrustAPI(t *testing.T) {
	a := loadExample(t, "seed-zero-trust-api")
	const (
		fe, gw, legacy = "default/frontend-7d9f8b6c5-x2k4p", "default/gateway-5c8d7f9b4-m7q2z", "default/legacy-frontend"
		api, db, dns   = "default/api-6b7c9d8f5-q4w8e", "default/database-0", "kube-system/coredns-76f75df574-abcde"
	)
	checkConns(t, a, []conn{
		{fe, api, TCP, 8443, false, true, "default/zero-trust-api 0"},
		{gw, api, TCP, 8443, false, true, "default/zero-trust-api 0"},
		{legacy, api, TCP, 8443, false, false, ""}, // no zero-trust label
		{fe, api, TCP, 9090, false, false, ""},
		{api, db, TCP, 5432, true, false, "default/zero-trust-api 0"},
		{api, dns, UDP, 53, true, true, "default/zero-trust-api 1"},
		{api, dns, TCP, 53, false, true, ""},
		{fe, dns, UDP, 53, false, true, ""},
		{"203.0.113.7", api, TCP, 8443, true, false, ""}, // selectors match pods only
		{"192.168.1.12", api, TCP, 9090, true, true, ""}, // the api's own node
		{"10.244.1.10", api, TCP, 8443, false, true, ""}, // the frontend's IP is the frontend
		{api, "10.244.2.22", TCP, 5432, true, false, ""}, // and the database's
		{dns, api, TCP, 8443, true, false, ""},           // kube-dns is not a frontend
		{api, "kube-system/coredns-76f75df574-abcde", SCTP, 53, false, true, ""},
	})
	onlyAllowed(t, a, map[[2]string]string{{api, dns}: "UDP:53"})
	rules := lintRules(a)
	wantFinding(t, rules, RuleDNSBlocked, SeverityError, "UDP 53")
	wantFinding(t, rules, RuleDNSBlocked, SeverityWarning, "TCP 53")
	if len(rules[RuleNoDefaultDenyIngress]) != 1 || rules[RuleNoDefaultDenyIngress][0].Namespace != "kube-system" {
		t.Errorf("default has its default deny; only kube-system lacks one: %v", rules[RuleNoDefaultDenyIngress])
	}
}

// The seed "Zero Trust Networking: A Practical Implementation Guide":
// workloads from a repository stand for their pods.
func TestExampleSeedAPIToDatabase(t *testing.T) {
	a := loadExample(t, "seed-api-to-database")
	kinds := map[string]string{}
	for _, p := range a.pods {
		kinds[p.ID()] = p.Kind
	}
	if kinds["production/api-service"] != "Deployment" || kinds["production/postgres"] != "StatefulSet" || kinds["production/report"] != "CronJob" {
		t.Errorf("workloads: %v", kinds)
	}
	checkConns(t, a, []conn{
		{"production/api-service", "production/postgres", TCP, 5432, false, true, "production/api-to-database 0"},
		{"production/report", "production/postgres", TCP, 5432, false, false, ""},
		{"production/api-service", "production/postgres", TCP, 5433, false, false, ""},
		{"production/api-service", "production/postgres", UDP, 5432, false, false, ""},
	})
	onlyAllowed(t, a, nil)
}

// The seed "How to Configure Zero Trust Architecture": two peers where one
// was meant, and DNS to a namespace label nobody set.
func TestExampleSeedMicrosegmentation(t *testing.T) {
	a := loadExample(t, "seed-microsegmentation")
	checkConns(t, a, []conn{
		// The ORed namespaceSelector lets web in, not only the api.
		{"production/web", "production/database", TCP, 5432, false, true, "production/api-to-database 0"},
		{"production/api", "production/database", TCP, 5432, false, true, "production/api-to-database 0"},
		{"production/api", "10.20.30.40", TCP, 443, true, true, "production/api-egress 1"},
		{"production/api", "8.8.8.8", TCP, 443, false, true, ""},
		{"production/api", "10.20.30.40", TCP, 80, false, true, ""},
		{"production/api", "kube-system/coredns", UDP, 53, false, true, ""},
	})
	onlyAllowed(t, a, nil)
	rules := lintRules(a)
	wantFinding(t, rules, RulePeersORed, SeverityWarning, "restricts nothing")
	wantFinding(t, rules, RulePeerMatchesNothing, SeverityWarning, "name=kube-system")
	wantFinding(t, rules, RuleDNSBlocked, SeverityError, "production/api-egress")
}

// The seed "Zero trust networking in Kubernetes": the allow policy has no
// namespace, so it lands in default, away from the production deny.
func TestExampleSeedDefaultDenyThenAllow(t *testing.T) {
	a := loadExample(t, "seed-default-deny-then-allow")
	checkConns(t, a, []conn{
		{"production/frontend", "production/api", TCP, 8080, false, false, ""},
		{"default/frontend", "default/api", TCP, 8080, true, true, "default/allow-frontend-to-api 0"},
		{"default/batch", "default/api", TCP, 8080, true, false, ""},
		{"default/frontend", "default/api", TCP, 9090, true, false, ""},
		{"default/frontend", "default/api", UDP, 8080, true, false, ""},     // no protocol means TCP
		{"production/frontend", "default/api", TCP, 8080, false, false, ""}, // a podSelector peer is its own namespace only
		{"default/api", "default/frontend", TCP, 8080, true, true, ""},
	})
	port, err := a.ResolvePort(a.mustResolve(t, "default/api"), TCP, "http")
	if err != nil || port != 8080 {
		t.Errorf("named port http on default/api: %d, %v", port, err)
	}
	rules := lintRules(a)
	wantFinding(t, rules, RulePortWithoutProtocol, SeverityInfo, "allow-frontend-to-api")
	wantFinding(t, rules, RuleNoDefaultDenyIngress, SeverityWarning, "2 of 3 pods are open")
}

// The seed "Zero Trust Security Model": same shape, payments.
func TestExampleSeedPaymentPostgres(t *testing.T) {
	a := loadExample(t, "seed-payment-postgres")
	checkConns(t, a, []conn{
		{"production/payment-service", "production/postgres", TCP, 5432, false, false, ""},
		{"default/payment-service", "default/postgres", TCP, 5432, true, true, "default/allow-payment-to-db 0"},
		{"default/reporting", "default/postgres", TCP, 5432, true, false, ""},
		{"default/payment-service", "default/postgres", TCP, 5433, true, false, ""},
	})
	var all map[[2]string]string = map[[2]string]string{
		{"default/payment-service", "default/postgres"}: "TCP:5432",
	}
	// In default, everything but postgres is open.
	for _, f := range []string{"default/payment-service", "default/postgres", "default/reporting"} {
		for _, to := range []string{"default/payment-service", "default/reporting"} {
			if f != to {
				all[[2]string{f, to}] = "all"
			}
		}
	}
	onlyAllowed(t, a, all)
}

// The service graph example: policies.yaml is what generate makes of
// services.yaml (run with -update to rewrite it), and it allows exactly
// the graph's edges.
func TestExampleServiceGraph(t *testing.T) {
	dir := filepath.Join(examples, "service-graph")
	data, err := os.ReadFile(filepath.Join(dir, "services.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	g, err := ParseGraph(data)
	if err != nil {
		t.Fatal(err)
	}
	gen, err := Generate(g, GenerateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := gen.WriteYAML(&buf, GeneratedHeader("service graph services.yaml")); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join(dir, "policies.yaml")
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want, buf.Bytes()) {
		t.Errorf("%s is stale: run go test ./internal/netpol -run TestExampleServiceGraph -update", golden)
	}
	checkGenerated(t, g, want)
	checkIstio(t, g, want, []int32{5432, 6379, 8080, 9000})

	f, err := os.Open(filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ag, sum, err := GraphFromAudit(f, nil)
	if err != nil {
		t.Fatal(err)
	}
	var edges []string
	for _, e := range ag.Edges {
		edges = append(edges, e.String())
	}
	wantEdges := []string{"api -> auth : 9000/TCP", "api -> database : 5432/TCP", "frontend -> api : 8080/TCP"}
	if !slices.Equal(edges, wantEdges) || sum.Denied != 1 {
		t.Errorf("audit edges %v (denied %d), want %v", edges, sum.Denied, wantEdges)
	}
}

func (a *Analyzer) mustResolve(t *testing.T, ref string) Endpoint {
	t.Helper()
	e, err := a.Resolve(ref)
	if err != nil {
		t.Fatal(err)
	}
	return e
}
