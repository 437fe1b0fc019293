package upstream

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// BenchmarkIdleConnUsable: the check each reuse of a pooled upstream
// connection pays (go test -bench IdleConnUsable ./internal/upstream).
func BenchmarkIdleConnUsable(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if peer := <-accepted; peer != nil {
		defer peer.Close()
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !IdleConnUsable(c) {
			b.Fatal("an idle, open connection reported unusable")
		}
	}
}

func TestIdleConnUsable(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the MSG_PEEK check is Linux's; elsewhere every pooled connection counts as usable")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	if !IdleConnUsable(c) {
		t.Fatal("idle open connection: unusable")
	}
	if _, err := peer.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "stray byte seen", func() bool { return !IdleConnUsable(c) })
	// The byte is still there for a reader: the check only peeks.
	buf := make([]byte, 1)
	if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 'x' {
		t.Fatalf("after the check: %q %v", buf, err)
	}
	if !IdleConnUsable(c) {
		t.Fatal("after reading the stray byte: unusable")
	}
	peer.Close()
	waitFor(t, 5*time.Second, "EOF seen", func() bool { return !IdleConnUsable(c) })
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
