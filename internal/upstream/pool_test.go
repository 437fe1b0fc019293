package upstream

import (
	"net"
	"testing"
	"time"
)

// pipeConn is one end of an in-memory pipe; closed reports whether the
// pool closed it.
func pipeConn(t *testing.T) (*Conn, func() bool) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	closed := func() bool {
		_ = a.SetWriteDeadline(time.Now().Add(time.Millisecond))
		_, err := a.Write([]byte{0})
		return err != nil && !isTimeout(err)
	}
	return NewConn(b), closed
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// Idle connections past IdleTimeout are closed without any request
// coming to take them; younger ones stay.
func TestPoolSweepsIdleConnections(t *testing.T) {
	p := &Pool{IdleTimeout: 100 * time.Millisecond}
	defer p.CloseAll()
	old, oldClosed := pipeConn(t)
	p.Add(old)
	p.Put(old)
	time.Sleep(60 * time.Millisecond) // (the two must be apart: one expires first)
	young, youngClosed := pipeConn(t)
	p.Add(young)
	p.Put(young)
	waitFor(t, 5*time.Second, "the old connection swept", func() bool { return p.Idle() == 1 })
	if !oldClosed() {
		t.Fatal("the swept connection is still open")
	}
	if youngClosed() {
		t.Fatal("the younger connection was closed with the old one")
	}
	waitFor(t, 5*time.Second, "the young connection swept", func() bool { return p.Idle() == 0 })
	if !youngClosed() {
		t.Fatal("the second swept connection is still open")
	}
	// The sweep rearms when the pool fills again.
	again, againClosed := pipeConn(t)
	p.Add(again)
	p.Put(again)
	waitFor(t, 5*time.Second, "a connection put after a sweep swept", func() bool { return p.Idle() == 0 && againClosed() })
}

// Nothing is pooled after CloseAll: a connection put back then is closed.
func TestPoolPutAfterCloseAll(t *testing.T) {
	p := &Pool{}
	c, closed := pipeConn(t)
	p.Add(c)
	p.CloseAll()
	p.Put(c)
	if p.Idle() != 0 || !closed() {
		t.Fatal("a connection was pooled after CloseAll")
	}
}
