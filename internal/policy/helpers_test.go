package policy

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

// compileYAML compiles YAML documents (joined with ---) and fails the test
// on any error.
func compileYAML(t testing.TB, opts Options, docs ...string) *Set {
	t.Helper()
	src := &Sources{}
	src.Parse("test.yaml", []byte(strings.Join(docs, "\n---\n")))
	set, problems := Compile(context.Background(), src, opts)
	if set == nil {
		t.Fatalf("compile failed: %v", problemsErr(problems))
	}
	return set
}

// compileErrors compiles and returns the error problems.
func compileErrors(t testing.TB, opts Options, docs ...string) []Problem {
	t.Helper()
	src := &Sources{}
	src.Parse("test.yaml", []byte(strings.Join(docs, "\n---\n")))
	set, problems := Compile(context.Background(), src, opts)
	var errs []Problem
	for _, p := range problems {
		if p.Severity == SeverityError {
			errs = append(errs, p)
		}
	}
	if set != nil && len(errs) > 0 {
		t.Fatalf("a set was returned despite errors: %v", errs)
	}
	return errs
}

// req builds an HTTP input from a principal to a workload.
type req struct {
	principal string // full SPIFFE ID or ""
	ns        string // destination namespace
	labels    map[string]string
	port      uint32
	method    string
	path      string
	host      string
	headers   map[string]string
	auth      *Auth
	srcIP     string
	remoteIP  string
	dstIP     string
	sni       string
	tcp       bool
}

func (r req) input() *Input {
	in := &Input{
		Source:      Peer{Principal: r.principal},
		Destination: Destination{Namespace: r.ns, Labels: r.labels, Port: r.port},
		Connection:  Connection{MTLS: r.principal != "", SNI: r.sni},
	}
	if in.Destination.Namespace == "" {
		in.Destination.Namespace = "default"
	}
	if r.srcIP != "" {
		in.Source.IP = netip.MustParseAddr(r.srcIP)
	}
	if r.remoteIP != "" {
		in.Source.RemoteIP = netip.MustParseAddr(r.remoteIP)
	}
	if r.dstIP != "" {
		in.Destination.IP = netip.MustParseAddr(r.dstIP)
	}
	if !r.tcp {
		rq := &Request{Method: r.method, Path: r.path, Host: r.host, Auth: r.auth}
		if rq.Method == "" {
			rq.Method = "GET"
		}
		if rq.Path == "" {
			rq.Path = "/"
		}
		if len(r.headers) > 0 {
			rq.Headers = http.Header{}
			for k, v := range r.headers {
				for _, e := range strings.Split(v, "\x00") {
					rq.Headers.Add(k, e)
				}
			}
		}
		in.Request = rq
	}
	return in
}

func decide(t testing.TB, s *Set, r req) Decision {
	t.Helper()
	return s.Explain(context.Background(), r.input())
}

const (
	frontend = "spiffe://cluster.local/ns/default/sa/frontend"
	api      = "spiffe://cluster.local/ns/default/sa/api"
	admin    = "spiffe://cluster.local/ns/prod/sa/admin"
)

// allowPolicy is an ALLOW policy on app=api with the given rules YAML.
func policyDoc(name, ns, action, selectorApp, rules string) string {
	var b strings.Builder
	b.WriteString("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: " + name + "\n  namespace: " + ns + "\nspec:\n")
	if action != "" {
		b.WriteString("  action: " + action + "\n")
	}
	if selectorApp != "" {
		b.WriteString("  selector:\n    matchLabels:\n      app: " + selectorApp + "\n")
	}
	if rules != "" {
		b.WriteString("  rules:\n")
		for _, l := range strings.Split(strings.Trim(rules, "\n"), "\n") {
			b.WriteString("  " + l + "\n")
		}
	}
	return b.String()
}
