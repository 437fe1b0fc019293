package policy

import (
	"context"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The seed's authz.rego, Rego v0, exactly as examples/policies carries it.
func seedRego(t *testing.T) RegoModule {
	t.Helper()
	b, err := os.ReadFile("../../examples/policies/rego-matrix/authz.rego")
	if err != nil {
		t.Fatal(err)
	}
	return RegoModule{File: "authz.rego", Text: string(b)}
}

func compileRegoSet(t *testing.T, opts Options, mods []RegoModule, data map[string]any, docs ...string) (*Set, []Problem) {
	t.Helper()
	src := &Sources{RegoModules: mods, Data: data}
	if len(docs) > 0 {
		src.Parse("test.yaml", []byte(strings.Join(docs, "\n---\n")))
	}
	return Compile(context.Background(), src, opts)
}

func TestRegoSeedPolicyLoadsUnchanged(t *testing.T) {
	s, problems := compileRegoSet(t, Options{RegoQuery: "data.authz.allow"}, []RegoModule{seedRego(t)}, nil)
	if s == nil {
		t.Fatal(problemsErr(problems))
	}
	d := decide(t, s, req{principal: "spiffe://example.org/ns/default/sa/frontend", labels: apiLabels})
	// No destination principal and no host: target_service is empty.
	if d.Allow {
		t.Fatalf("allowed without a target: %+v", d)
	}
	in := req{principal: "spiffe://example.org/ns/default/sa/frontend"}.input()
	in.Destination.Principal = "spiffe://example.org/ns/default/sa/api"
	if d := s.Explain(context.Background(), in); !d.Allow || d.Action != ActionCustom || d.Reason != "allowed by Rego query data.authz.allow" {
		t.Fatalf("frontend -> api: %+v", d)
	}
	in.Destination.Principal = "spiffe://example.org/ns/default/sa/database"
	d = s.Explain(context.Background(), in)
	if d.Allow || d.Action != ActionCustom || !strings.Contains(d.Reason, "Service frontend not authorized to access database") {
		t.Fatalf("frontend -> database: %+v", d)
	}
	// target_service falls back to the Host header, as the seed's middleware sends it.
	in.Destination.Principal = ""
	in.Request.Host = "auth:8080"
	if d := s.Explain(context.Background(), in); !d.Allow {
		t.Fatalf("frontend -> host auth: %+v", d)
	}
}

func TestRegoVersions(t *testing.T) {
	v1 := RegoModule{File: "v1.rego", Text: "package trustmesh.authz\n\nallow if input.method == \"GET\"\n"}
	v0 := seedRego(t)
	if s, p := compileRegoSet(t, Options{}, []RegoModule{v1}, nil); s == nil {
		t.Fatalf("v1 module: %v", problemsErr(p))
	}
	// auto accepts v0 and v1 modules side by side.
	if s, p := compileRegoSet(t, Options{}, []RegoModule{v1, v0}, nil); s == nil {
		t.Fatalf("mixed modules: %v", problemsErr(p))
	}
	// Forcing v1 rejects the seed's v0 syntax, with file and line.
	_, p := compileRegoSet(t, Options{RegoVersion: "v1", RegoQuery: "data.authz.allow"}, []RegoModule{v0}, nil)
	if len(p) == 0 || p[0].File != "authz.rego" || p[0].Line == 0 {
		t.Fatalf("v1 on a v0 module: %v", p)
	}
	if s, p := compileRegoSet(t, Options{RegoVersion: "v0", RegoQuery: "data.authz.allow"}, []RegoModule{v0}, nil); s == nil {
		t.Fatalf("v0: %v", problemsErr(p))
	}
	// Syntax errors are located.
	_, p = compileRegoSet(t, Options{}, []RegoModule{{File: "bad.rego", Text: "package x\n\nallow if {\n"}}, nil)
	if len(p) == 0 || p[0].File != "bad.rego" || p[0].Line < 3 {
		t.Fatalf("syntax error: %v", p)
	}
	// A query naming no rule is an error that suggests the right one.
	_, p = compileRegoSet(t, Options{}, []RegoModule{v0}, nil)
	if len(p) == 0 || !strings.Contains(p[0].Message, "--query data.authz.allow") {
		t.Fatalf("undefined query: %v", p)
	}
}

func TestRegoData(t *testing.T) {
	mod := RegoModule{File: "p.rego", Text: "package trustmesh.authz\n\nallow if data.allowed[input.source_service]\n"}
	s, p := compileRegoSet(t, Options{}, []RegoModule{mod}, map[string]any{"allowed": map[string]any{"frontend": true}})
	if s == nil {
		t.Fatal(problemsErr(p))
	}
	if d := decide(t, s, req{principal: frontend}); !d.Allow {
		t.Fatalf("frontend: %+v", d)
	}
	if d := decide(t, s, req{principal: api}); d.Allow || !strings.Contains(d.Reason, "is undefined") {
		t.Fatalf("api: %+v", d)
	}
}

func TestRegoAsCustomAction(t *testing.T) {
	// Rego allows only GET. Without CUSTOM policies it is asked about every
	// request; with one, only about the requests the policy matches.
	mod := RegoModule{File: "p.rego", Text: "package trustmesh.authz\n\ndefault allow := false\n\nallow if input.request.method == \"GET\"\n"}
	allowAll := policyDoc("allow-all", "default", "ALLOW", "", "- {}")
	s, p := compileRegoSet(t, Options{}, []RegoModule{mod}, nil, allowAll)
	if s == nil {
		t.Fatal(problemsErr(p))
	}
	if d := decide(t, s, req{principal: frontend, method: "POST"}); d.Allow || d.Action != ActionCustom || d.Policy != "" {
		t.Fatalf("POST with implicit CUSTOM: %+v", d)
	}
	if d := decide(t, s, req{principal: frontend, method: "GET"}); !d.Allow || d.Policy != "default/allow-all" {
		t.Fatalf("GET: %+v", d)
	}
	custom := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: default}
spec:
  action: CUSTOM
  provider: {name: rego}
  rules:
  - to:
    - operation: {paths: ["/admin*"]}`
	s, p = compileRegoSet(t, Options{}, []RegoModule{mod}, nil, allowAll, custom)
	if s == nil {
		t.Fatal(problemsErr(p))
	}
	if d := decide(t, s, req{principal: frontend, method: "POST", path: "/admin/x"}); d.Allow || d.Action != ActionCustom || d.Policy != "default/ext-authz" || d.Rule != 0 {
		t.Fatalf("POST /admin: %+v", d)
	}
	if d := decide(t, s, req{principal: frontend, method: "POST", path: "/public"}); !d.Allow {
		t.Fatalf("POST /public is not sent to Rego: %+v", d)
	}
	// A DENY still applies after Rego allows.
	deny := policyDoc("deny-frontend", "default", "DENY", "", "- from:\n  - source: {principals: [\"cluster.local/ns/default/sa/frontend\"]}")
	s, _ = compileRegoSet(t, Options{}, []RegoModule{mod}, nil, allowAll, custom, deny)
	if d := decide(t, s, req{principal: frontend, method: "GET", path: "/admin"}); d.Allow || d.Action != ActionDeny {
		t.Fatalf("DENY after CUSTOM: %+v", d)
	}
	// CUSTOM without any Rego is an error.
	if errs := compileErrors(t, Options{}, custom); len(errs) == 0 || !strings.Contains(errs[0].Message, "needs a Rego policy") {
		t.Fatalf("CUSTOM without Rego: %v", errs)
	}
}

func TestRegoFailsClosed(t *testing.T) {
	// Two complete definitions with different values: a runtime conflict.
	mod := RegoModule{File: "p.rego", Text: "package trustmesh.authz\n\nallow := true if input.a\nallow := false if input.b\n"}
	s, p := compileRegoSet(t, Options{}, []RegoModule{mod}, nil)
	if s == nil {
		t.Fatal(problemsErr(p))
	}
	in := req{principal: frontend}.input()
	in.Extra = map[string]any{"a": true, "b": true}
	d := s.Evaluate(context.Background(), in)
	if d.Allow || d.Err == nil {
		t.Fatalf("conflict: %+v", d)
	}
	// A non-boolean result denies.
	mod = RegoModule{File: "p.rego", Text: "package trustmesh.authz\n\nallow := \"yes\"\n"}
	s, _ = compileRegoSet(t, Options{}, []RegoModule{mod}, nil)
	if d := s.Evaluate(context.Background(), in); d.Allow || !strings.Contains(d.Reason, "not a boolean") {
		t.Fatalf("non-boolean: %+v", d)
	}
}

func TestEngineSwapIsAtomic(t *testing.T) {
	allowSet := compileYAML(t, Options{}, policyDoc("allow", "default", "ALLOW", "", "- {}"))
	denySet := compileYAML(t, Options{}, policyDoc("deny", "default", "DENY", "", "- {}"))
	e := NewEngine(allowSet)
	in := req{principal: frontend}.input()
	var stop atomic.Bool
	var wg sync.WaitGroup
	var seenAllow, seenDeny atomic.Int64
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				d := e.Evaluate(context.Background(), in)
				switch {
				case d.Allow && d.Policy == "default/allow":
					seenAllow.Add(1)
				case !d.Allow && d.Policy == "default/deny":
					seenDeny.Add(1)
				default:
					t.Errorf("a decision from no consistent set: %+v", d)
					return
				}
			}
		}()
	}
	// Swap back and forth until the evaluators have seen both sets many
	// times (bounded, so a broken engine fails rather than hangs).
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; seenAllow.Load() < 1000 || seenDeny.Load() < 1000; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("evaluations did not progress: %d allowed, %d denied", seenAllow.Load(), seenDeny.Load())
		}
		if i%2 == 0 {
			e.Swap(denySet)
		} else {
			e.Swap(allowSet)
		}
		runtime.Gosched()
	}
	stop.Store(true)
	wg.Wait()
	e.Swap(allowSet)
	if e.Set() != allowSet {
		t.Fatal("the last swap did not stick")
	}
}
