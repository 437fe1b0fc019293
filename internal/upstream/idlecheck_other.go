//go:build !linux

package upstream

import "net"

// IdleConnUsable cannot look at the socket here; a connection the upstream
// closed fails its first write or read and is retried when replayable.
func IdleConnUsable(net.Conn) bool { return true }
