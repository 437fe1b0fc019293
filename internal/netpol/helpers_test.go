package netpol

import (
	"fmt"
	"sort"
	"strings"
	"testing"
)

// upstreamPods is the e2e suite's model: namespaces x, y, z (labelled
// ns=<name>, as the suite labels them, plus the API's
// kubernetes.io/metadata.name), pods a, b, c in each (labelled pod=<name>),
// every pod serving 80 and 81 over TCP, UDP and SCTP on container ports
// named serve-<port>-<protocol>. Pod IPs are 10.<ns>.0.<pod> (x=1, y=2,
// z=3; a=1, b=2, c=3), so ipBlock cases can name them.
//
// extra adds labels (YAML flow entries such as "ns2: updated") to a
// namespace ("y") or a pod ("x/b").
func upstreamPods(extra map[string]string) string {
	var b strings.Builder
	more := func(k string) string {
		if e := extra[k]; e != "" {
			return ", " + e
		}
		return ""
	}
	for ni, ns := range []string{"x", "y", "z"} {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %q\n  labels: {ns: %q%s}\n", ns, ns, more(ns))
		for pi, pod := range []string{"a", "b", "c"} {
			fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: %q\n  namespace: %q\n  labels: {pod: %q%s}\nspec:\n  containers:\n", pod, ns, pod, more(ns+"/"+pod))
			for _, port := range []int{80, 81} {
				for _, proto := range []string{"TCP", "UDP", "SCTP"} {
					fmt.Fprintf(&b, "  - name: cont-%d-%s\n    image: registry.k8s.io/e2e-test-images/agnhost:2.53\n    ports:\n    - {containerPort: %d, name: serve-%d-%s, protocol: %s}\n",
						port, strings.ToLower(proto), port, port, strings.ToLower(proto), proto)
				}
			}
			fmt.Fprintf(&b, "status:\n  phase: Running\n  podIP: 10.%d.0.%d\n  podIPs: [{ip: 10.%d.0.%d}]\n", ni+1, pi+1, ni+1, pi+1)
		}
	}
	return b.String()
}

// load parses manifests and fails the test on any problem.
func load(t testing.TB, manifests ...string) *Analyzer {
	t.Helper()
	c := Parse(LoadOptions{}, "test.yaml", []byte(strings.Join(manifests, "\n---\n")))
	for _, p := range c.Problems {
		t.Errorf("problem: %s", p)
	}
	if t.Failed() {
		t.FailNow()
	}
	return NewAnalyzer(c)
}

// reach is an expected reachability table over pod IDs, built the way the
// e2e suite states expectations: everything allowed, then exceptions.
type reach struct {
	pods []string
	ok   map[[2]string]bool
}

func newReach(a *Analyzer) *reach {
	r := &reach{ok: map[[2]string]bool{}}
	for _, p := range a.pods {
		r.pods = append(r.pods, p.ID())
	}
	for _, f := range r.pods {
		for _, t := range r.pods {
			r.ok[[2]string{f, t}] = true
		}
	}
	return r
}

// match reports whether pod id matches a pattern: "x/a", "x/*", "*/a" or "*".
func match(pattern, id string) bool {
	if pattern == "*" {
		return true
	}
	pn, pp, _ := strings.Cut(pattern, "/")
	n, p, _ := strings.Cut(id, "/")
	return (pn == "*" || pn == n) && (pp == "*" || pp == p)
}

// set marks every from→to pair matching the patterns. A pod's traffic to
// itself stays allowed: the API documents that a pod cannot block it (the
// e2e suite ignores those probes).
func (r *reach) set(from, to string, allowed bool) *reach {
	for _, f := range r.pods {
		for _, t := range r.pods {
			if f != t && match(from, f) && match(to, t) {
				r.ok[[2]string{f, t}] = allowed
			}
		}
	}
	return r
}

func (r *reach) deny(from, to string) *reach  { return r.set(from, to, false) }
func (r *reach) allow(from, to string) *reach { return r.set(from, to, true) }

// verify compares the matrix on one port with the table, and checks that
// Check, the explained path, agrees with the matrix cell by cell.
func (r *reach) verify(t *testing.T, a *Analyzer, proto Protocol, port int32) {
	t.Helper()
	m := a.Matrix(MatrixOptions{Port: port, Protocol: proto})
	all := a.Matrix(MatrixOptions{})
	var wrong []string
	for i, from := range m.Endpoints {
		for j, to := range m.Endpoints {
			want := r.ok[[2]string{from.String(), to.String()}]
			got := m.Allowed(i, j)
			if got != want {
				wrong = append(wrong, fmt.Sprintf("%s → %s: got %v, want %v", from, to, got, want))
			}
			v := a.Check(from, to, proto, port)
			if v.Allowed != got {
				t.Errorf("%s → %s %s %d: Check says %v (%s), matrix says %v", from, to, proto, port, v.Allowed, v.Reason, got)
			}
			if in := all.Ports(i, j).Contains(proto, port); in != got {
				t.Errorf("%s → %s %s %d: every-port matrix says %v (%s), port matrix %v", from, to, proto, port, in, all.Ports(i, j), got)
			}
		}
	}
	if len(wrong) > 0 {
		sort.Strings(wrong)
		t.Errorf("%s %d: %d cells differ:\n  %s\n%s", proto, port, len(wrong), strings.Join(wrong, "\n  "), render(m))
	}
}

func render(m *Matrix) string {
	var b strings.Builder
	b.WriteString("      ")
	for _, e := range m.Endpoints {
		fmt.Fprintf(&b, " %-4s", e)
	}
	b.WriteByte('\n')
	for i, e := range m.Endpoints {
		fmt.Fprintf(&b, "%-6s", e)
		for j := range m.Endpoints {
			c := "X"
			if m.Allowed(i, j) {
				c = "."
			}
			fmt.Fprintf(&b, " %-4s", c)
		}
		b.WriteByte('\n')
	}
	return b.String()
}
