package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
)

// prefixConn replays bytes already read (the sniffed first byte) before
// reading from the connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes when the underlying connection can.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// chanListener hands connections the proxy has already accepted, sniffed
// and (for TLS) handshaken to an http.Server.
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// deliver passes c to the server; false if the listener is closed.
func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// handshakeReason classifies a failed inbound handshake for metrics.
func handshakeReason(err error) string {
	var pe *peerError
	if errors.As(err, &pe) {
		return pe.reason
	}
	var rhe tls.RecordHeaderError
	if errors.As(err, &rhe) {
		return "not_tls"
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return "timeout"
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "client_closed"
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "didn't provide a certificate"):
		return "no_client_certificate"
	case strings.Contains(msg, "unsupported versions"), strings.Contains(msg, "protocol version"):
		return "protocol_version"
	case strings.Contains(msg, "bad certificate"), strings.Contains(msg, "unknown certificate"):
		return "bad_certificate"
	}
	return "handshake"
}

// releasingConn calls release when first closed.
type releasingConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *releasingConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite half-closes when the underlying connection can.
func (c *releasingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// tcpConns tracks a listener's piped TCP connections, so shutdown can
// wait for them to finish and close those still open at the deadline.
type tcpConns struct {
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	draining bool
}

// start counts one connection's goroutine, false once drain has begun:
// a connection whose handshake finishes during shutdown is not served
// (and drain's Wait never races an Add).
func (t *tcpConns) start() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining {
		return false
	}
	t.wg.Add(1)
	return true
}

// done ends what start counted.
func (t *tcpConns) done() { t.wg.Done() }

// track registers c until the returned func is called.
func (t *tcpConns) track(c net.Conn) (untrack func()) {
	t.mu.Lock()
	if t.conns == nil {
		t.conns = map[net.Conn]struct{}{}
	}
	t.conns[c] = struct{}{}
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		delete(t.conns, c)
		t.mu.Unlock()
	}
}

// drain waits for every connection to end, closing all that are still
// open when ctx ends.
func (t *tcpConns) drain(ctx context.Context) {
	t.mu.Lock()
	t.draining = true
	t.mu.Unlock()
	waitThenClose(ctx, &t.wg, func() {
		t.mu.Lock()
		for c := range t.conns {
			c.Close()
		}
		t.mu.Unlock()
	})
}

// waitThenClose waits for wg; if ctx ends first, it calls closeAll (which
// makes the connections' goroutines finish) and waits on.
func waitThenClose(ctx context.Context, wg *sync.WaitGroup, closeAll func()) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		closeAll()
		<-done
	}
}
