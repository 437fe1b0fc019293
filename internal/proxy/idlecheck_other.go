//go:build !linux

package proxy

import "net"

// idleConnUsable cannot look at the socket here; a connection the upstream
// closed fails its first write or read and is retried when replayable.
func idleConnUsable(net.Conn) bool { return true }
