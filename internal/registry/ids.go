// Package registry holds the rules of the identity registry: what a valid
// SPIFFE ID, selector and registration entry is, how join tokens are minted
// and redeemed, and which entries an agent is authorized to obtain SVIDs
// for.
package registry

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ReservedPathPrefix is the SPIFFE ID namespace Trustmesh keeps for its own
// components (agents, the server). Registration entries may use these IDs as
// parents but never as the identity they issue, so no workload can obtain
// an agent's or the server's identity.
const ReservedPathPrefix = "/trustmesh/"

// ServerID is the SPIFFE ID of the control plane, presented on its TLS
// listener. Entries parented to it are node aliases.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	return mustID(td, "/trustmesh/server")
}

// JoinTokenAgentID is the ID of an agent attested with the join token whose
// public ID is tokenID. The token's secret never appears in it.
func JoinTokenAgentID(td spiffeid.TrustDomain, tokenID string) spiffeid.ID {
	return mustID(td, "/trustmesh/agent/join_token/"+tokenID)
}

// X509PoPAgentID is the ID of an agent attested by x509pop: the SHA-256
// fingerprint (hex) of its certificate. The same certificate always yields
// the same ID, so an evicted agent can attest again.
func X509PoPAgentID(td spiffeid.TrustDomain, fingerprint string) spiffeid.ID {
	return mustID(td, "/trustmesh/agent/x509pop/"+fingerprint)
}

// IsAgentID reports whether id names an agent.
func IsAgentID(id spiffeid.ID) bool {
	return strings.HasPrefix(id.Path(), "/trustmesh/agent/")
}

func mustID(td spiffeid.TrustDomain, path string) spiffeid.ID {
	id, err := spiffeid.FromPath(td, path)
	if err != nil {
		panic(fmt.Sprintf("registry: internal ID %q invalid: %v", path, err))
	}
	return id
}

// MaxIDLength is the SPIFFE-ID spec's bound on a SPIFFE ID's length.
const MaxIDLength = 2048

// ParseID parses s as a SPIFFE ID that must belong to td and have a path.
// what names the field in error messages ("SPIFFE ID", "parent ID").
func ParseID(td spiffeid.TrustDomain, what, s string) (spiffeid.ID, error) {
	if s == "" {
		return spiffeid.ID{}, fmt.Errorf("%s is required", what)
	}
	if len(s) > MaxIDLength {
		return spiffeid.ID{}, fmt.Errorf("invalid %s: %d bytes long, the limit is %d", what, len(s), MaxIDLength)
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("invalid %s %q: %w", what, s, err)
	}
	if id.TrustDomain() != td {
		return spiffeid.ID{}, fmt.Errorf("invalid %s %q: trust domain %q is not the server's trust domain %q",
			what, s, id.TrustDomain().Name(), td.Name())
	}
	if id.Path() == "" {
		return spiffeid.ID{}, fmt.Errorf("invalid %s %q: a workload ID needs a path after the trust domain", what, s)
	}
	return id, nil
}

// ParseWorkloadID is ParseID plus the rule that the ID is not in the
// reserved namespace.
func ParseWorkloadID(td spiffeid.TrustDomain, s string) (spiffeid.ID, error) {
	id, err := ParseID(td, "SPIFFE ID", s)
	if err != nil {
		return id, err
	}
	if strings.HasPrefix(id.Path()+"/", ReservedPathPrefix) {
		return spiffeid.ID{}, fmt.Errorf("invalid SPIFFE ID %q: the path %s is reserved for Trustmesh components", s, strings.TrimSuffix(ReservedPathPrefix, "/"))
	}
	return id, nil
}

// errList collects every validation problem so the user sees all of them
// at once instead of fixing one per round trip.
type errList []error

func (l *errList) add(err error) {
	if err != nil {
		*l = append(*l, err)
	}
}

func (l errList) err() error { return errors.Join(l...) }
