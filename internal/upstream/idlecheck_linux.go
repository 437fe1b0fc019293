package upstream

import (
	"crypto/tls"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// IdleConnUsable: a pooled upstream connection has nothing to read. Bytes
// an upstream sent while the connection sat idle would otherwise be read
// as the next client's response (http.Transport's readLoop calls them an
// "unsolicited response" and drops the connection), and an EOF means the
// upstream closed it, so a request that cannot be replayed (a POST) would
// fail on it. One non-blocking MSG_PEEK on the socket tells; anything but
// "would block" discards the connection, which at worst costs a new dial
// (on a TLS connection a late post-handshake message such as a KeyUpdate
// reads as data too).
func IdleConnUsable(c net.Conn) bool {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true // not a socket (tests' in-memory pipes): nothing to ask
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	usable := false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		// recvfrom(2) without an address (unix.Recvfrom allocates one).
		_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		usable = errno == unix.EAGAIN || errno == unix.EWOULDBLOCK
		return true // never wait: the answer is now
	})
	return err == nil && usable
}
