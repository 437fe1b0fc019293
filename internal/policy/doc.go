// Package policy is Trustmesh's authorization engine. It reads Istio
// AuthorizationPolicy and PeerAuthentication objects (security.istio.io v1
// and v1beta1, unchanged) and OPA Rego modules (v1, and v0 as the seeds
// write them), compiles them into an indexed, immutable Set, and answers
// two questions for the data plane:
//
//   - Evaluate: may this request (or TCP connection) reach this workload?
//     Istio's order: CUSTOM (Rego) deny → DENY → allow if no ALLOW policy
//     applies → allow if any ALLOW matches → deny. AUDIT and dry-run
//     policies are evaluated and reported, never enforced.
//   - MTLS: is plaintext accepted on this port of this workload?
//
// Every Decision names the deciding action, policy and rule, and a reason
// a person can read. Paths are normalized before matching (NormalizePath),
// so one resource has one spelling.
//
// Sets are built with Load + Compile and published through an Engine,
// which swaps them atomically. Evaluate allocates nothing in the common
// case; a Set is indexed by destination namespace and selector labels, and
// large policies by principal, so a decision does not scan every policy.
package policy
