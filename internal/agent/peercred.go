package agent

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/trustmesh/trustmesh/internal/attest"
)

// peerCredentials are gRPC transport credentials for the Workload API's
// unix socket: the "handshake" asks the kernel who the peer process is
// (SO_PEERCRED). Nothing is exchanged with the client, so stock clients
// (go-spiffe, Envoy) connect as they would to any unix socket.
type peerCredentials struct{}

type peerAuthInfo struct {
	credentials.CommonAuthInfo
	attest.PeerInfo
}

func (peerAuthInfo) AuthType() string { return "peercred" }

func (peerCredentials) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, fmt.Errorf("workload API connections must come over a unix socket, not %T", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, err
	}
	if credErr != nil {
		return nil, nil, fmt.Errorf("read peer credentials: %w", credErr)
	}
	return c, peerAuthInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity},
		PeerInfo:       attest.PeerInfo{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid},
	}, nil
}

func (peerCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peer credentials are server-side only")
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (p peerCredentials) Clone() credentials.TransportCredentials { return p }

func (peerCredentials) OverrideServerName(string) error { return nil }

// peerOf returns the calling process as established at connection time.
func peerOf(ctx context.Context) (attest.PeerInfo, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return attest.PeerInfo{}, false
	}
	info, ok := p.AuthInfo.(peerAuthInfo)
	return info.PeerInfo, ok
}
