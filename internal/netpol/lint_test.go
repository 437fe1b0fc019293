package netpol

import (
	"fmt"
	"strings"
	"testing"
)

const lintPods = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: web, image: w, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {containers: [{name: db, image: d, ports: [{name: postgres, containerPort: 5432}]}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {containers: [{name: dns, image: c}]}
status: {podIP: 10.0.9.9}
`

func lintOf(t *testing.T, policies ...string) map[string][]Finding {
	t.Helper()
	a := load(t, append([]string{lintPods}, policies...)...)
	return lintRules(a)
}

func noFinding(t *testing.T, rules map[string][]Finding, rule, contains string) {
	t.Helper()
	for _, f := range rules[rule] {
		if strings.Contains(f.String(), contains) {
			t.Errorf("unexpected %s finding: %s", rule, f)
		}
	}
}

func TestLintRules(t *testing.T) {
	denyAll := np("shop", "default-deny", "podSelector: {}\npolicyTypes: [Ingress, Egress]")
	dns := np("shop", "allow-dns", `
podSelector: {}
policyTypes: [Egress]
egress:
- to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
  ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]`)

	t.Run("a clean namespace", func(t *testing.T) {
		rules := lintOf(t, denyAll, dns, np("shop", "web-to-db", `
podSelector: {matchLabels: {app: db}}
ingress:
- from: [{podSelector: {matchLabels: {app: web}}}]
  ports: [{port: postgres, protocol: TCP}]`))
		for rule, fs := range rules {
			for _, f := range fs {
				if f.Namespace == "shop" {
					t.Errorf("%s: %s", rule, f)
				}
			}
		}
	})
	t.Run("no default deny", func(t *testing.T) {
		rules := lintOf(t, np("shop", "db", "podSelector: {matchLabels: {app: db}}\ningress: []"))
		wantFinding(t, rules, RuleNoDefaultDenyIngress, SeverityWarning, "now 1 of 2 pods are open (web)")
		wantFinding(t, rules, RuleNoDefaultDenyEgress, SeverityInfo, "namespace shop")
	})
	t.Run("DNS blocked", func(t *testing.T) {
		rules := lintOf(t, denyAll)
		wantFinding(t, rules, RuleDNSBlocked, SeverityError, "UDP 53")
		wantFinding(t, rules, RuleDNSBlocked, SeverityWarning, "TCP 53")
		// UDP only: TCP still a warning.
		rules = lintOf(t, denyAll, np("shop", "udp-dns", "podSelector: {}\npolicyTypes: [Egress]\negress:\n- to: [{namespaceSelector: {}}]\n  ports: [{port: 53, protocol: UDP}]"))
		noFinding(t, rules, RuleDNSBlocked, "UDP 53")
		wantFinding(t, rules, RuleDNSBlocked, SeverityWarning, "TCP 53")
		// A node-local cache through an ipBlock counts.
		rules = lintOf(t, denyAll, np("shop", "nodelocal", "podSelector: {}\npolicyTypes: [Egress]\negress:\n- to: [{ipBlock: {cidr: 169.254.20.10/32}}]\n  ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]"))
		if len(rules[RuleDNSBlocked]) != 0 {
			t.Errorf("ipBlock DNS: %v", rules[RuleDNSBlocked])
		}
		// The DNS pods' own ingress counts too.
		rules = lintOf(t, denyAll, dns, np("kube-system", "lockdown", "podSelector: {}\npolicyTypes: [Ingress]"))
		wantFinding(t, rules, RuleDNSBlocked, SeverityError, "UDP 53")
	})
	t.Run("selects no pod", func(t *testing.T) {
		rules := lintOf(t, np("shop", "ghost", "podSelector: {matchLabels: {app: api}}\ningress: []"))
		wantFinding(t, rules, RuleSelectsNoPod, SeverityWarning, "app=api selects none of the 2 pods")
		rules = lintOf(t, np("empty", "p", "podSelector: {}\ningress: []"))
		wantFinding(t, rules, RuleSelectsNoPod, SeverityInfo, "namespace empty has no pods")
	})
	t.Run("ignored rules", func(t *testing.T) {
		rules := lintOf(t, np("shop", "typed", "podSelector: {}\npolicyTypes: [Egress]\ningress:\n- from: [{podSelector: {}}]\negress: [{}]"))
		wantFinding(t, rules, RuleIgnoredRules, SeverityError, "has ingress rules, but policyTypes [Egress] leaves Ingress out")
	})
	t.Run("unsatisfiable selectors", func(t *testing.T) {
		rules := lintOf(t, np("shop", "never", `
podSelector: {matchLabels: {app: web}, matchExpressions: [{key: app, operator: NotIn, values: [web]}]}
ingress:
- from: [{podSelector: {matchExpressions: [{key: tier, operator: Exists}, {key: tier, operator: DoesNotExist}]}}]`))
		wantFinding(t, rules, RuleUnsatisfiable, SeverityError, "spec.podSelector")
		wantFinding(t, rules, RuleUnsatisfiable, SeverityError, "spec.ingress[0].from[0]")
	})
	t.Run("peers matching nothing", func(t *testing.T) {
		rules := lintOf(t, np("shop", "p", `
podSelector: {matchLabels: {app: db}}
ingress:
- from: [{namespaceSelector: {matchLabels: {name: monitoring}}}, {podSelector: {matchLabels: {app: gone}}}, {podSelector: {matchLabels: {app: web}}}]`))
		wantFinding(t, rules, RulePeerMatchesNothing, SeverityWarning, "from[0]: no namespace in the input has labels name=monitoring")
		wantFinding(t, rules, RulePeerMatchesNothing, SeverityWarning, "from[1]: pods app=gone in namespace shop: none in the input")
		noFinding(t, rules, RulePeerMatchesNothing, "from[2]")
	})
	t.Run("except covering the cidr", func(t *testing.T) {
		rules := lintOf(t, np("shop", "p", `
podSelector: {}
policyTypes: [Egress]
egress:
- to: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.0/25, 10.0.0.128/25]}}, {ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.0/25, 10.0.0.128/26]}}]`))
		wantFinding(t, rules, RuleExceptCoversCIDR, SeverityError, "to[0].ipBlock")
		noFinding(t, rules, RuleExceptCoversCIDR, "to[1]")
	})
	t.Run("named ports", func(t *testing.T) {
		rules := lintOf(t, np("shop", "p", `
podSelector: {matchLabels: {app: db}}
ingress:
- ports: [{port: postgres}, {port: pg}, {port: postgres, protocol: UDP}]
egress:
- to: [{podSelector: {matchLabels: {app: web}}}]
  ports: [{port: http}, {port: https}]`))
		wantFinding(t, rules, RuleNamedPortUndeclared, SeverityWarning, `spec.ingress[0].ports[1].port: named port "pg"`)
		wantFinding(t, rules, RuleNamedPortUndeclared, SeverityWarning, `spec.ingress[0].ports[2].port: named port "postgres" on UDP`)
		wantFinding(t, rules, RuleNamedPortUndeclared, SeverityWarning, `spec.egress[0].ports[1].port: named port "https"`)
		noFinding(t, rules, RuleNamedPortUndeclared, "ports[0]")
	})
	t.Run("broad peers", func(t *testing.T) {
		rules := lintOf(t, np("shop", "p", `
podSelector: {matchLabels: {app: db}}
ingress:
- from: [{namespaceSelector: {}}, {ipBlock: {cidr: 0.0.0.0/0}}, {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]
  ports: [{port: postgres}]
- ports: [{port: 22}]
- from: [{namespaceSelector: {}}]
  ports: [{port: 8080}]`))
		wantFinding(t, rules, RuleBroadPeer, SeverityWarning, "from[0]: namespaceSelector: {} lets every pod in every namespace reach TCP 5432 (postgres)")
		wantFinding(t, rules, RuleBroadPeer, SeverityWarning, "from[1]: ipBlock 0.0.0.0/0 lets any address")
		wantFinding(t, rules, RuleBroadPeer, SeverityWarning, "spec.ingress[1]: no from: every source inside and outside the cluster may reach TCP 22 (ssh)")
		noFinding(t, rules, RuleBroadPeer, "from[2]")
		noFinding(t, rules, RuleBroadPeer, "ingress[2]")
	})
	t.Run("ports without protocol and duplicates", func(t *testing.T) {
		a := np("shop", "a", "podSelector: {matchLabels: {app: db}}\ningress:\n- ports: [{port: 5432}]")
		b := np("shop", "b", "podSelector: {matchLabels: {app: db}}\npolicyTypes: [Ingress]\ningress:\n- ports: [{port: 5432, protocol: TCP}]")
		rules := lintOf(t, a, b)
		wantFinding(t, rules, RulePortWithoutProtocol, SeverityInfo, "NetworkPolicy shop/a spec.ingress[0].ports[0]")
		wantFinding(t, rules, RuleDuplicatePolicy, SeverityWarning, "NetworkPolicy shop/b: same selector, types and rules as NetworkPolicy shop/a")
	})
	t.Run("peers ORed", func(t *testing.T) {
		or := np("shop", "or", `
podSelector: {matchLabels: {app: db}}
ingress:
- from: [{podSelector: {matchLabels: {app: web}}}, {namespaceSelector: {matchLabels: {team: shop}}}]`)
		rules := lintOf(t, or)
		wantFinding(t, rules, RulePeersORed, SeverityWarning, "lets every pod of namespace shop in")
		other := strings.Replace(or, "team: shop", "team: other", 1)
		rules = lintOf(t, other)
		wantFinding(t, rules, RulePeersORed, SeverityInfo, "are ORed, not ANDed")
	})
	t.Run("exclusions", func(t *testing.T) {
		a := load(t, lintPods, denyAll)
		fs := a.Lint(LintOptions{ExcludeNamespaces: []string{"shop", "kube-system"}})
		for _, f := range fs {
			if f.Rule == RuleDNSBlocked || f.Rule == RuleNoDefaultDenyIngress {
				t.Errorf("excluded namespace reported: %s", f)
			}
		}
		fs = a.Lint(LintOptions{DNSNamespace: "dns", DNSLabels: map[string]string{"app": "resolver"}})
		found := false
		for _, f := range fs {
			found = found || f.Rule == RuleDNSBlocked && strings.Contains(f.Message, "stand-in")
		}
		if !found {
			t.Errorf("a DNS target not in the input is checked with a stand-in: %v", fs)
		}
	})
}

func TestLintOrder(t *testing.T) {
	rules := lintOf(t, np("shop", "typed", "podSelector: {}\npolicyTypes: [Egress]\ningress: [{}]"))
	var all []Finding
	for _, fs := range rules {
		all = append(all, fs...)
	}
	a := load(t, lintPods, np("shop", "typed", "podSelector: {}\npolicyTypes: [Egress]\ningress: [{}]"))
	fs := a.Lint(LintOptions{})
	if len(fs) != len(all) {
		t.Fatalf("%d findings, %d by rule", len(fs), len(all))
	}
	for i := 1; i < len(fs); i++ {
		if fs[i].Severity.rank() > fs[i-1].Severity.rank() {
			t.Errorf("not sorted by severity: %s after %s", fs[i], fs[i-1])
		}
	}
	if fs[0].Severity != SeverityError {
		t.Errorf("errors first: %s", fs[0])
	}
	_ = fmt.Sprint(fs)
}
