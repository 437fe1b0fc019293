package policy

import (
	"context"
	"strings"
	"testing"
)

var apiLabels = map[string]string{"app": "api"}

func TestEvaluationOrder(t *testing.T) {
	allowFrontend := policyDoc("allow-frontend", "default", "ALLOW", "api", `
- from:
  - source:
      principals: ["cluster.local/ns/default/sa/frontend"]`)
	denyAdminPath := policyDoc("deny-admin", "default", "DENY", "api", `
- to:
  - operation:
      paths: ["/admin*"]`)
	tests := []struct {
		name       string
		docs       []string
		r          req
		allow      bool
		action     Action
		policy     string
		rule       int
		reasonPart string
	}{
		{name: "no policy: allowed (Istio default)", r: req{principal: api, labels: apiLabels},
			allow: true, rule: -1, reasonPart: "no AuthorizationPolicy applies"},
		{name: "ALLOW matches", docs: []string{allowFrontend}, r: req{principal: frontend, labels: apiLabels},
			allow: true, action: ActionAllow, policy: "default/allow-frontend", rule: 0},
		{name: "ALLOW applies but does not match: denied", docs: []string{allowFrontend}, r: req{principal: api, labels: apiLabels},
			allow: false, rule: -1, reasonPart: "no ALLOW policy matched; 1 policy applied: default/allow-frontend (rule 0: principal mismatch)"},
		{name: "DENY before ALLOW", docs: []string{allowFrontend, denyAdminPath}, r: req{principal: frontend, labels: apiLabels, path: "/admin/users"},
			allow: false, action: ActionDeny, policy: "default/deny-admin", rule: 0},
		{name: "DENY only: others allowed, no ALLOW policy applies", docs: []string{denyAdminPath}, r: req{principal: api, labels: apiLabels, path: "/public"},
			allow: true, rule: -1, reasonPart: "no ALLOW policy applies"},
		{name: "spec: {} allows nothing", docs: []string{"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: default}\nspec: {}"},
			r: req{principal: frontend, labels: apiLabels}, allow: false, rule: -1, reasonPart: "default/deny-all (no rules: allows nothing)"},
		{name: "rules: [{}] allows all", docs: []string{"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all, namespace: default}\nspec:\n  rules:\n  - {}"},
			r: req{labels: apiLabels}, allow: true, action: ActionAllow, policy: "default/allow-all", rule: 0},
		{name: "DENY with no rules denies nothing", docs: []string{policyDoc("d", "default", "DENY", "", "")},
			r: req{principal: frontend, labels: apiLabels}, allow: true, rule: -1},
		{name: "DENY rules: [{}] denies everything", docs: []string{policyDoc("d", "default", "DENY", "", "- {}"), allowFrontend},
			r: req{principal: frontend, labels: apiLabels}, allow: false, action: ActionDeny, policy: "default/d", rule: 0},
		{name: "AUDIT does not change the decision", docs: []string{policyDoc("audit", "default", "AUDIT", "", "- {}"), allowFrontend},
			r: req{principal: api, labels: apiLabels}, allow: false, rule: -1},
		{name: "AUDIT alone is not an ALLOW policy", docs: []string{policyDoc("audit", "default", "AUDIT", "", "- {}")},
			r: req{principal: api, labels: apiLabels}, allow: true, rule: -1},
		{name: "the first matching rule is reported", docs: []string{policyDoc("two", "default", "ALLOW", "api", `
- to:
  - operation: {methods: [POST]}
- from:
  - source: {principals: ["*"]}
- {}`)}, r: req{principal: frontend, labels: apiLabels}, allow: true, action: ActionAllow, policy: "default/two", rule: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := compileYAML(t, Options{}, tc.docs...)
			if len(tc.docs) == 0 {
				s = compileYAML(t, Options{}, "")
			}
			d := decide(t, s, tc.r)
			if d.Allow != tc.allow || d.Action != tc.action || d.Policy != tc.policy || d.Rule != tc.rule {
				t.Fatalf("got allow=%v action=%v policy=%q rule=%d (%s); want allow=%v action=%v policy=%q rule=%d",
					d.Allow, d.Action, d.Policy, d.Rule, d.Reason, tc.allow, tc.action, tc.policy, tc.rule)
			}
			if !strings.Contains(d.Reason, tc.reasonPart) {
				t.Fatalf("reason %q does not contain %q", d.Reason, tc.reasonPart)
			}
			// Evaluate and Explain must agree on the decision.
			fast := s.Evaluate(context.Background(), tc.r.input())
			if fast.Allow != d.Allow || fast.Policy != d.Policy || fast.Rule != d.Rule {
				t.Fatalf("Evaluate %+v disagrees with Explain %+v", fast, d)
			}
		})
	}
}

func TestAuditAndDryRunAreReported(t *testing.T) {
	s := compileYAML(t, Options{},
		policyDoc("audit-admin", "default", "AUDIT", "", `
- to:
  - operation: {paths: ["/admin*"]}`),
		`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: would-deny
  namespace: default
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin*"]}`,
		`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: would-allow-nothing
  namespace: default
  annotations: {istio.io/dry-run: "true"}
spec: {}`)
	d := decide(t, s, req{principal: frontend, labels: apiLabels, path: "/admin/x"})
	if !d.Allow {
		t.Fatalf("dry-run policies must not be enforced: %+v", d)
	}
	if len(d.Audit) != 1 || d.Audit[0] != "default/audit-admin" {
		t.Fatalf("audit = %v", d.Audit)
	}
	if len(d.DryRun) != 2 {
		t.Fatalf("dry_run = %+v", d.DryRun)
	}
	byName := map[string]DryRunResult{}
	for _, r := range d.DryRun {
		byName[r.Policy] = r
	}
	if r := byName["default/would-deny"]; !r.Matched || r.Action != "DENY" || r.Rule == nil || *r.Rule != 0 {
		t.Fatalf("would-deny: %+v", r)
	}
	if r := byName["default/would-allow-nothing"]; r.Matched {
		t.Fatalf("would-allow-nothing matched: %+v", r)
	}
	// A path the audit policy does not cover records nothing.
	d = decide(t, s, req{principal: frontend, labels: apiLabels, path: "/public"})
	if len(d.Audit) != 0 || byNameMatched(d.DryRun, "default/would-deny") {
		t.Fatalf("unexpected audit/dry-run: %+v", d)
	}
}

func byNameMatched(rs []DryRunResult, name string) bool {
	for _, r := range rs {
		if r.Policy == name {
			return r.Matched
		}
	}
	return false
}

func TestRuleMatching(t *testing.T) {
	type c struct {
		name  string
		r     req
		allow bool
	}
	tests := []struct {
		name  string
		rules string
		cases []c
	}{
		{"any from, any to, all when", `
- from:
  - source: {principals: ["cluster.local/ns/default/sa/frontend"]}
  - source: {namespaces: ["prod"]}
  to:
  - operation: {methods: [GET], paths: ["/info*"]}
  - operation: {methods: [POST], paths: ["/data"]}
  when:
  - key: request.headers[X-Env]
    values: [staging, prod*]
  - key: source.ip
    values: ["10.0.0.0/8"]`, []c{
			{"frontend GET /info", req{principal: frontend, path: "/info/x", headers: map[string]string{"x-env": "production"}, srcIP: "10.1.2.3"}, true},
			{"prod namespace POST /data", req{principal: admin, method: "POST", path: "/data", headers: map[string]string{"X-Env": "staging"}, srcIP: "10.0.0.1"}, true},
			{"POST /info does not match either operation", req{principal: frontend, method: "POST", path: "/info", headers: map[string]string{"X-Env": "staging"}, srcIP: "10.0.0.1"}, false},
			{"a when fails", req{principal: frontend, path: "/info", headers: map[string]string{"X-Env": "dev"}, srcIP: "10.0.0.1"}, false},
			{"the other when fails", req{principal: frontend, path: "/info", headers: map[string]string{"X-Env": "staging"}, srcIP: "192.168.0.1"}, false},
			{"no source matches", req{principal: api, path: "/info", headers: map[string]string{"X-Env": "staging"}, srcIP: "10.0.0.1"}, false},
		}},
		{"fields in one source are ANDed, not* negates", `
- from:
  - source:
      namespaces: ["default"]
      notPrincipals: ["*/sa/api"]`, []c{
			{"frontend", req{principal: frontend}, true},
			{"api excluded", req{principal: api}, false},
			{"other namespace", req{principal: admin}, false},
		}},
		{"notPrincipals matches a plaintext caller", `
- from:
  - source: {notPrincipals: ["*"]}`, []c{
			{"plaintext", req{}, true},
			{"mTLS", req{principal: frontend}, false},
		}},
		{"presence needs a value", `
- from:
  - source: {principals: ["*"]}`, []c{
			{"plaintext", req{}, false},
			{"mTLS", req{principal: frontend}, true},
		}},
		{"string matching forms", `
- from:
  - source: {principals: ["cluster.local/ns/default/*"]}
  to:
  - operation: {paths: ["*.html", "/exact", "/pre*"]}`, []c{
			{"suffix", req{principal: frontend, path: "/x/index.html"}, true},
			{"exact", req{principal: frontend, path: "/exact"}, true},
			{"exact is not prefix", req{principal: frontend, path: "/exactly"}, false},
			{"prefix matches itself", req{principal: frontend, path: "/pre"}, true},
			{"none", req{principal: frontend, path: "/other"}, false},
			{"principal prefix from another namespace", req{principal: admin, path: "/exact"}, false},
		}},
		{"a star inside a value is literal", `
- to:
  - operation: {paths: ["/a*b"]}`, []c{
			{"literal", req{path: "/a*b"}, true},
			{"not a glob", req{path: "/axb"}, false},
		}},
		{"hosts are case-insensitive and include the port as sent", `
- to:
  - operation: {hosts: ["API.example.com", "*.internal"]}`, []c{
			{"exact other case", req{host: "api.EXAMPLE.com"}, true},
			{"suffix", req{host: "db.Internal"}, true},
			{"with a port it is the same host", req{host: "api.example.com:8443"}, true},
			{"with a trailing dot too", req{host: "api.example.com."}, true},
			{"a port does not make another host match", req{host: "evil.com:443"}, false},
			{"other", req{host: "evil.com"}, false},
		}},
		{"ports and notPorts", `
- to:
  - operation: {ports: ["8080", "9090"], notMethods: [DELETE]}`, []c{
			{"8080 GET", req{port: 8080}, true},
			{"9090 DELETE", req{port: 9090, method: "DELETE"}, false},
			{"80", req{port: 80}, false},
		}},
		{"path templates", `
- to:
  - operation: {paths: ["/users/{*}/profile", "/files/{**}"]}`, []c{
			{"one segment", req{path: "/users/alice/profile"}, true},
			{"two segments do not match {*}", req{path: "/users/a/b/profile"}, false},
			{"empty segment does not match {*}", req{path: "/users//profile"}, false}, // normalized to /users/profile
			{"any depth", req{path: "/files/a/b/c.txt"}, true},
			{"zero after the slash", req{path: "/files/"}, true},
			{"not without the slash", req{path: "/files"}, false},
		}},
		{"ipBlocks and remoteIpBlocks", `
- from:
  - source: {ipBlocks: ["10.0.0.0/8"], notIpBlocks: ["10.9.0.0/16"], remoteIpBlocks: ["203.0.113.7"]}`, []c{
			{"in", req{srcIP: "10.1.1.1", remoteIP: "203.0.113.7"}, true},
			{"excluded", req{srcIP: "10.9.1.1", remoteIP: "203.0.113.7"}, false},
			{"remote defaults to source", req{srcIP: "10.1.1.1"}, false},
			{"ipv4-mapped ipv6", req{srcIP: "::ffff:10.1.1.1", remoteIP: "::ffff:203.0.113.7"}, true},
		}},
		{"request principals and JWT conditions", `
- from:
  - source: {requestPrincipals: ["https://idp.example.com/*"]}
  when:
  - key: request.auth.audiences
    values: [api]
  - key: request.auth.presenter
    values: [web-app]
  - key: request.auth.claims[realm_access][roles]
    values: [admin]
  - key: request.auth.claims[email]
    notValues: ["*@evil.com"]`, []c{
			{"all good", req{auth: &Auth{Principal: "https://idp.example.com/alice", Audiences: []string{"other", "api"}, Presenter: "web-app",
				Claims: map[string]any{"realm_access": map[string]any{"roles": []any{"user", "admin"}}, "email": "alice@example.com"}}}, true},
			{"nested claim missing", req{auth: &Auth{Principal: "https://idp.example.com/alice", Audiences: []string{"api"}, Presenter: "web-app",
				Claims: map[string]any{"email": "alice@example.com"}}}, false},
			{"notValues", req{auth: &Auth{Principal: "https://idp.example.com/mallory", Audiences: []string{"api"}, Presenter: "web-app",
				Claims: map[string]any{"realm_access": map[string]any{"roles": []any{"admin"}}, "email": "m@evil.com"}}}, false},
			{"no JWT", req{}, false},
			{"a non-string claim never matches", req{auth: &Auth{Principal: "https://idp.example.com/alice", Audiences: []string{"api"}, Presenter: "web-app",
				Claims: map[string]any{"realm_access": map[string]any{"roles": true}, "email": "a@example.com"}}}, false},
		}},
		{"connection and destination conditions", `
- when:
  - key: destination.port
    values: ["8443"]
  - key: destination.ip
    values: ["127.0.0.0/8"]
  - key: connection.sni
    values: ["*.example.org"]
  - key: source.namespace
    values: ["default"]
  - key: source.principal
    notValues: ["cluster.local/ns/default/sa/api"]
  - key: remote.ip
    values: ["192.0.2.1"]`, []c{
			{"all", req{principal: frontend, port: 8443, dstIP: "127.0.0.1", sni: "api.example.org", srcIP: "192.0.2.1"}, true},
			{"port", req{principal: frontend, port: 8080, dstIP: "127.0.0.1", sni: "api.example.org", srcIP: "192.0.2.1"}, false},
			{"principal excluded", req{principal: api, port: 8443, dstIP: "127.0.0.1", sni: "api.example.org", srcIP: "192.0.2.1"}, false},
			{"sni", req{principal: frontend, port: 8443, dstIP: "127.0.0.1", sni: "evil.com", srcIP: "192.0.2.1"}, false},
		}},
		{"repeated headers are joined with commas, as Envoy does", `
- when:
  - key: request.headers[x-role]
    values: ["a,b"]`, []c{
			{"joined", req{headers: map[string]string{"X-Role": "a\x00b"}}, true},
			{"single", req{headers: map[string]string{"X-Role": "a"}}, false},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := compileYAML(t, Options{}, policyDoc("p", "default", "ALLOW", "", tc.rules))
			for _, cs := range tc.cases {
				d := decide(t, s, cs.r)
				if d.Allow != cs.allow {
					t.Errorf("%s: allow=%v, want %v (%s)", cs.name, d.Allow, cs.allow, d.Reason)
				}
			}
		})
	}
}

func TestTrustDomainAliasing(t *testing.T) {
	rules := `
- from:
  - source: {principals: ["cluster.local/ns/default/sa/frontend", "old.example/ns/default/sa/batch", "partner.example/ns/x/sa/y", "*/ns/any/sa/z"]}`
	s := compileYAML(t, Options{TrustDomain: "example.org", TrustDomainAliases: []string{"old.example"}}, policyDoc("p", "default", "", "", rules))
	for _, tc := range []struct {
		principal string
		allow     bool
	}{
		{"spiffe://example.org/ns/default/sa/frontend", true},    // cluster.local means the local domain
		{"spiffe://old.example/ns/default/sa/frontend", true},    // … and its aliases
		{"spiffe://cluster.local/ns/default/sa/frontend", false}, // but not cluster.local itself once the domain is example.org
		{"spiffe://example.org/ns/default/sa/batch", true},       // an alias means the local domain too
		{"spiffe://partner.example/ns/x/sa/y", true},             // foreign domains are kept as written
		{"spiffe://example.org/ns/x/sa/y", false},
		{"spiffe://anything.example/ns/any/sa/z", true}, // a leading * enforces no domain
		{"spiffe://evil.example/ns/default/sa/frontend", false},
	} {
		d := decide(t, s, req{principal: tc.principal})
		if d.Allow != tc.allow {
			t.Errorf("%s: allow=%v, want %v (%s)", tc.principal, d.Allow, tc.allow, d.Reason)
		}
	}
	// serviceAccounts stand for exact principals in every local domain.
	s = compileYAML(t, Options{TrustDomain: "example.org"}, policyDoc("p", "default", "", "", `
- from:
  - source: {serviceAccounts: ["default/frontend"]}`))
	if d := decide(t, s, req{principal: "spiffe://example.org/ns/default/sa/frontend"}); !d.Allow {
		t.Errorf("serviceAccounts: %s", d.Reason)
	}
	if d := decide(t, s, req{principal: "spiffe://example.org/ns/default/sa/frontend2"}); d.Allow {
		t.Errorf("serviceAccounts matched a longer name")
	}
}

func TestTCPSemantics(t *testing.T) {
	s := compileYAML(t, Options{},
		policyDoc("allow-http-only", "default", "ALLOW", "db", `
- from:
  - source: {principals: ["cluster.local/ns/default/sa/api"]}
  to:
  - operation: {methods: [GET]}`),
		policyDoc("allow-l4", "default", "ALLOW", "db", `
- from:
  - source: {principals: ["cluster.local/ns/default/sa/frontend"]}
  to:
  - operation: {ports: ["5432"]}`))
	db := map[string]string{"app": "db"}
	// The ALLOW rule with an HTTP-only field never matches a TCP connection.
	if d := decide(t, s, req{principal: api, labels: db, port: 5432, tcp: true}); d.Allow {
		t.Fatalf("api over TCP allowed by an HTTP rule: %s", d.Reason)
	} else if !strings.Contains(d.Reason, "HTTP-only fields never match a TCP connection") {
		t.Fatalf("reason: %s", d.Reason)
	}
	if d := decide(t, s, req{principal: api, labels: db, port: 5432}); !d.Allow {
		t.Fatalf("api over HTTP denied: %s", d.Reason)
	}
	if d := decide(t, s, req{principal: frontend, labels: db, port: 5432, tcp: true}); !d.Allow {
		t.Fatalf("frontend over TCP denied: %s", d.Reason)
	}

	// A DENY rule ignores its HTTP-only fields on TCP, so it matches more.
	s = compileYAML(t, Options{}, policyDoc("deny-get", "default", "DENY", "db", `
- from:
  - source: {principals: ["cluster.local/ns/default/sa/api"]}
  to:
  - operation: {methods: [GET], ports: ["5432"]}
  when:
  - key: request.headers[x-a]
    values: ["1"]`))
	if d := decide(t, s, req{principal: api, labels: db, port: 5432, tcp: true}); d.Allow || d.Action != ActionDeny {
		t.Fatalf("DENY with HTTP fields did not deny TCP: %+v", d)
	}
	if d := decide(t, s, req{principal: api, labels: db, port: 6000, tcp: true}); !d.Allow {
		t.Fatalf("the L4 part of the DENY rule (port) still applies: %s", d.Reason)
	}
	if d := decide(t, s, req{principal: frontend, labels: db, port: 5432, tcp: true}); !d.Allow {
		t.Fatalf("the L4 part of the DENY rule (principal) still applies: %s", d.Reason)
	}
	if d := decide(t, s, req{principal: api, labels: db, port: 5432, method: "POST"}); !d.Allow {
		t.Fatalf("HTTP POST is not GET: %s", d.Reason)
	}
}

func TestScope(t *testing.T) {
	mesh := policyDoc("mesh-deny", "istio-system", "DENY", "", `
- to:
  - operation: {paths: ["/mesh-blocked"]}`)
	meshSel := policyDoc("mesh-version", "trustmesh-system", "DENY", "legacy", `
- {}`)
	nsWide := policyDoc("ns-deny", "prod", "DENY", "", `
- to:
  - operation: {paths: ["/prod-blocked"]}`)
	workload := policyDoc("api-deny", "prod", "DENY", "api", `
- to:
  - operation: {paths: ["/api-blocked"]}`)
	s := compileYAML(t, Options{}, mesh, meshSel, nsWide, workload)
	for _, tc := range []struct {
		ns, app, path string
		allow         bool
	}{
		{"default", "web", "/mesh-blocked", false}, // root namespace: mesh-wide
		{"prod", "api", "/mesh-blocked", false},
		{"default", "legacy", "/anything", false}, // root namespace + selector: every namespace's matching workloads
		{"prod", "legacy", "/anything", false},
		{"prod", "web", "/prod-blocked", false}, // namespace-wide
		{"default", "web", "/prod-blocked", true},
		{"prod", "api", "/api-blocked", false}, // selector narrows
		{"prod", "web", "/api-blocked", true},
		{"default", "api", "/api-blocked", true}, // another namespace's selector does not apply
	} {
		d := decide(t, s, req{ns: tc.ns, labels: map[string]string{"app": tc.app}, path: tc.path})
		if d.Allow != tc.allow {
			t.Errorf("%s/%s %s: allow=%v, want %v (%s)", tc.ns, tc.app, tc.path, d.Allow, tc.allow, d.Reason)
		}
	}
	// Root namespaces are configurable; then istio-system is an ordinary namespace.
	s = compileYAML(t, Options{RootNamespaces: []string{"mesh-root"}}, mesh)
	if d := decide(t, s, req{ns: "default", path: "/mesh-blocked"}); !d.Allow {
		t.Errorf("istio-system applied mesh-wide although it is not a root namespace")
	}
	// A selector with several labels needs all of them.
	s = compileYAML(t, Options{}, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: two-labels, namespace: default}
spec:
  action: DENY
  selector: {matchLabels: {app: api, version: v1}}
  rules: [{}]`)
	if d := decide(t, s, req{labels: map[string]string{"app": "api"}}); !d.Allow {
		t.Errorf("partial label match selected the workload")
	}
	if d := decide(t, s, req{labels: map[string]string{"app": "api", "version": "v1", "x": "y"}}); d.Allow {
		t.Errorf("full label match did not select the workload")
	}
}

func TestBareHost(t *testing.T) {
	for in, want := range map[string]string{"": "", "a.com": "a.com", "a.com:80": "a.com", "a.com.": "a.com", "a.com.:80": "a.com",
		"[::1]:80": "[::1]", "[::1]": "[::1]", "::1": "::1", "10.0.0.1:8080": "10.0.0.1"} {
		if got := bareHost(in); got != want {
			t.Errorf("bareHost(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHostSpellingsDoNotBypassDeny(t *testing.T) {
	s := compileYAML(t, Options{}, policyDoc("deny-admin-host", "default", "DENY", "", `
- to:
  - operation: {hosts: ["admin.example.com"]}`))
	for _, h := range []string{"admin.example.com", "ADMIN.example.com", "admin.example.com:443", "admin.example.com.", "admin.example.com.:8080"} {
		if d := decide(t, s, req{host: h}); d.Allow {
			t.Errorf("Host %q bypassed the DENY", h)
		}
	}
	if d := decide(t, s, req{host: "www.example.com:443"}); !d.Allow {
		t.Errorf("another host denied: %s", d.Reason)
	}
}

func TestPathTricksDoNotBypassDeny(t *testing.T) {
	s := compileYAML(t, Options{}, policyDoc("deny-admin", "default", "DENY", "", `
- to:
  - operation: {paths: ["/admin", "/admin/*"]}`))
	for _, p := range []string{
		"/admin", "/a%64min", "/%61dmin", "//admin", "/x/../admin", "/./admin", "/admin/", "/admin%2Fusers",
		"/admin%2fusers", "/admin/./users", "/public/..%2Fadmin", "\\admin", "/%5Cadmin", "/admin?x=1", "/admin#frag",
		"/public/%2E%2E/admin", "///admin//users", "/admin/users/../../admin",
	} {
		d := decide(t, s, req{path: p})
		if d.Allow {
			t.Errorf("%q bypassed the DENY (%s)", p, d.Reason)
		}
	}
	// Malformed and NUL encodings are denied outright (fail closed).
	for _, p := range []string{"/admin%00", "/adm%zzin", "/admin%", "/a\x01dmin"} {
		d := decide(t, s, req{path: p})
		if d.Allow || d.Err == nil || !IsPathError(d.Err) {
			t.Errorf("%q: want a path error denial, got %+v", p, d)
		}
	}
	for _, p := range []string{"/public", "/administrator", "/adminx/y"} {
		if d := decide(t, s, req{path: p}); !d.Allow {
			t.Errorf("%q denied (%s)", p, d.Reason)
		}
	}
}

func TestPrincipalIndexAgreesWithScan(t *testing.T) {
	// A policy with many rules is indexed by principal; the decision must
	// be the one a scan of every rule gives.
	var rules strings.Builder
	for i := 0; i < 40; i++ {
		switch i % 4 {
		case 0:
			rules.WriteString("- from:\n  - source: {principals: [\"cluster.local/ns/default/sa/s" + itoa(i) + "\"]}\n  to:\n  - operation: {methods: [GET]}\n")
		case 1:
			rules.WriteString("- from:\n  - source: {principals: [\"cluster.local/ns/default/sa/s" + itoa(i) + "\", \"cluster.local/ns/default/sa/s" + itoa(i+100) + "\"]}\n")
		case 2:
			rules.WriteString("- from:\n  - source: {namespaces: [\"ns" + itoa(i) + "\"]}\n")
		case 3:
			rules.WriteString("- from:\n  - source: {principals: [\"cluster.local/ns/default/sa/s" + itoa(i) + "*\"]}\n  to:\n  - operation: {paths: [\"/p" + itoa(i) + "\"]}\n")
		}
	}
	s := compileYAML(t, Options{}, policyDoc("big", "default", "ALLOW", "", rules.String()))
	p := s.policies[0]
	if p.byPrincipal == nil {
		t.Fatal("the policy was not indexed")
	}
	for i := 0; i < 160; i++ {
		for _, path := range []string{"/", "/p" + itoa(i%40)} {
			for _, m := range []string{"GET", "POST"} {
				principals := []string{"spiffe://cluster.local/ns/ns" + itoa(i%40) + "/sa/x", "spiffe://cluster.local/ns/default/sa/s" + itoa(i), ""}
				for _, pr := range principals {
					in := req{principal: pr, path: path, method: m}.input()
					a, err := prepare(in)
					if err != nil {
						t.Fatal(err)
					}
					want := -1
					for ri, r := range p.rules {
						if p.ruleMatches(r, &a) {
							want = ri
							break
						}
					}
					if got := p.match(&a); got != want {
						t.Fatalf("principal %q path %s %s: indexed match %d, scan %d", pr, m, path, got, want)
					}
				}
			}
		}
	}
}

func TestEvaluateDoesNotAllocate(t *testing.T) {
	s := matrixSet(t, 1000)
	ctx := context.Background()
	allowed := matrixInput(1000, 10, true)
	denied := matrixInput(1000, 10, false)
	for name, in := range map[string]*Input{"allowed": allowed, "denied": denied} {
		want := name == "allowed"
		if d := s.Evaluate(ctx, in); d.Allow != want {
			t.Fatalf("%s: %+v", name, d)
		}
		if n := testing.AllocsPerRun(100, func() { s.Evaluate(ctx, in) }); n != 0 {
			t.Errorf("%s: %v allocations per decision, want 0", name, n)
		}
	}
}

func TestWithoutPathParams(t *testing.T) {
	for in, want := range map[string]string{
		"/admin": "", "/": "", "/admin;x": "/admin", "/admin;/users": "/admin/users", "/a;b=1/c;d/e": "/a/c/e",
		"/admin%3Bx/users": "/admin/users", "/;x": "/", "/a/;": "/a/", "/public/..;/admin": "/admin", "/x/.;y/admin": "/x/admin",
	} {
		if got := withoutPathParams(in); got != want {
			t.Errorf("withoutPathParams(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestPathParametersDoNotBypass: ";…" path parameters (which Tomcat,
// Jetty and Spring strip before routing) neither escape a DENY nor win an
// ALLOW that the path without them would not.
func TestPathParametersDoNotBypass(t *testing.T) {
	deny := compileYAML(t, Options{}, policyDoc("deny-admin", "default", "DENY", "", `
- to:
  - operation: {paths: ["/admin", "/admin/*"]}`))
	for _, p := range []string{"/admin;x", "/admin;/users", "/admin%3Bx", "/admin;jsessionid=1/users;a=b",
		"/public/..;/admin", "/x/..;x/admin/users", "/.;/admin", "/x/%2E%2E;/admin", "/x/..%3B/admin", "/x/..%3b/admin"} {
		if d := decide(t, deny, req{path: p}); d.Allow {
			t.Errorf("%q bypassed the DENY (%s)", p, d.Reason)
		}
	}
	if d := decide(t, deny, req{path: "/public;x"}); !d.Allow {
		t.Errorf("/public;x denied: %s", d.Reason)
	}
	allow := compileYAML(t, Options{}, policyDoc("allow-but-admin", "default", "ALLOW", "", `
- to:
  - operation: {paths: ["/*"], notPaths: ["/admin"]}`))
	public := compileYAML(t, Options{}, policyDoc("allow-public", "default", "ALLOW", "", `
- to:
  - operation: {paths: ["/public/*"]}`))
	for _, p := range []string{"/public/..;/admin", "/public/%2e%2e;/admin"} {
		if d := decide(t, public, req{path: p}); d.Allow {
			t.Errorf("%q won the ALLOW on /public/*", p)
		}
	}
	for _, p := range []string{"/admin;x", "/admin%3Bx"} {
		d := decide(t, allow, req{path: p})
		if d.Allow {
			t.Errorf("%q won the ALLOW", p)
		}
		if !strings.Contains(d.Reason, `without its ;parameters "/admin"`) {
			t.Errorf("%q: reason %q", p, d.Reason)
		}
	}
	if d := decide(t, allow, req{path: "/api;v=2/users"}); !d.Allow {
		t.Errorf("/api;v=2/users refused: %s", d.Reason)
	}
}
