package server

import (
	"context"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

type ucredKey struct{}

// withUnixPeerCred records the connecting process's credentials
// (SO_PEERCRED) in the connection context of the admin socket.
func withUnixPeerCred(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return ctx
	}
	return context.WithValue(ctx, ucredKey{}, cred)
}

func unixPeerCred(ctx context.Context) (*unix.Ucred, error) {
	cred, ok := ctx.Value(ucredKey{}).(*unix.Ucred)
	if !ok || cred == nil {
		return nil, fmt.Errorf("peer credentials unavailable")
	}
	return cred, nil
}
