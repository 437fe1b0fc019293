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
// reads as data too). The pool keeps an idleCheck per connection instead.
func IdleConnUsable(c net.Conn) bool { return newIdleCheck(c).usable() }

// idleCheck is one connection's MSG_PEEK, set up once: the raw socket and
// the callback would otherwise cost three allocations at each reuse.
type idleCheck struct {
	rc   syscall.RawConn // nil: not a socket (tests' in-memory pipes)
	bad  bool            // no raw socket to ask
	ok   bool            // the last peek would have blocked
	b    [1]byte
	peek func(fd uintptr) bool
}

func newIdleCheck(c net.Conn) *idleCheck {
	k := &idleCheck{}
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return k // nothing to ask
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		k.bad = true
		return k
	}
	k.rc = rc
	k.peek = func(fd uintptr) bool {
		// recvfrom(2) without an address (unix.Recvfrom allocates one).
		_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&k.b[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		k.ok = errno == unix.EAGAIN || errno == unix.EWOULDBLOCK
		return true // never wait: the answer is now
	}
	return k
}

func (k *idleCheck) usable() bool {
	if k.rc == nil {
		return !k.bad
	}
	k.ok = false
	err := k.rc.Read(k.peek)
	return err == nil && k.ok
}
