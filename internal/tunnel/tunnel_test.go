package tunnel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

const idle = 300 * time.Millisecond

// listen starts a loopback listener whose connections serve runs.
func listen(t *testing.T, serve func(net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return ln
}

// echo answers every line with itself.
func echo(c net.Conn) {
	defer c.Close()
	_, _ = io.Copy(c, c)
}

// pipeFront starts a listener whose connections are piped to upstream,
// and reports each Pipe's end on done.
func pipeFront(t *testing.T, upstream string, done chan<- struct{}) net.Listener {
	return listen(t, func(c net.Conn) {
		up, err := net.Dial("tcp", upstream)
		if err != nil {
			c.Close()
			return
		}
		Pipe(c, up, idle)
		done <- struct{}{}
	})
}

// talk exchanges n lines over c, a quarter of idle apart: a tunnel in
// use for longer than idle.
func talk(t *testing.T, c net.Conn, br *bufio.Reader, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := fmt.Fprintf(c, "ping %d\n", i); err != nil {
			t.Fatal(err)
		}
		if line, err := br.ReadString('\n'); err != nil || line != fmt.Sprintf("ping %d\n", i) {
			t.Fatalf("echo %d: %q %v", i, line, err)
		}
		time.Sleep(idle / 4)
	}
}

// closedAfterIdle waits for the far end to close c and checks that it
// did not do so before the tunnel had been idle for about idle.
func closedAfterIdle(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := br.ReadByte()
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("an idle tunnel stayed open: %v", err)
	}
	if waited := time.Since(start); waited < idle/2 {
		t.Fatalf("closed after %v, before it was idle", waited)
	}
}

func waitDone(t *testing.T, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not end", what)
	}
}

func TestPipeClosesIdleTunnel(t *testing.T) {
	done := make(chan struct{}, 1)
	front := pipeFront(t, listen(t, echo).Addr().String(), done)
	c, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	talk(t, c, br, 8) // 2 idle periods of traffic: not idle
	closedAfterIdle(t, c, br)
	waitDone(t, done, "Pipe")
}

// TestPipeHalfClose: one side that finishes sending still gets the other
// side's answer.
func TestPipeHalfClose(t *testing.T) {
	done := make(chan struct{}, 1)
	upstream := listen(t, func(c net.Conn) {
		defer c.Close()
		b, _ := io.ReadAll(c) // until the client's half-close
		_, _ = c.Write([]byte(strings.ToUpper(string(b))))
	})
	front := pipeFront(t, upstream.Addr().String(), done)
	c, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "HELLO" {
		t.Fatalf("answer after half-close: %q %v", got, err)
	}
	waitDone(t, done, "Pipe")
}

// flood writes to c until a write fails, and reports that.
func flood(c net.Conn, failed chan<- struct{}) {
	defer c.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := c.Write(buf); err != nil {
			failed <- struct{}{}
			return
		}
	}
}

// TestPipeClosesTunnelStuckOnAReader: a client that stops reading blocks
// the relay's writes; that is idleness too, and the upstream's writes
// fail once the tunnel is closed.
func TestPipeClosesTunnelStuckOnAReader(t *testing.T) {
	failed := make(chan struct{}, 1)
	done := make(chan struct{}, 1)
	front := pipeFront(t, listen(t, func(c net.Conn) { flood(c, failed) }).Addr().String(), done)
	c, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close() // never read
	waitDone(t, done, "Pipe")
	waitDone(t, failed, "the upstream's flood")
}

// upgradeBackend answers an Upgrade: echo request with 101 and then
// serves serve on the connection.
func upgradeBackend(t *testing.T, serve func(net.Conn)) *url.URL {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "upgrade required", http.StatusUpgradeRequired)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		_ = brw.Flush()
		serve(c)
	}))
	t.Cleanup(s.Close)
	u, _ := url.Parse(s.URL)
	return u
}

// upgradeFront is an httputil.ReverseProxy to backend whose writer is
// wrapped with IdleAfterHijack; done gets each handler's end.
func upgradeFront(t *testing.T, backend *url.URL, done chan<- struct{}) string {
	return upgradeFrontIn(t, backend, done, nil, idle)
}

// upgradeFrontIn is upgradeFront with its tunnels in set and their idle
// timeout.
func upgradeFrontIn(t *testing.T, backend *url.URL, done chan<- struct{}, set *Set, idle time.Duration) string {
	t.Helper()
	rp := httputil.NewSingleHostReverseProxy(backend)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w, r, release := IdleAfterHijack(w, r, idle, set)
		defer release()
		rp.ServeHTTP(w, r)
		done <- struct{}{}
	}))
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

// upgrade opens a connection to addr and switches it to the echo protocol.
func upgrade(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, br
}

func TestIdleAfterHijackClosesIdleWebSocket(t *testing.T) {
	backendEnded := make(chan struct{}, 1)
	backend := upgradeBackend(t, func(c net.Conn) {
		echo(c) // returns once the proxy closes its side
		backendEnded <- struct{}{}
	})
	done := make(chan struct{}, 1)
	c, br := upgrade(t, upgradeFront(t, backend, done))
	talk(t, c, br, 8)
	closedAfterIdle(t, c, br)
	waitDone(t, done, "the proxy's relay")
	waitDone(t, backendEnded, "the upstream side")
}

func TestIdleAfterHijackClosesTunnelStuckOnAReader(t *testing.T) {
	failed := make(chan struct{}, 1)
	backend := upgradeBackend(t, func(c net.Conn) { flood(c, failed) })
	done := make(chan struct{}, 1)
	upgrade(t, upgradeFront(t, backend, done)) // and never read
	waitDone(t, done, "the proxy's relay")
	waitDone(t, failed, "the upstream's flood")
}

// silentUpstream switches protocols and then neither reads nor writes
// until the test ends.
func silentUpstream(t *testing.T) *url.URL {
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	return upgradeBackend(t, func(c net.Conn) {
		<-hold
		c.Close()
	})
}

// TestIdleAfterHijackClosesTunnelStuckOnTheUpstream: an upstream that
// stops reading blocks the relay's writes to it, and one that stays silent
// after the client half-closed leaves the relay waiting on it; closing the
// client's side alone ends neither, the watchdog must end the upstream's
// side too.
func TestIdleAfterHijackClosesTunnelStuckOnTheUpstream(t *testing.T) {
	t.Run("upstream stopped reading", func(t *testing.T) {
		done := make(chan struct{}, 1)
		c, _ := upgrade(t, upgradeFront(t, silentUpstream(t), done))
		failed := make(chan struct{}, 1)
		go flood(c, failed) // until the proxy's buffers fill, then nothing moves
		waitDone(t, failed, "the client's flood")
		waitDone(t, done, "the proxy's relay")
	})
	t.Run("client half-closed, upstream silent", func(t *testing.T) {
		done := make(chan struct{}, 1)
		c, _ := upgrade(t, upgradeFront(t, silentUpstream(t), done))
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		waitDone(t, done, "the proxy's relay")
	})
}

// TestIdleAfterHijackPassesOtherRequests: a request that does not switch
// protocols is served as without the wrapper, and a zero idle adds none.
func TestIdleAfterHijackPassesOtherRequests(t *testing.T) {
	done := make(chan struct{}, 2)
	resp, err := http.Get("http://" + upgradeFront(t, upgradeBackend(t, echo), done) + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// TestSetDrain: a shutdown waits for the watched tunnels; one still open
// at its deadline is ended, and the handler relaying it returns before
// Drain does. A tunnel asked for during the drain is refused.
func TestSetDrain(t *testing.T) {
	var set Set
	done := make(chan struct{}, 2)
	front := upgradeFrontIn(t, upgradeBackend(t, echo), done, &set, time.Hour) // never idle here
	c, br := upgrade(t, front)
	talk(t, c, br, 1)
	ctx, cancel := context.WithTimeout(context.Background(), idle)
	defer cancel()
	drained := make(chan struct{})
	go func() { set.Drain(ctx); close(drained) }()
	select {
	case <-drained:
		t.Fatal("Drain returned while a tunnel was open")
	case <-time.After(idle / 2):
	}
	select {
	case <-done: // the handler returned: the tunnel was ended
	case <-time.After(10 * time.Second):
		t.Fatal("the tunnel was not ended at the drain deadline")
	}
	select {
	case <-drained:
	case <-time.After(10 * time.Second):
		t.Fatal("Drain did not return")
	}
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("the client's side of the drained tunnel is open")
	}
	// After the drain: refused (the proxy's request is cancelled).
	c2, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(c2, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c2), nil); err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
		t.Fatal("a tunnel was opened during the drain")
	}
}

func TestWatchdogStopped(t *testing.T) {
	fired := make(chan struct{}, 1)
	w := newWatchdog(idle/10, func() { fired <- struct{}{} })
	w.stop()
	select {
	case <-fired:
		t.Fatal("a stopped watchdog fired")
	case <-time.After(idle):
	}
	w = newWatchdog(idle/10, func() { fired <- struct{}{} })
	waitDone(t, fired, "an unstopped watchdog")
	w.stop()
}
