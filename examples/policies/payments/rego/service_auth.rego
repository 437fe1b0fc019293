# Seed 004's OPA policy, unchanged (Rego v0 syntax).
package service_auth

default allow = false

allow {
    # Source service is authenticated
    input.source_service != ""

    # Policy grants access
    policy := data.policies[_]
    policy.source == input.source_service
    policy.target == input.target_service
    policy.method == input.method
    startswith(input.path, policy.path_prefix)
}
