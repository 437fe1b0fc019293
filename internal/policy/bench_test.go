package policy

import (
	"context"
	"fmt"
	"testing"

	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
)

// The seed's service-permission matrix (frontend → api, auth; api →
// database, cache, auth; auth → database), scaled to n services: service i
// may be called by services i-1, i-2 and i-3. The same decisions are made
// natively (one AuthorizationPolicy per service, plus allow-nothing) and by
// OPA (the seed's authz.rego with the matrix as data), so bench/policy.sh
// can print their ratio.

func svcName(i, n int) string { return fmt.Sprintf("svc-%d", ((i%n)+n)%n) }

func svcID(i, n int) string { return "spiffe://example.org/ns/default/sa/" + svcName(i, n) }

// callers are the services allowed to call service i.
func callers(i, n int) []int { return []int{i - 1, i - 2, i - 3} }

func matrixSources(n int) *Sources {
	src := &Sources{}
	src.AuthorizationPolicies = append(src.AuthorizationPolicies, &AuthorizationPolicy{
		APIVersion: "security.istio.io/v1", Kind: "AuthorizationPolicy",
		Metadata: Metadata{Name: "allow-nothing", Namespace: "default"},
	})
	for i := 0; i < n; i++ {
		var principals []string
		for _, c := range callers(i, n) {
			principals = append(principals, "cluster.local/ns/default/sa/"+svcName(c, n))
		}
		src.AuthorizationPolicies = append(src.AuthorizationPolicies, &AuthorizationPolicy{
			APIVersion: "security.istio.io/v1", Kind: "AuthorizationPolicy",
			Metadata: Metadata{Name: svcName(i, n) + "-allow", Namespace: "default"},
			Spec: AuthorizationPolicySpec{
				Selector: &WorkloadSelector{MatchLabels: map[string]string{"app": svcName(i, n)}},
				Rules:    []*Rule{{From: []*RuleFrom{{Source: &Source{Principals: principals}}}}},
			},
		})
	}
	return src
}

func matrixSet(tb testing.TB, n int) *Set {
	tb.Helper()
	s, problems := Compile(context.Background(), matrixSources(n), Options{TrustDomain: "example.org"})
	if s == nil {
		tb.Fatal(problemsErr(problems))
	}
	return s
}

// matrixInput is a request to service dst, from an allowed caller or not.
func matrixInput(n, dst int, allowed bool) *Input {
	src := dst - 1
	if !allowed {
		src = dst + 5
	}
	return &Input{
		Source:      Peer{Principal: svcID(src, n)},
		Destination: Destination{Principal: svcID(dst, n), Namespace: "default", Labels: map[string]string{"app": svcName(dst, n)}, Port: 8080},
		Request:     &Request{Method: "GET", Path: "/api/v1/items"},
		Connection:  Connection{MTLS: true},
	}
}

// The seed's authz.rego (seed 000), with service_permissions read from
// data instead of written inline so it scales.
const matrixRego = `package authz

default allow = false

allow {
    valid_spiffe_id
    authorized_service
}

valid_spiffe_id {
    input.spiffe_id
    startswith(input.spiffe_id, "spiffe://example.org/")
}

authorized_service {
    data.service_permissions[input.source_service][_] == input.target_service
}
`

func matrixData(n int) map[string]any {
	perms := map[string]any{}
	for i := 0; i < n; i++ {
		for _, c := range callers(i, n) {
			k := svcName(c, n)
			l, _ := perms[k].([]any)
			perms[k] = append(l, svcName(i, n))
		}
	}
	return map[string]any{"service_permissions": perms}
}

func matrixOPA(tb testing.TB, n int) rego.PreparedEvalQuery {
	tb.Helper()
	mod, err := parseRego(RegoModule{File: "authz.rego", Text: matrixRego}, "auto")
	if err != nil {
		tb.Fatal(err)
	}
	pq, err := rego.New(rego.Query("data.authz.allow"), rego.ParsedModule(mod), rego.Store(inmem.NewFromObject(matrixData(n)))).PrepareForEval(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return pq
}

// opaInput is the input document the seed's middleware sends OPA.
func opaInput(in *Input) map[string]any {
	return map[string]any{
		"spiffe_id":      in.Source.Principal,
		"source_service": ServiceName(in.Source.Principal),
		"target_service": ServiceName(in.Destination.Principal),
		"method":         in.Request.Method,
		"path":           in.Request.Path,
	}
}

var benchSizes = []int{10, 1000, 10000}

func BenchmarkDecision(b *testing.B) {
	ctx := context.Background()
	for _, n := range benchSizes {
		set := matrixSet(b, n)
		pq := matrixOPA(b, n)
		for _, allowed := range []bool{true, false} {
			outcome := map[bool]string{true: "allow", false: "deny"}[allowed]
			in := matrixInput(n, n/2, allowed)
			b.Run(fmt.Sprintf("engine=native/services=%d/%s", n, outcome), func(b *testing.B) {
				if d := set.Evaluate(ctx, in); d.Allow != allowed {
					b.Fatalf("native: %+v", d)
				}
				b.ReportAllocs()
				for b.Loop() {
					set.Evaluate(ctx, in)
				}
			})
			doc := opaInput(in)
			b.Run(fmt.Sprintf("engine=opa/services=%d/%s", n, outcome), func(b *testing.B) {
				rs, err := pq.Eval(ctx, rego.EvalInput(doc))
				if err != nil || len(rs) != 1 || rs[0].Expressions[0].Value != allowed {
					b.Fatalf("opa: %v %v", rs, err)
				}
				b.ReportAllocs()
				for b.Loop() {
					if _, err := pq.Eval(ctx, rego.EvalInput(doc)); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestNativeAndOPAAgree checks that the benchmark compares like with like:
// both engines decide every pair of a small matrix the same way.
func TestNativeAndOPAAgree(t *testing.T) {
	const n = 12
	set := matrixSet(t, n)
	pq := matrixOPA(t, n)
	ctx := context.Background()
	for src := 0; src < n; src++ {
		for dst := 0; dst < n; dst++ {
			in := &Input{
				Source:      Peer{Principal: svcID(src, n)},
				Destination: Destination{Principal: svcID(dst, n), Namespace: "default", Labels: map[string]string{"app": svcName(dst, n)}},
				Request:     &Request{Method: "GET", Path: "/"},
				Connection:  Connection{MTLS: true},
			}
			native := set.Evaluate(ctx, in).Allow
			rs, err := pq.Eval(ctx, rego.EvalInput(opaInput(in)))
			if err != nil {
				t.Fatal(err)
			}
			if opa := rs[0].Expressions[0].Value.(bool); opa != native {
				t.Fatalf("%d -> %d: native %v, OPA %v", src, dst, native, opa)
			}
		}
	}
}

func BenchmarkNormalizePath(b *testing.B) {
	for _, p := range []string{"/api/v1/items/42", "/api//v1/./items/%34%32/../42?x=1"} {
		b.Run(p, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := NormalizePath(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkCompile(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			for b.Loop() {
				if s, p := Compile(context.Background(), matrixSources(n), Options{}); s == nil {
					b.Fatal(problemsErr(p))
				}
			}
		})
	}
}
