package dev

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/policy"
)

func TestPlanGivesEveryListenerItsOwnAddress(t *testing.T) {
	for _, base := range []int{0, 18000} {
		specs, ingress, err := plan(base, "/tmp/agent.sock")
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]string{ingress: "ingress"}
		add := func(addr, what string) {
			if addr == "" {
				return
			}
			if prev, dup := seen[addr]; dup && !(what == "ingress outbound" && prev == "ingress") {
				t.Errorf("base %d: %s reuses %s (%s)", base, what, addr, prev)
			}
			seen[addr] = what
		}
		for _, s := range Services {
			spec := specs[s.Name]
			add(spec.App, s.Name+" app")
			add(spec.Inbound, s.Name+" inbound")
			add(spec.Metrics, s.Name+" metrics")
			for callee, o := range spec.Outbound {
				if s.Name == "ingress" {
					if callee != "frontend" || o.Listen != ingress {
						t.Errorf("ingress routes %s via %s", callee, o.Listen)
					}
					continue
				}
				add(o.Listen, s.Name+"→"+callee)
				if o.Upstream != specs[callee].Inbound || o.SPIFFEID != SPIFFEID(callee) {
					t.Errorf("%s→%s: %+v", s.Name, callee, o)
				}
			}
			if s.Name != "ingress" && len(spec.Outbound) != len(Services)-2 {
				t.Errorf("%s has %d outbound routes", s.Name, len(spec.Outbound))
			}
		}
		if base != 0 {
			if ingress != "127.0.0.1:18000" {
				t.Errorf("ingress %s", ingress)
			}
			// The control plane takes base+90 and up: the demo must stay below.
			for addr := range seen {
				_, p, _ := net.SplitHostPort(addr)
				if n, _ := strconv.Atoi(p); n < base || n >= base+90 {
					t.Errorf("demo address %s is outside base..base+89", addr)
				}
			}
		}
	}
}

func TestTopologyMatchesTheExamplePolicies(t *testing.T) {
	// Every call the demo apps make on GET / must be allowed by the example
	// matrix, and no other pair: the demo shows the seeds' matrix.
	set, problems := policy.LoadAndCompile(t.Context(), []string{"../../examples/policies/matrix"}, nil, policy.Options{TrustDomain: TrustDomain})
	if set == nil {
		t.Fatal(problems)
	}
	for _, from := range Services {
		for _, to := range Services {
			if from.Name == to.Name || to.Name == "ingress" {
				continue
			}
			want := false
			for _, c := range from.Calls {
				want = want || c == to.Name
			}
			in := &policy.Input{
				Source:      policy.Peer{Principal: SPIFFEID(from.Name)},
				Destination: policy.Destination{Principal: SPIFFEID(to.Name), Namespace: "default", Labels: map[string]string{"app": to.Name}, Port: 8080},
				Request:     &policy.Request{Method: "GET", Path: "/"},
				Connection:  policy.Connection{MTLS: true},
			}
			if got := set.Evaluate(t.Context(), in).Allow; got != want {
				t.Errorf("%s → %s: allowed=%v, the demo expects %v", from.Name, to.Name, got, want)
			}
		}
	}
}

func TestResetOnlyWipesDevDirectories(t *testing.T) {
	other := t.TempDir()
	keep := filepath.Join(other, "precious.txt")
	if err := os.WriteFile(keep, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := prepareDataDir(other, true); err == nil || !strings.Contains(err.Error(), "refusing to delete") {
		t.Fatalf("reset of a foreign directory: %v", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatal("a foreign directory lost a file")
	}
	dir := filepath.Join(t.TempDir(), "dev")
	if _, err := prepareDataDir(dir, false); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "stale")
	os.WriteFile(stale, nil, 0o600)
	if _, err := prepareDataDir(dir, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatal("reset kept old files")
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir mode: %v %v", fi, err)
	}
}

func TestPoliciesSeededFromTheBuiltInCopy(t *testing.T) {
	// This package's directory has no examples/policies/matrix, so the copy
	// built into the binary is used, and it matches the repository's.
	dir := t.TempDir()
	pd, err := preparePolicies(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := filepath.Glob("../../examples/policies/matrix/*.yaml")
	got, _ := filepath.Glob(filepath.Join(pd, "*.yaml"))
	if len(got) == 0 || len(got) != len(want) {
		t.Fatalf("seeded %v, the repository has %v", got, want)
	}
	for _, w := range want {
		a, _ := os.ReadFile(w)
		b, _ := os.ReadFile(filepath.Join(pd, filepath.Base(w)))
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs from the built-in copy", filepath.Base(w))
		}
	}
	// A second start keeps the user's edits.
	os.WriteFile(filepath.Join(pd, "mine.yaml"), []byte("# mine\n"), 0o644)
	if _, err := preparePolicies(dir, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(pd, "mine.yaml")); err != nil {
		t.Fatal("a restart lost the user's policy")
	}
	// --permissive adds, and without it removes, the overlay.
	od, _ := prepareOverlay(dir, true)
	if _, err := os.Stat(filepath.Join(od, "permissive.yaml")); err != nil {
		t.Fatal(err)
	}
	set, problems := policy.LoadAndCompile(t.Context(), []string{pd, od}, nil, policy.Options{TrustDomain: TrustDomain})
	if set == nil {
		t.Fatal(problems)
	}
	if m := set.MTLS("default", map[string]string{"app": "api"}, 8080); m.Mode != policy.MTLSPermissive {
		t.Fatalf("permissive overlay: %+v", m)
	}
	prepareOverlay(dir, false)
	if _, err := os.Stat(filepath.Join(od, "permissive.yaml")); !os.IsNotExist(err) {
		t.Fatal("the overlay stayed")
	}
}

func TestFeedLines(t *testing.T) {
	var out bytes.Buffer
	f, err := newFeed(&out, true, filepath.Join(t.TempDir(), "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	f.decision([]byte(`{"timestamp":"2026-12-01T10:00:00Z","source_principal":"spiffe://example.org/ns/default/sa/frontend","destination":"spiffe://example.org/ns/default/sa/database","method":"GET","path":"/","decision":"deny","policy":null,"rule":null,"reason":"no ALLOW policy matched","mtls":true}`))
	if out.Len() != 0 {
		t.Fatal("printed before start")
	}
	f.start()
	f.decision([]byte(`{"timestamp":"2026-12-01T10:00:01Z","source_principal":"spiffe://example.org/ns/default/sa/frontend","destination":"spiffe://example.org/ns/default/sa/api","method":"GET","path":"/x","decision":"allow","policy":"default/api-allow","rule":0,"reason":"allowed","mtls":true}`))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%q", out.String())
	}
	if !strings.Contains(lines[0], red+"DENY") || !strings.Contains(lines[0], "frontend  → database") || !strings.Contains(lines[0], "no ALLOW policy matched") {
		t.Errorf("deny line %q", lines[0])
	}
	if !strings.Contains(lines[1], green+"ALLOW") || !strings.Contains(lines[1], "default/api-allow rule 0") {
		t.Errorf("allow line %q", lines[1])
	}
	data, _ := os.ReadFile(f.audit.Name())
	if strings.Count(string(data), "\n") != 2 {
		t.Errorf("audit log %q", data)
	}
}

// A workload that exits during start-up is waited for once by startDemo;
// stopping the mesh afterwards must not wait for it again (it hung there,
// so that dev never reported the failed workload).
func TestStopChildrenAfterAWorkloadExited(t *testing.T) {
	dir := t.TempDir()
	k, err := startChild("/bin/false", "cache", filepath.Join(dir, "spec.json"), filepath.Join(dir, "cache.log"), nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-k.done:
	case <-time.After(30 * time.Second):
		t.Fatal("/bin/false did not exit")
	}
	if k.err == nil {
		t.Fatal("no exit error recorded")
	}
	stopped := make(chan struct{})
	go func() {
		stopChildren([]*child{k})
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("stopChildren still waits for a workload that has exited")
	}
}
