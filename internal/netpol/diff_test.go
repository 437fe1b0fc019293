package netpol

import (
	"sort"
	"strings"
	"testing"
)

func TestDiff(t *testing.T) {
	deny := np("shop", "default-deny", "podSelector: {}\npolicyTypes: [Ingress]")
	allow := np("shop", "web-to-db", "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: web}}}]\n  ports: [{port: 5432}, {port: 9000, endPort: 9001}]")
	old := load(t, lintPods, deny)
	neu := load(t, lintPods, deny, allow)

	d := Diff(old, neu, MatrixOptions{})
	if len(d.Changes) != 1 {
		t.Fatalf("changes %+v", d.Changes)
	}
	ch := d.Changes[0]
	if ch.From != "shop/web" || ch.To != "shop/db" || ch.Gained.String() != "TCP:5432,9000-9001" || !ch.Lost.IsEmpty() || ch.Before.String() != "none" {
		t.Errorf("change %+v (gained %s)", ch, ch.Gained)
	}
	// 3 pods: 9 pairs, one changed.
	if d.Unchanged != 8 {
		t.Errorf("unchanged %d, want 8", d.Unchanged)
	}
	// The other way round, the pair loses what it gained.
	back := Diff(neu, old, MatrixOptions{})
	if len(back.Changes) != 1 || back.Changes[0].Lost.String() != "TCP:5432,9000-9001" || !back.Changes[0].Gained.IsEmpty() {
		t.Errorf("reverse diff %+v", back.Changes)
	}
	// On one port only.
	if d := Diff(old, neu, MatrixOptions{Port: 8080, Protocol: TCP}); len(d.Changes) != 0 {
		t.Errorf("nothing changes on 8080: %+v", d.Changes)
	}
	if d := Diff(old, neu, MatrixOptions{Port: 9001, Protocol: TCP}); len(d.Changes) != 1 || d.Changes[0].Gained.String() != "TCP:9001" {
		t.Errorf("9001 is gained: %+v", d.Changes)
	}
}

// TestDiffPoliciesOnly: a directory of policies alone is compared with
// the old side's pods and namespaces.
func TestDiffPoliciesOnly(t *testing.T) {
	oldC := Parse(LoadOptions{}, "old.yaml", []byte(lintPods))
	newC := Parse(LoadOptions{}, "new.yaml", []byte(np("shop", "deny", "podSelector: {}\npolicyTypes: [Ingress]")))
	if len(newC.Pods) != 0 {
		t.Fatal("new side has no pods")
	}
	merged := newC.WithPodsFrom(oldC)
	if len(merged.Pods) != 3 || merged.Namespace("shop") == nil || merged.Namespace("shop").Implicit || merged.Namespace("shop").Labels["team"] != "shop" {
		t.Fatalf("merged %+v, namespace %+v", merged.Pods, merged.Namespace("shop"))
	}
	d := Diff(NewAnalyzer(oldC), NewAnalyzer(merged), MatrixOptions{})
	var lost []string
	for _, ch := range d.Changes {
		if ch.Lost.IsAll() && ch.After.IsEmpty() {
			lost = append(lost, ch.From+"→"+ch.To)
		}
	}
	// Everything into shop's two pods, except from themselves: 2 × 2.
	sort.Strings(lost)
	if got := strings.Join(lost, " "); got != "kube-system/coredns→shop/db kube-system/coredns→shop/web shop/db→shop/web shop/web→shop/db" {
		t.Errorf("lost %v", lost)
	}
	if len(d.Added)+len(d.Removed) != 0 {
		t.Errorf("added %v removed %v", d.Added, d.Removed)
	}
	// Pods in one side only are listed, not compared.
	other := Parse(LoadOptions{}, "o.yaml", []byte(strings.Replace(lintPods, "name: web,", "name: web2,", 1)))
	d = Diff(NewAnalyzer(oldC), NewAnalyzer(other), MatrixOptions{})
	if len(d.Added) != 1 || d.Added[0] != "shop/web2" || len(d.Removed) != 1 || d.Removed[0] != "shop/web" {
		t.Errorf("added %v removed %v", d.Added, d.Removed)
	}
}
