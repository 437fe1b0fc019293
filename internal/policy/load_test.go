package policy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidationReportsEveryErrorWithFileLineAndField(t *testing.T) {
	doc := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: bad
  namespace: x
spec:
  action: ALOW
  rules:
  - from:
    - source:
        principals: [""]
        ipBlocks: ["10.0.0.300"]
    to:
    - operation:
        ports: ["99999"]
        paths: ["/a/{**}/b", "/x{*}"]
    when:
    - key: request.foo
      values: ["x"]
    - key: source.ip
    - key: request.headers[]
      values: ["x"]
  - from:
    - source: {}
    to:
    - {}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: pa
spec:
  mtls: {mode: STRCT}
  portLevelMtls:
    8080: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: custom, namespace: x}
spec:
  action: CUSTOM
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tr, namespace: x, annotations: {istio.io/dry-run: "yes"}}
spec:
  targetRef: {kind: Gateway, name: gw}
  provider: {name: x}
`
	want := []struct {
		line  int
		field string
		msg   string
	}{
		{7, "spec.action", `unknown action "ALOW"`},
		{11, "spec.rules[0].from[0].source.principals[0]", "empty value"},
		{12, "spec.rules[0].from[0].source.ipBlocks[0]", "not an IP address or CIDR"},
		{15, "spec.rules[0].to[0].operation.ports[0]", "not a port number"},
		{16, "spec.rules[0].to[0].operation.paths[0]", "{**} must be the last operator"},
		{16, "spec.rules[0].to[0].operation.paths[1]", "must be a literal, {*} or {**}"},
		{18, "spec.rules[0].when[0].key", `unknown condition key "request.foo"`},
		{20, "spec.rules[0].when[1]", "needs values or notValues"},
		{21, "spec.rules[0].when[2].key", "want request.headers[Header-Name]"},
		{24, "spec.rules[1].from[0].source", "source must set at least one field"},
		{26, "spec.rules[1].to[0]", "to entry needs an operation"},
		{33, "spec.mtls.mode", `unknown mTLS mode "STRCT"`},
		{34, "spec.portLevelMtls", "portLevelMtls requires a workload selector"},
		{41, "spec.action", "a CUSTOM policy needs provider.name"},
		{45, "metadata.annotations[istio.io/dry-run]", `want "true" or "false"`},
		{47, "spec.targetRef", "targetRef attaches policy to Gateway API resources"},
		{48, "spec.provider", "provider is only valid with action CUSTOM"},
	}
	errs := compileErrors(t, Options{}, doc)
	for _, w := range want {
		found := false
		for _, e := range errs {
			if e.File == "test.yaml" && e.Line == w.line && e.Field == w.field && strings.Contains(e.Message, w.msg) {
				found = true
			}
		}
		if !found {
			t.Errorf("missing error test.yaml:%d: %s: %s", w.line, w.field, w.msg)
		}
	}
	if t.Failed() {
		for _, e := range errs {
			t.Log(e.String())
		}
	}
}

func TestLoaderStrictness(t *testing.T) {
	tests := []struct {
		name, doc, want string
		line            int
	}{
		{"unknown spec field, with a suggestion", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  rules:\n  - from:\n    - source:\n        principal: [x]\n",
			`unknown field "principal" (did you mean "principals"?)`, 8},
		{"wrong type", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  rules: yes\n", "cannot unmarshal", 5},
		{"unsupported version", "apiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n", `apiVersion "security.istio.io/v1alpha1" is not supported`, 1},
		{"bad YAML", "apiVersion: [\n", "not valid YAML", 0},
		{"not an object", "- a\n- b\n", "is not a Kubernetes object", 1},
		{"no kind", "apiVersion: v1\nmetadata: {name: a}\n", "has no kind", 1},
		{"no name", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nspec: {}\n", "has no metadata.name", 1},
		{"duplicate", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n", "is defined twice", 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs := compileErrors(t, Options{}, tc.doc)
			for _, e := range errs {
				if strings.Contains(e.Message, tc.want) && (tc.line == 0 || e.Line == tc.line) {
					return
				}
			}
			t.Fatalf("want %q at line %d, got %v", tc.want, tc.line, errs)
		})
	}
}

func TestLoaderAcceptsKubectlOutput(t *testing.T) {
	// `kubectl get authorizationpolicies,peerauthentications -A -o yaml`
	// prints a List with server-set metadata and status; typed lists may
	// omit the items' kind and apiVersion.
	doc := `apiVersion: v1
kind: List
items:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata:
    name: a
    namespace: prod
    uid: 0b4e9c3a
    resourceVersion: "123"
    generation: 2
    creationTimestamp: "2026-01-02T03:04:05Z"
    managedFields: [{manager: kubectl}]
  spec:
    rules: [{}]
  status:
    validationMessages: []
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: np}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthenticationList
items:
- metadata: {name: strict, namespace: prod}
  spec: {mtls: {mode: STRICT}}
`
	src := &Sources{}
	src.Parse("list.yaml", []byte(doc))
	s, problems := Compile(context.Background(), src, Options{})
	if s == nil {
		t.Fatal(problemsErr(problems))
	}
	if got := s.Policies(); len(got) != 1 || got[0] != "prod/a" {
		t.Fatalf("policies = %v", got)
	}
	if src.SkippedKinds["NetworkPolicy"] != 1 {
		t.Fatalf("skipped = %v", src.SkippedKinds)
	}
	if m := s.MTLS("prod", nil, 80); m.Mode != MTLSStrict || m.Policy != "prod/strict" {
		t.Fatalf("mtls = %+v", m)
	}
}

func TestLoadDirectories(t *testing.T) {
	dir := t.TempDir()
	write := func(rel, content string) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", policyDoc("a", "default", "", "", "- {}"))
	write("nested/b.yml", policyDoc("b", "default", "DENY", "", ""))
	write("nested/c.json", `{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"c","namespace":"default"},"spec":{}}`)
	write("nested/ignored_test.yaml", "tests: []\n")
	write("README.md", "# not a policy\n")
	write(".git/x.yaml", "not: [valid")
	write("rego/p.rego", "package trustmesh.authz\n\nallow if input.data_check == data.teams.limits.max\n")
	write("rego/teams/data.json", `{"limits": {"max": 3}}`)
	src := Load(dir)
	if err := src.Err(); err != nil {
		t.Fatal(err)
	}
	if len(src.AuthorizationPolicies) != 3 || len(src.RegoModules) != 1 {
		t.Fatalf("loaded %d policies, %d modules", len(src.AuthorizationPolicies), len(src.RegoModules))
	}
	// data.json is mounted at its directory's path below the loaded root.
	teams, _ := src.Data["rego"].(map[string]any)["teams"].(map[string]any)
	if teams == nil || teams["limits"] == nil {
		t.Fatalf("data = %v", src.Data)
	}
	// A missing path and a file of the wrong kind are errors.
	src = Load(filepath.Join(dir, "missing"), filepath.Join(dir, "README.md"))
	if len(src.Errors()) != 2 {
		t.Fatalf("errors = %v", src.Errors())
	}
}

func TestPeerAuthenticationPrecedence(t *testing.T) {
	pa := func(name, ns, selector, mode, ports, created string) string {
		var b strings.Builder
		b.WriteString("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: " + name + "\n  namespace: " + ns + "\n")
		if created != "" {
			b.WriteString("  creationTimestamp: \"" + created + "\"\n")
		}
		b.WriteString("spec:\n")
		if selector != "" {
			b.WriteString("  selector: {matchLabels: {app: " + selector + "}}\n")
		}
		if mode != "" {
			b.WriteString("  mtls: {mode: " + mode + "}\n")
		}
		if ports != "" {
			b.WriteString("  portLevelMtls:\n" + ports)
		}
		return b.String()
	}
	s := compileYAML(t, Options{},
		pa("mesh", "istio-system", "", "STRICT", "", ""),
		pa("ns", "legacy", "", "PERMISSIVE", "", ""),
		pa("unset-ns", "inherit", "", "UNSET", "", ""),
		pa("web", "legacy", "web", "STRICT", "    8080: {mode: DISABLE}\n    9090: {mode: UNSET}\n", ""),
		pa("unset-workload", "legacy", "batch", "", "    7000: {mode: STRICT}\n", ""),
		pa("older", "dup", "api", "DISABLE", "", "2025-01-01T00:00:00Z"),
		pa("newer", "dup", "api", "STRICT", "", "2026-01-01T00:00:00Z"),
	)
	for _, tc := range []struct {
		ns, app string
		port    uint32
		mode    MTLSMode
		policy  string
		scope   string
	}{
		{"default", "x", 80, MTLSStrict, "istio-system/mesh", "mesh"},
		{"legacy", "x", 80, MTLSPermissive, "legacy/ns", "namespace"},
		{"inherit", "x", 80, MTLSStrict, "istio-system/mesh", "mesh"},
		{"legacy", "web", 80, MTLSStrict, "legacy/web", "workload"},
		{"legacy", "web", 8080, MTLSDisable, "legacy/web", "port"},
		{"legacy", "web", 9090, MTLSStrict, "legacy/web", "workload"},
		{"legacy", "batch", 80, MTLSPermissive, "legacy/ns", "namespace"},
		{"legacy", "batch", 7000, MTLSStrict, "legacy/unset-workload", "port"},
		{"dup", "api", 80, MTLSDisable, "dup/older", "workload"},
	} {
		got := s.MTLS(tc.ns, map[string]string{"app": tc.app}, tc.port)
		if got.Mode != tc.mode || got.Policy != tc.policy || got.Scope != tc.scope {
			t.Errorf("%s/%s:%d = %+v, want %s from %s (%s)", tc.ns, tc.app, tc.port, got, tc.mode, tc.policy, tc.scope)
		}
	}
	// No policy at all: Trustmesh's default is STRICT, configurable.
	if got := compileYAML(t, Options{}, "").MTLS("x", nil, 1); got.Mode != MTLSStrict || got.Scope != "default" {
		t.Errorf("default = %+v", got)
	}
	if got := compileYAML(t, Options{DefaultMTLS: MTLSPermissive}, "").MTLS("x", nil, 1); got.Mode != MTLSPermissive {
		t.Errorf("configured default = %+v", got)
	}
	if !MTLSPermissive.AllowsPlaintext() || MTLSStrict.AllowsPlaintext() || MTLSDisable.AllowsMTLS() {
		t.Error("mode predicates")
	}
}

func TestParseInput(t *testing.T) {
	in, err := ParseInput([]byte(`{"source":{"principal":"spiffe://example.org/ns/shop/sa/web","ip":"10.0.0.1"},
		"destination":{"principal":"spiffe://example.org/ns/pay/sa/api","labels":{"app":"api"},"port":8443},
		"request":{"method":"POST","path":"/x","headers":{"x-a":"1","x-b":["2","3"]},"auth":{"claims":{"n":1}}},
		"trace":"abc"}`))
	if err != nil {
		t.Fatal(err)
	}
	if !in.Connection.MTLS || in.Destination.Namespace != "pay" || in.Request.Headers.Get("X-A") != "1" || len(in.Request.Headers["X-B"]) != 2 || in.Extra["trace"] != "abc" {
		t.Fatalf("%+v", in)
	}
	a, _ := prepare(in)
	if a.srcNamespace != "shop" || a.principal != "example.org/ns/shop/sa/web" {
		t.Fatalf("attrs %+v", a)
	}
	doc := a.regoDocument()
	if doc["source_service"] != "web" || doc["target_service"] != "api" || doc["spiffe_id"] != "spiffe://example.org/ns/shop/sa/web" || doc["method"] != "POST" || doc["trace"] != "abc" {
		t.Fatalf("rego doc %v", doc)
	}
	// mtls: false drops the principal.
	in, err = ParseInput([]byte(`{"source":{"principal":"spiffe://example.org/ns/shop/sa/web"},"connection":{"mtls":false}}`))
	if err != nil || in.Source.Principal != "" || in.Connection.MTLS || in.Request != nil {
		t.Fatalf("%+v %v", in, err)
	}
	for _, bad := range []string{`[]`, `{"source":{"ip":"999.1.1.1"}}`, `{"source":{"principal":"web"}}`, `{"request":{"headers":{"a":1}}}`, `{"destination":{"port":"80"}}`, `{`} {
		if _, err := ParseInput([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

func TestRunTestsOnExamples(t *testing.T) {
	results, problems := RunTests(context.Background(), []string{"../../examples/policies"}, Options{})
	if len(problems) > 0 {
		t.Fatal(problemsErr(problems))
	}
	if len(results) < 40 {
		t.Fatalf("only %d example tests ran", len(results))
	}
	for _, r := range results {
		if !r.Pass {
			t.Errorf("%s: %s: %s", r.File, r.Name, r.Message)
		}
	}
}

func TestRunTestsReportsFailures(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(policyDoc("only-frontend", "default", "", "", `
- from:
  - source: {principals: ["cluster.local/ns/default/sa/frontend"]}`)), 0o644); err != nil {
		t.Fatal(err)
	}
	tf := `tests:
  - name: right
    input: {source: {principal: "spiffe://cluster.local/ns/default/sa/frontend"}, request: {path: /}}
    expect: allow
  - name: wrong expectation
    input: {source: {principal: "spiffe://cluster.local/ns/default/sa/api"}, request: {path: /}}
    expect: allow
  - name: wrong policy
    input: {source: {principal: "spiffe://cluster.local/ns/default/sa/frontend"}}
    expect: allow
    policy: default/other
  - name: bad expect
    input: {}
    expect: maybe
`
	if err := os.WriteFile(filepath.Join(dir, "p_test.yaml"), []byte(tf), 0o644); err != nil {
		t.Fatal(err)
	}
	results, problems := RunTests(context.Background(), []string{dir}, Options{})
	if len(problems) > 0 || len(results) != 4 {
		t.Fatalf("results %v problems %v", results, problems)
	}
	wantPass := []bool{true, false, false, false}
	for i, r := range results {
		if r.Pass != wantPass[i] {
			t.Errorf("%s: pass=%v (%s)", r.Name, r.Pass, r.Message)
		}
	}
	if !strings.Contains(results[1].Message, "p_test.yaml:5: expected allow, got deny") {
		t.Errorf("message %q", results[1].Message)
	}
	// A file that is not a test file, or has unknown keys, is a problem.
	if err := os.WriteFile(filepath.Join(dir, "q_test.yaml"), []byte("tets: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, problems = RunTests(context.Background(), []string{filepath.Join(dir, "q_test.yaml")}, Options{})
	if len(problems) == 0 || !strings.Contains(problems[0].Message, `unknown field "tets"`) {
		t.Fatalf("problems %v", problems)
	}
}
