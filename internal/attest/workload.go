package attest

import "context"

// PeerInfo is what the kernel says about a process connected to the
// Workload API socket (SO_PEERCRED). PID is 0 when the peer is in another
// PID namespace and not visible from ours.
type PeerInfo struct {
	PID int32
	UID uint32
	GID uint32
}

// WorkloadAttestor turns a peer into selectors ("type:value"). The agent
// runs every configured attestor and takes the union; a workload matches a
// registration entry when the entry's selectors are all among them.
//
// The unix attestor is the first implementation; a k8s attestor (pod
// namespace, service account, labels, found from the PID's cgroup and the
// kubelet) plugs in the same way.
type WorkloadAttestor interface {
	// Name is the selector type it produces ("unix", "k8s").
	Name() string
	// Attest returns the peer's selectors. An error means the peer could
	// not be attested at all (it gets no identity).
	Attest(ctx context.Context, peer PeerInfo) ([]string, error)
}
