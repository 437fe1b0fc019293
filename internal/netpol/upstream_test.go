package netpol

import (
	"fmt"
	"strings"
	"testing"
)

// probe is one port the e2e suite probes, and what it expects there.
type probe struct {
	proto Protocol
	port  int32
	want  func(r *reach)
}

// np writes a NetworkPolicy manifest; spec is indented YAML under spec:.
func np(ns, name, spec string) string {
	return fmt.Sprintf("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: %s\n  namespace: %q\nspec:\n%s", name, ns, indent(spec, "  "))
}

func indent(s, by string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = by + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

func none(*reach) {}

// TestUpstreamScenarios runs the scenarios of the Kubernetes e2e suite
// (test/e2e/network/netpol) on its model: namespaces x/y/z, pods a/b/c,
// ports 80/81 over TCP, UDP and SCTP. Expectations are the suite's, with
// all nine pods present (the suite starts each case with a subset).
func TestUpstreamScenarios(t *testing.T) {
	denyIngressX := np("x", "deny-ingress", "podSelector: {}\npolicyTypes: [Ingress]")
	cases := []struct {
		name     string
		extra    map[string]string // labels added to namespaces/pods
		policies []string
		probes   []probe
	}{
		{name: "default-deny-ingress", policies: []string{denyIngressX},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("*", "x/*") }}}},
		{name: "default-deny-all", policies: []string{np("x", "deny-all", "podSelector: {}\npolicyTypes: [Ingress, Egress]")},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("*", "x/*").deny("x/*", "*") }}}},
		{name: "allow from pods within the namespace by podSelector", policies: []string{np("x", "x-a-allows-x-b", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{podSelector: {matchLabels: {pod: b}}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("*", "x/a").allow("x/b", "x/a") }}}},
		{name: "deny all ingress, then allow all to a target", policies: []string{
			np("x", "deny-all", "podSelector: {}\ningress: []"),
			np("x", "allow-all-to-a", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{podSelector: {}, namespaceSelector: {}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("*", "x/b").deny("*", "x/c") }}}},
		{name: "allow from pods in all namespaces", policies: []string{np("x", "allow-from-another-ns", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {}}}]`)},
			probes: []probe{{TCP, 80, none}}},
		{name: "allow only from a different namespace by namespaceSelector", policies: []string{np("x", "allow-client-a-via-ns-selector", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("x/*", "x/a").deny("z/*", "x/a") }}}},
		{name: "podSelector with matchExpressions", policies: []string{np("x", "x-a-allows-x-b", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("*", "x/a").allow("x/b", "x/a") }}}},
		{name: "namespaceSelector with matchExpressions", policies: []string{np("x", "allow-ns-y-match-selector", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: ["y"]}]}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("x/*", "x/a").deny("z/*", "x/a") }}}},
		{name: "podSelector OR namespaceSelector (two peers)", policies: []string{np("x", "allow-ns-y-match-selector", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: ["x"]}]}
  - podSelector: {matchLabels: {pod: b}}`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("x/c", "x/a") }}}},
		{name: "podSelector AND namespaceSelector (one peer)", policies: []string{np("x", "allow-ns-y-podselector-and-nsselector", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: ["x"]}]}
    podSelector: {matchLabels: {pod: b}}`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("*", "x/a").allow("y/b", "x/a").allow("z/b", "x/a") }}}},
		{name: "multiple podSelectors and namespaceSelectors", policies: []string{np("x", "allow-ns-y-z-pod-b-c", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: ["x"]}]}
    podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("x/*", "x/a").deny("y/a", "x/a").deny("z/a", "x/a") }}}},
		{name: "any of several podSelectors", policies: []string{np("x", "allow-ns-x-pod-b-c", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{podSelector: {matchLabels: {pod: b}}}, {podSelector: {matchLabels: {pod: c}}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("*", "x/a").allow("x/b", "x/a").allow("x/c", "x/a") }}}},
		{name: "only from a pod in a different namespace", policies: []string{np("x", "allow-ns-y-pod-a-via-namespace-pod-selector", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}, podSelector: {matchLabels: {pod: a}}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("*", "x/a").allow("y/a", "x/a") }}}},
		{name: "ports", policies: []string{np("x", "allow-client-a-via-ns-selector", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]
  ports: [{port: 81, protocol: TCP}]`)},
			probes: []probe{
				{TCP, 81, func(r *reach) { r.deny("x/*", "x/a").deny("z/*", "x/a") }},
				{TCP, 80, func(r *reach) { r.deny("*", "x/a") }},
			}},
		{name: "stacked policies with overlapping podSelectors (union)", policies: []string{
			np("x", "allow-client-a-via-ns-selector", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]
  ports: [{port: 81, protocol: TCP}]`),
			np("x", "allow-client-a-via-ns-selector-80", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]
  ports: [{port: 80, protocol: TCP}]`)},
			probes: []probe{
				{TCP, 81, func(r *reach) { r.deny("x/*", "x/a").deny("z/*", "x/a") }},
				{TCP, 80, func(r *reach) { r.deny("x/*", "x/a").deny("z/*", "x/a") }},
			}},
		{name: "allow-all (an empty rule)", policies: []string{np("x", "allow-all", "podSelector: {}\ningress: [{}]")},
			probes: []probe{{TCP, 80, none}, {TCP, 81, none}}},
		{name: "ingress on one named port", policies: []string{np("x", "allow-all", `
podSelector: {}
ingress:
- ports: [{port: serve-81-tcp}]`)},
			probes: []probe{{TCP, 81, none}, {TCP, 80, func(r *reach) { r.deny("*", "x/*") }}}},
		{name: "ingress from a namespace on one named port", policies: []string{np("x", "allow-client-a-via-ns-selector-80", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]
  ports: [{port: serve-80-tcp, protocol: TCP}]`)},
			probes: []probe{
				{TCP, 80, func(r *reach) { r.deny("x/*", "x/a").deny("z/*", "x/a") }},
				{TCP, 81, func(r *reach) { r.deny("*", "x/a") }},
			}},
		{name: "a named port resolves on its protocol only", policies: []string{np("x", "udp-name-on-tcp", `
podSelector: {matchLabels: {pod: a}}
ingress:
- ports: [{port: serve-80-udp}]`)},
			probes: []probe{
				{TCP, 80, func(r *reach) { r.deny("*", "x/a") }},
				{UDP, 80, func(r *reach) { r.deny("*", "x/a") }},
			}},
		{name: "egress on one named port (resolved on the destination)", policies: []string{np("x", "allow-egress", `
podSelector: {}
policyTypes: [Egress]
egress:
- ports: [{port: serve-80-tcp}]`)},
			probes: []probe{{TCP, 80, none}, {TCP, 81, func(r *reach) { r.deny("x/*", "*") }}}},
		{name: "an empty ingress list allows nothing", policies: []string{np("x", "allow-all-mutate-to-deny-all", "podSelector: {}\ningress: []")},
			probes: []probe{{TCP, 81, func(r *reach) { r.deny("*", "x/*") }}}},
		{name: "namespace label not yet present", policies: []string{np("x", "allow-client-a-via-ns-selector", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("*", "x/a") }}}},
		{name: "namespace label added", extra: map[string]string{"y": "ns2: updated"}, policies: []string{np("x", "allow-client-a-via-ns-selector", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("*", "x/a").allow("y/*", "x/a") }}}},
		{name: "pod label added", extra: map[string]string{"x/b": "pod2: updated"}, policies: []string{np("x", "allow-client-a-via-pod-selector", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{podSelector: {matchLabels: {pod: b, pod2: updated}}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("*", "x/a").allow("x/b", "x/a") }}}},
		{name: "deny ingress from pods in other namespaces", policies: []string{np("x", "deny-empty-policy", `
podSelector: {}
ingress:
- from: [{podSelector: {matchLabels: {}}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("y/*", "x/*").deny("z/*", "x/*") }}}},
		{name: "isolation follows a pod label", extra: map[string]string{"x/a": "target: isolated"}, policies: []string{
			np("x", "deny-ingress-via-label-selector", "podSelector: {matchLabels: {target: isolated}}\npolicyTypes: [Ingress]")},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("*", "x/a") }}}},
		{name: "deny egress from a pod", policies: []string{np("x", "deny-egress-pod-a", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]")},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("x/a", "*") }}}},
		{name: "deny egress from all pods in a namespace", policies: []string{np("x", "deny-egress-ns-x", "podSelector: {}\npolicyTypes: [Egress]")},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("x/*", "*") }}}},
		{name: "ingress and egress together", policies: []string{np("x", "allow-client-a-via-pod-selector", `
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress, Ingress]
ingress:
- from: [{podSelector: {matchLabels: {pod: b}}}]
egress:
- ports: [{port: 80}]`)},
			probes: []probe{
				{TCP, 80, func(r *reach) { r.deny("*", "x/a").allow("x/b", "x/a") }},
				{TCP, 81, func(r *reach) { r.deny("*", "x/a").deny("x/a", "*").allow("x/b", "x/a") }},
			}},
		{name: "egress denied on the client even where the server allows it", policies: []string{
			np("x", "allow-to-ns-y-pod-a", `
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}, podSelector: {matchLabels: {pod: a}}}]`),
			np("y", "allow-from-xa-on-ya-match-selector", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "x"}}, podSelector: {matchLabels: {pod: a}}}]`),
			np("y", "allow-from-xa-on-yb-match-selector", `
podSelector: {matchLabels: {pod: b}}
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "x"}}, podSelector: {matchLabels: {pod: a}}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) {
				r.deny("x/a", "*").deny("*", "y/a").allow("x/a", "y/a").deny("*", "y/b")
			}}}},
		{name: "egress to a server in another namespace by pod and namespace selector", policies: []string{np("x", "allow-to-ns-y-pod-a", `
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}, podSelector: {matchLabels: {pod: a}}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("x/a", "*").allow("x/a", "y/a") }}}},
		{name: "any port on one protocol", policies: []string{np("x", "allow-ingress-by-proto", `
podSelector: {matchLabels: {pod: a}}
ingress:
- ports: [{protocol: TCP}]`)},
			probes: []probe{{TCP, 80, none}, {UDP, 80, func(r *reach) { r.deny("*", "x/a") }}}},
		{name: "an allow-all ingress policy takes precedence", policies: []string{
			np("x", "allow-ingress-port-80", "podSelector: {}\ningress:\n- ports: [{port: 80}]"),
			np("x", "allow-ingress", "podSelector: {}\ningress: [{}]")},
			probes: []probe{{TCP, 81, none}}},
		{name: "one port only, before the allow-all", policies: []string{np("x", "allow-ingress-port-80", "podSelector: {}\ningress:\n- ports: [{port: 80}]")},
			probes: []probe{{TCP, 81, func(r *reach) { r.deny("*", "x/*") }}}},
		{name: "an allow-all egress policy takes precedence", policies: []string{
			np("x", "allow-egress-port-80", "podSelector: {}\npolicyTypes: [Egress]\negress:\n- ports: [{port: 80}]"),
			np("x", "allow-egress", "podSelector: {}\npolicyTypes: [Egress]\negress: [{}]")},
			probes: []probe{{TCP, 81, none}, {TCP, 80, none}}},
		{name: "egress to a server in a CIDR block", policies: []string{np("x", "allow-client-a-via-cidr-egress-rule", `
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to: [{ipBlock: {cidr: 10.2.0.2/32}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("x/a", "*").allow("x/a", "y/b") }}}},
		{name: "ipBlock except", policies: []string{np("x", "allow-client-a-via-cidr-egress-rule", `
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.2/32]}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("x/a", "x/b") }}}},
		{name: "an IP in both a cidr and an except is allowed by another policy", policies: []string{
			np("x", "allow-client-a-via-cidr-egress-rule", `
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.2/32]}}]`),
			np("x", "allow-client-a-to-x-b", `
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to: [{ipBlock: {cidr: 10.1.0.2/32}}]`)},
			probes: []probe{{TCP, 80, none}}},
		{name: "ingress and egress controlled independently", policies: []string{
			np("x", "allow-egress-for-target", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress: [{}]"),
			np("x", "deny-ingress-via-label-selector", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]")},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("*", "x/a") }}}},
		{name: "SCTP is not TCP", policies: []string{denyIngressX, np("x", "allow-only-sctp-ingress-on-port-81", `
podSelector: {matchLabels: {pod: a}}
ingress:
- ports: [{port: 81, protocol: SCTP}]`)},
			probes: []probe{
				{TCP, 81, func(r *reach) { r.deny("*", "x/*") }},
				{SCTP, 81, func(r *reach) { r.deny("*", "x/b").deny("*", "x/c") }},
			}},
		{name: "a policy allowing only SCTP isolates the pod for TCP", policies: []string{np("x", "allow-only-sctp-ingress-on-port-80", `
podSelector: {matchLabels: {pod: a}}
ingress:
- ports: [{port: 80, protocol: SCTP}]`)},
			probes: []probe{{TCP, 81, func(r *reach) { r.deny("*", "x/a") }}, {SCTP, 80, none}}},
		{name: "a policy allowing only UDP does not allow TCP", policies: []string{np("x", "allow-only-udp-ingress-on-port-81", `
podSelector: {matchLabels: {pod: a}}
ingress:
- ports: [{port: 81, protocol: UDP}]`)},
			probes: []probe{{TCP, 81, func(r *reach) { r.deny("*", "x/a") }}, {UDP, 81, none}}},
		{name: "namespaceSelector with the default namespace label", policies: []string{np("x", "allow-client-a-via-ns-selector-for-immutable-ns-label", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("x/*", "x/a").deny("z/*", "x/a") }}}},
		{name: "egress namespaceSelector NotIn with the default namespace label", policies: []string{np("x", "allow-ns-y-match-selector-for-immutable-ns-label", `
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: ["y"]}]}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("x/a", "y/*") }}}},
		{name: "UDP default-deny-ingress", policies: []string{np("x", "deny-all", "podSelector: {}\npolicyTypes: [Ingress]")},
			probes: []probe{{UDP, 80, func(r *reach) { r.deny("*", "x/*") }}}},
		{name: "UDP ports", policies: []string{np("x", "allow-ingress-on-port-81-ns-x", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]
  ports: [{port: 81, protocol: UDP}]`)},
			probes: []probe{{UDP, 81, func(r *reach) { r.deny("x/*", "x/a").deny("z/*", "x/a") }}, {TCP, 81, func(r *reach) { r.deny("*", "x/a") }}}},
		{name: "UDP pod and namespace selector", policies: []string{np("x", "allow-ns-y-pod-a-via-namespace-pod-selector", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}, podSelector: {matchLabels: {pod: a}}}]`)},
			probes: []probe{{UDP, 80, func(r *reach) { r.deny("*", "x/a").allow("y/a", "x/a") }}}},
		{name: "SCTP default-deny-ingress", policies: []string{np("x", "deny-all", "podSelector: {}\npolicyTypes: [Ingress]")},
			probes: []probe{{SCTP, 80, func(r *reach) { r.deny("*", "x/*") }}}},
		{name: "SCTP ports", policies: []string{np("x", "allow-ingress-on-port-81-ns-x", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]
  ports: [{port: 81, protocol: SCTP}]`)},
			probes: []probe{{SCTP, 81, func(r *reach) { r.deny("x/*", "x/a").deny("z/*", "x/a") }}, {UDP, 81, func(r *reach) { r.deny("*", "x/a") }}}},
		{name: "SCTP pod and namespace selector", policies: []string{np("x", "allow-ns-y-pod-a-via-namespace-pod-selector", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}, podSelector: {matchLabels: {pod: a}}}]`)},
			probes: []probe{{SCTP, 80, func(r *reach) { r.deny("*", "x/a").allow("y/a", "x/a") }}}},
		{name: "endPort range", policies: []string{np("x", "allow-80-81-from-y", `
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]
  ports: [{port: 80, endPort: 81, protocol: TCP}]`)},
			probes: []probe{
				{TCP, 80, func(r *reach) { r.deny("x/*", "x/a").deny("z/*", "x/a") }},
				{TCP, 81, func(r *reach) { r.deny("x/*", "x/a").deny("z/*", "x/a") }},
				{UDP, 81, func(r *reach) { r.deny("*", "x/a") }},
			}},
		{name: "endPort range excludes the port after it", policies: []string{np("x", "allow-79-80", `
podSelector: {matchLabels: {pod: a}}
ingress:
- ports: [{port: 79, endPort: 80}]`)},
			probes: []probe{{TCP, 80, none}, {TCP, 81, func(r *reach) { r.deny("*", "x/a") }}}},
		{name: "egress needs the destination's ingress too", policies: []string{
			np("x", "a-egress-to-y", `
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to: [{namespaceSelector: {matchLabels: {ns: "y"}}}]`),
			np("y", "deny-all", "podSelector: {}\npolicyTypes: [Ingress]")},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("x/a", "*").deny("*", "y/*") }}}},
		{name: "policyTypes defaulting: egress rules make it an egress policy", policies: []string{np("x", "egress-only-rules", `
podSelector: {matchLabels: {pod: a}}
egress:
- to: [{podSelector: {matchLabels: {pod: b}}}]`)},
			probes: []probe{{TCP, 80, func(r *reach) { r.deny("x/a", "*").allow("x/a", "x/b").deny("*", "x/a") }}}},
		{name: "policyTypes: Egress only leaves ingress open and ignores ingress rules", policies: []string{np("x", "egress-typed", `
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
ingress:
- from: [{podSelector: {matchLabels: {pod: b}}}]
egress: [{}]`)},
			probes: []probe{{TCP, 80, none}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := load(t, append([]string{upstreamPods(tc.extra)}, tc.policies...)...)
			for _, p := range tc.probes {
				r := newReach(a)
				p.want(r)
				r.verify(t, a, p.proto, p.port)
			}
		})
	}
}
