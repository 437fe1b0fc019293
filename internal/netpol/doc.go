// Package netpol analyzes Kubernetes NetworkPolicies (networking.k8s.io/v1)
// offline, with the semantics the Kubernetes API documents, from the YAML
// users already have: `kubectl get -o yaml` dumps or a Git repository of
// manifests, where workloads (Deployments, StatefulSets, …) stand for the
// pods they would create.
//
// The pieces:
//
//   - Load reads manifests into a Cluster: namespaces, pods, policies, and
//     every problem found on the way, with file and document index. Objects
//     are decoded with the k8s.io/api types and validated as the API server
//     validates them, so an object the cluster would refuse is an error here.
//   - NewAnalyzer compiles a Cluster: label selectors, ports and peers, and
//     indexes policies by namespace and selector so a pod's policies are
//     found without evaluating every policy.
//   - Analyzer.Check decides one connection and says why (Verdict);
//     Analyzer.Matrix decides every pod pair at once on bitsets; Lint,
//     Diff and Generate build on the same evaluation.
//
// A connection is allowed only if the source's egress AND the destination's
// ingress allow it; a side no policy isolates allows everything. The
// documented exceptions hold: a pod can always reach itself, and traffic
// between a pod and its own node is always allowed. hostNetwork pods follow
// the most common implementation: selectors never match them, their traffic
// is traffic from their node's IP (docs/netpol.md states every such choice).
package netpol
