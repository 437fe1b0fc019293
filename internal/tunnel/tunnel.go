// Package tunnel relays the raw byte streams that follow a TCP accept or an
// HTTP protocol switch (WebSocket), and closes a tunnel in which nothing has
// moved either way for a while, as Envoy's tcp_proxy idle_timeout does: an
// abandoned tunnel would otherwise hold its connections, and the
// connection slot they count against, for ever.
//
// One watchdog per tunnel does the timing: every read and write through the
// tunnel notes the time, and a timer that fires once per idle period closes
// both ends when the last note is older than that. Closing, rather than a
// deadline on each read, also ends a tunnel stuck in a write to a peer that
// stopped reading, on either side, and works where the far end is not a
// net.Conn at all (the upstream side of httputil.ReverseProxy's relay).
package tunnel

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trustmesh/trustmesh/internal/httpx"
)

// watchdog closes a tunnel once nothing has moved through it for idle.
type watchdog struct {
	idle    time.Duration
	last    atomic.Int64 // when a byte last moved, Unix nanoseconds
	stopped atomic.Bool
	timer   *time.Timer
	onIdle  func()
}

// newWatchdog starts timing; onIdle runs (once) when the tunnel goes idle.
// An idle of zero or less never fires.
func newWatchdog(idle time.Duration, onIdle func()) *watchdog {
	w := &watchdog{idle: idle, onIdle: onIdle}
	w.touch()
	if idle > 0 {
		w.timer = time.AfterFunc(idle, w.check)
	}
	return w
}

// touch notes that bytes moved.
func (w *watchdog) touch() { w.last.Store(time.Now().UnixNano()) }

func (w *watchdog) check() {
	if w.stopped.Load() {
		return
	}
	if quiet := time.Since(time.Unix(0, w.last.Load())); quiet < w.idle {
		w.timer.Reset(w.idle - quiet) // something moved: look again when that is idle old
		return
	}
	w.onIdle()
}

// stop ends the timing of a tunnel that ended by itself.
func (w *watchdog) stop() {
	w.stopped.Store(true)
	if w.timer != nil {
		w.timer.Stop()
	}
}

// copyNoting copies src to dst until src ends or either fails, noting
// every read and write on w.
func copyNoting(dst io.Writer, src io.Reader, w *watchdog) {
	bp := httpx.GetBuffer()
	defer httpx.PutBuffer(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			w.touch()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			w.touch()
		}
		if err != nil {
			return
		}
	}
}

// Pipe copies both ways between a and b until both directions end,
// half-closing each side when the other finishes sending, and closes both
// when nothing has moved either way for idle (never, if idle <= 0).
func Pipe(a, b net.Conn, idle time.Duration) {
	w := newWatchdog(idle, func() {
		a.Close()
		b.Close()
	})
	defer w.stop()
	var wg sync.WaitGroup
	wg.Add(2)
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		copyNoting(dst, src, w)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = dst.Close()
		}
	}
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

// IdleAfterHijack prepares w and r, a request that asks for a protocol
// switch, for an httputil.ReverseProxy, so that the tunnel the proxy
// relays after the switch ends once nothing has moved either way for
// idle. Both directions of the proxy's relay pass through the client's
// connection (it reads the client and writes the upstream, reads the
// upstream and writes the client), so watching that one connection sees
// all of them. When it goes idle, the watchdog closes it and cancels the
// request's context, on which the proxy closes the upstream side: closing
// the client alone would leave the relay blocked on an upstream that
// stopped reading, or that stays silent after the client half-closed.
// Serve with the returned writer and request, and call release when the
// handler is done with the request (after its audit record: a shutdown
// waits for release). set, if not nil, counts the request until then, so
// that a shutdown can wait for it and end it (Set.Drain): net/http's
// Server.Shutdown does not wait for hijacked connections. Call it only
// for upgrade requests: it costs a context and an allocation, and nothing
// else hijacks.
func IdleAfterHijack(w http.ResponseWriter, r *http.Request, idle time.Duration, set *Set) (http.ResponseWriter, *http.Request, func()) {
	ctx, cancel := context.WithCancel(r.Context())
	h := &hijackWatcher{ResponseWriter: w, idle: idle, cancel: cancel}
	release := cancel
	if set != nil && set.add(h) {
		release = func() {
			cancel()
			set.remove(h)
		}
	} else if set != nil { // draining: end it at once
		cancel()
	}
	return h, r.WithContext(ctx), release
}

type hijackWatcher struct {
	http.ResponseWriter
	idle   time.Duration
	cancel context.CancelFunc

	mu   sync.Mutex
	conn net.Conn // once hijacked
}

// end ends the request: its context, and its tunnel if it has one.
func (h *hijackWatcher) end() {
	h.cancel()
	h.mu.Lock()
	c := h.conn
	h.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// Set is the upgrade requests IdleAfterHijack watches for one server,
// for its shutdown.
type Set struct {
	wg       sync.WaitGroup
	mu       sync.Mutex
	live     map[*hijackWatcher]struct{}
	draining bool
}

func (s *Set) add(h *hijackWatcher) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	if s.live == nil {
		s.live = map[*hijackWatcher]struct{}{}
	}
	s.live[h] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Set) remove(h *hijackWatcher) {
	s.mu.Lock()
	delete(s.live, h)
	s.mu.Unlock()
	s.wg.Done()
}

// Drain waits for the watched requests to be released; when ctx ends
// first, it ends their tunnels (which makes the proxies relaying them
// return) and waits on. Requests that come after it has begun are ended
// at once.
func (s *Set) Drain(ctx context.Context) {
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		for h := range s.live {
			h.end()
		}
		s.mu.Unlock()
		<-done
	}
}

// Unwrap lets http.ResponseController reach the writer's other methods
// (Flush, deadlines).
func (h *hijackWatcher) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// Hijack hijacks the wrapped writer's connection and starts timing it.
func (h *hijackWatcher) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	h.mu.Lock()
	h.conn = c
	h.mu.Unlock()
	// Idle ends it as a drain does: the client's side closed, the request
	// cancelled (ReverseProxy then closes the upstream's).
	wc := &watchedConn{Conn: c, w: newWatchdog(h.idle, h.end)}
	// brw is left as it is: ReverseProxy writes the 101 through it before
	// the relay starts, and reads the client through the conn, never
	// through brw.
	return wc, brw, nil
}

// watchedConn notes every read and write on its watchdog. It embeds the
// net.Conn interface, not the concrete type, so io.Copy cannot go round
// it through *net.TCPConn's ReadFrom or WriteTo.
type watchedConn struct {
	net.Conn
	w *watchdog
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.w.touch()
	}
	return n, err
}

func (c *watchedConn) Write(p []byte) (int, error) {
	c.w.touch() // a write that blocks longer than idle is itself idleness
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.w.touch()
	}
	return n, err
}

// CloseWrite half-closes, where the connection can (TCP, TLS), so the
// relay can pass on an upstream that finished sending.
func (c *watchedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func (c *watchedConn) Close() error {
	c.w.stop()
	return c.Conn.Close()
}
