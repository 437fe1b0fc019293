package netpol

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metavalidation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// FuzzSelector holds the compiled selector to apimachinery's: for every
// valid selector and label set, both agree; a selector found
// unsatisfiable matches nothing.
func FuzzSelector(f *testing.F) {
	f.Add(`{"matchLabels":{"app":"a"}}`, `{"app":"a"}`)
	f.Add(`{"matchExpressions":[{"key":"tier","operator":"NotIn","values":["x","y"]}]}`, `{}`)
	f.Add(`{"matchExpressions":[{"key":"tier","operator":"In","values":["x"]},{"key":"tier","operator":"NotIn","values":["x"]}]}`, `{"tier":"x"}`)
	f.Add(`{"matchLabels":{"a":"1"},"matchExpressions":[{"key":"a","operator":"DoesNotExist"}]}`, `{"a":"1"}`)
	f.Add(`{"matchExpressions":[{"key":"k8s.io/x","operator":"Exists"}]}`, `{"k8s.io/x":""}`)
	f.Add(`{}`, `{"a":"b"}`)
	f.Fuzz(func(t *testing.T, selJSON, labelsJSON string) {
		var ls metav1.LabelSelector
		var set map[string]string
		if json.Unmarshal([]byte(selJSON), &ls) != nil || json.Unmarshal([]byte(labelsJSON), &set) != nil {
			return
		}
		if len(metavalidation.ValidateLabelSelector(&ls, metavalidation.LabelSelectorValidationOptions{}, field.NewPath("s"))) > 0 {
			return // Load refuses it
		}
		want, err := metav1.LabelSelectorAsSelector(&ls)
		if err != nil {
			return
		}
		s := compileSelector(&ls)
		got := s.matches(set)
		if got != want.Matches(labels.Set(set)) {
			t.Fatalf("selector %s on %v: compiled %v, apimachinery %v", selJSON, set, got, !got)
		}
		if got && !s.satisfiable() {
			t.Fatalf("selector %s matches %v but was found unsatisfiable", selJSON, set)
		}
		if got && s.mismatch(set) != "" || !got && s.mismatch(set) == "" {
			t.Fatalf("selector %s on %v: mismatch %q disagrees with matches=%v", selJSON, set, s.mismatch(set), got)
		}
		// Equal selectors have equal keys: matchLabels as In is the same.
		if k, ok := s.indexKey(); ok {
			key, val, _ := strings.Cut(k, "=")
			if got && set[key] != val {
				t.Fatalf("selector %s: index key %s, but matches %v", selJSON, k, set)
			}
		}
	})
}

// FuzzParse feeds the loader arbitrary files. It must not panic, every
// problem must say where it is, and what loads must analyze: Check and
// the matrices agree on every pair.
func FuzzParse(f *testing.F) {
	f.Add([]byte(upstreamPods(nil)))
	f.Add([]byte(listKubectl))
	f.Add([]byte(listJSON))
	f.Add([]byte(listFlow))
	f.Add([]byte(seedGraph))
	f.Add([]byte("apiVersion: v1\nkind: PodList\nitems:\n- metadata: {name: a}\n  spec: {containers: [{name: a, image: a, ports: [{name: http, containerPort: 80}]}]}\n  status: {podIP: 10.0.0.1}\n"))
	f.Add([]byte(np("x", "p", "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}, {namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}]\n  ports: [{port: 80, endPort: 90}, {port: serve-80-tcp}, {protocol: SCTP}]\negress: [{}]")))
	f.Add([]byte("---\n---\n...\n"))
	f.Add([]byte("{\"kind\": \"List\", \"apiVersion\": \"v1\", \"items\": [{}]} {\"kind\": \"Pod\"}"))
	f.Add([]byte("items:\n- kind: Pod\n  apiVersion: v1\nkind: List\napiVersion: v1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64<<10 {
			return
		}
		c := Parse(LoadOptions{}, "fuzz.yaml", data)
		for _, p := range c.Problems {
			if p.Source.File != "fuzz.yaml" || p.Message == "" || p.Severity == "" {
				t.Fatalf("problem without a place or a message: %+v", p)
			}
		}
		for _, p := range c.Pods {
			if c.Namespace(p.Namespace) == nil || p.Name == "" {
				t.Fatalf("pod %+v without its namespace", p)
			}
		}
		if len(c.Pods) > 12 {
			return
		}
		a := NewAnalyzer(c)
		all := a.Matrix(MatrixOptions{})
		m := a.Matrix(MatrixOptions{Port: 80, Protocol: TCP})
		for i := range c.Pods {
			for j := range c.Pods {
				v := a.Check(a.PodEndpoint(i), a.PodEndpoint(j), TCP, 80)
				if v.Allowed != m.Allowed(i, j) || v.Allowed != all.Ports(i, j).Contains(TCP, 80) {
					t.Fatalf("%s → %s: Check %v, matrix %v, every-port %s", c.Pods[i].ID(), c.Pods[j].ID(), v.Allowed, m.Allowed(i, j), all.Ports(i, j))
				}
				_ = v.Explain(a)
			}
		}
		a.Lint(LintOptions{})
	})
}

// FuzzParseGraph: a graph either fails with an error or generates
// policies that load back without problems.
func FuzzParseGraph(f *testing.F) {
	f.Add([]byte(seedGraph))
	f.Add([]byte("services: [{name: a, labels: {app: a}, ports: [53/UDP]}]\nedges: [a -> a, a -> 10.0.0.0/8 : 443, {from: 0.0.0.0/0, to: a, ports: [{port: 53, protocol: UDP}]}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := ParseGraph(data)
		if err != nil {
			return
		}
		gen, err := Generate(g, GenerateOptions{})
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := gen.WriteYAML(&buf, "fuzz"); err != nil {
			t.Fatal(err)
		}
		c := Parse(LoadOptions{}, "generated.yaml", buf.Bytes())
		if len(c.Problems) > 0 {
			t.Fatalf("generated policies do not load: %v\n%s", c.Problems, buf.Bytes())
		}
	})
}

// FuzzAudit: any audit log either builds a graph that generates, or errs.
func FuzzAudit(f *testing.F) {
	f.Add(auditLog)
	f.Fuzz(func(t *testing.T, log string) {
		g, _, err := GraphFromAudit(strings.NewReader(log), nil)
		if err != nil {
			return
		}
		if _, err := Generate(g, GenerateOptions{}); err != nil {
			t.Fatalf("an audit graph must generate: %v", err)
		}
	})
}
