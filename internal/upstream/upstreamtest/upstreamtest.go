// Package upstreamtest runs raw TCP upstreams for tests of the forwarding
// paths: servers that send what no well-behaved HTTP server would (a
// response cut short, bytes after a HEAD answer, a status of 099).
package upstreamtest

import (
	"bufio"
	"net"
	"sync"
	"testing"
	"time"
)

// Serve listens on a loopback port and runs handle for each connection
// (with a 20 s deadline, so a test that forgets one cannot hang) until the
// test ends, when it waits for the handlers. It returns host:port.
func Serve(t testing.TB, handle func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				handle(c, bufio.NewReader(c))
			}()
		}
	}()
	return ln.Addr().String()
}
