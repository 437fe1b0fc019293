# Seed 000 (SPIFFE/SPIRE guide), ConfigMap opa-policies, authz.rego: unchanged.
package authz

default allow = false

# Allow if the request has valid SPIFFE identity
allow {
    valid_spiffe_id
    authorized_service
}

# Validate SPIFFE ID format
valid_spiffe_id {
    input.spiffe_id
    startswith(input.spiffe_id, "spiffe://example.org/")
}

# Service-to-service authorization matrix
authorized_service {
    service_permissions[input.source_service][_] == input.target_service
}

service_permissions := {
    "frontend": ["api", "auth"],
    "api": ["database", "cache", "auth"],
    "auth": ["database"],
}

# Deny requests from unknown services
deny[msg] {
    not valid_spiffe_id
    msg := "Invalid or missing SPIFFE ID"
}

deny[msg] {
    not authorized_service
    msg := sprintf("Service %v not authorized to access %v", [input.source_service, input.target_service])
}
