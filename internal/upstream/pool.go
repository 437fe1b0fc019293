// Package upstream holds HTTP/1.1 connections to one upstream for the
// synchronous forwarding paths (the sidecar proxy's HTTP/1.1 path, the
// access gateway's fast path): one goroutine writes a request to a pooled
// connection and reads the response itself, without http.Transport's
// read and write goroutines per connection. It keeps the connections and
// the rules for reusing them; framing stays net/http's (Request.Write,
// http.ReadResponse).
package upstream

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// Bounds on what an upstream may send before its final response head.
const (
	MaxResponseHeadBytes = 1 << 20 // as http.Transport's MaxResponseHeaderBytes default
	MaxInterimResponses  = 16      // 1xx responses taken for one request
)

const (
	maxIdle            = 1024
	defaultIdleTimeout = 90 * time.Second // as http.Transport's IdleConnTimeout in DefaultTransport
)

// Conn is a connection to the upstream with its buffers. BR reads
// through LR, whose limit a caller sets to bound a response head
// (LR.N = MaxResponseHeadBytes while reading one, math.MaxInt64 after).
type Conn struct {
	net.Conn
	LR   *io.LimitedReader
	BR   *bufio.Reader
	BW   *bufio.Writer
	idle time.Time
	// check looks at the socket before a reuse (see IdleConnUsable).
	check *idleCheck
}

// NewConn wraps a freshly dialled connection.
func NewConn(c net.Conn) *Conn {
	up := &Conn{Conn: c, LR: &io.LimitedReader{R: c, N: math.MaxInt64}, BW: bufio.NewWriterSize(c, 4<<10), check: newIdleCheck(c)}
	up.BR = bufio.NewReaderSize(up.LR, 4<<10)
	return up
}

// ReadResponse reads the next response head from c for req (the body
// then reads from c.BR): at most MaxResponseHeadBytes of it, with a
// status from 100 up (http.ReadResponse takes any three digits). interim
// is how many 1xx responses came before it for req; one more than
// MaxInterimResponses allow is an error. closed: the upstream closed the
// connection (or reset it) before sending any of this response.
func (c *Conn) ReadResponse(req *http.Request, interim int) (resp *http.Response, closed bool, err error) {
	if _, err = c.BR.Peek(1); err != nil {
		return nil, Stale(err), err
	}
	if interim >= MaxInterimResponses {
		return nil, false, errors.New("too many 1xx responses")
	}
	c.LR.N = MaxResponseHeadBytes
	resp, err = http.ReadResponse(c.BR, req)
	if c.LR.N <= 0 && err != nil {
		err = fmt.Errorf("response head over %d bytes", MaxResponseHeadBytes)
	}
	c.LR.N = math.MaxInt64
	if err == nil && resp.StatusCode < 100 {
		return nil, false, fmt.Errorf("invalid response status %d", resp.StatusCode)
	}
	return resp, false, err
}

// Pool keeps idle connections for reuse, and knows the busy ones so that
// a shutdown can close those its deadline cuts off. An idle connection
// unused for IdleTimeout is closed, also when no request comes to take
// it (a timer sweeps them: after a burst, the ones at the bottom of the
// stack would otherwise sit in CLOSE_WAIT once the upstream gave up on
// them). The zero Pool is ready to use.
type Pool struct {
	IdleTimeout time.Duration // 0: 90 s

	mu     sync.Mutex
	idle   []*Conn // oldest first: Get takes from the end
	busy   map[*Conn]struct{}
	closed bool
	sweep  *time.Timer // runs while idle is not empty
	armed  bool
}

func (p *Pool) idleTimeout() time.Duration {
	if p.IdleTimeout > 0 {
		return p.IdleTimeout
	}
	return defaultIdleTimeout
}

// Get takes the most recently used idle connection that is still usable
// (see IdleConnUsable), marking it busy; nil if there is none.
func (p *Pool) Get() *Conn {
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			return nil
		}
		up := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if time.Since(up.idle) < p.idleTimeout() && up.check.usable() {
			p.Add(up)
			return up
		}
		up.Close()
	}
}

// Add marks a new connection busy.
func (p *Pool) Add(up *Conn) {
	p.mu.Lock()
	if p.busy == nil {
		p.busy = map[*Conn]struct{}{}
	}
	p.busy[up] = struct{}{}
	p.mu.Unlock()
}

// Put returns a connection whose exchange ended cleanly. One with bytes
// already buffered past the response is not reused: they are no answer
// to any request the next client will send.
func (p *Pool) Put(up *Conn) {
	up.idle = time.Now()
	p.mu.Lock()
	delete(p.busy, up)
	if !p.closed && len(p.idle) < maxIdle && up.BR.Buffered() == 0 {
		p.idle = append(p.idle, up)
		up = nil
		if !p.armed {
			p.armSweep(p.idleTimeout())
		}
	}
	p.mu.Unlock()
	if up != nil {
		up.Close()
	}
}

// armSweep starts the timer for the oldest idle connection; the caller
// holds mu.
func (p *Pool) armSweep(d time.Duration) {
	p.armed = true
	if p.sweep == nil {
		p.sweep = time.AfterFunc(d, p.sweepIdle)
		return
	}
	p.sweep.Reset(d)
}

// sweepIdle closes the idle connections past IdleTimeout and rearms for
// the next oldest.
func (p *Pool) sweepIdle() {
	now, limit := time.Now(), p.idleTimeout()
	p.mu.Lock()
	n := 0
	for n < len(p.idle) && now.Sub(p.idle[n].idle) >= limit {
		n++
	}
	expired := append([]*Conn(nil), p.idle[:n]...)
	rest := copy(p.idle, p.idle[n:])
	clear(p.idle[rest:]) // no closed connection stays reachable
	p.idle = p.idle[:rest]
	p.armed = false
	if len(p.idle) > 0 && !p.closed {
		p.armSweep(limit - now.Sub(p.idle[0].idle))
	}
	p.mu.Unlock()
	for _, up := range expired {
		up.Close()
	}
}

// Discard closes a busy connection that cannot be reused.
func (p *Pool) Discard(up *Conn) {
	p.mu.Lock()
	delete(p.busy, up)
	p.mu.Unlock()
	up.Close()
}

// Busy is the number of connections in use.
func (p *Pool) Busy() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.busy)
}

// Idle is the number of idle connections.
func (p *Pool) Idle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// CloseBusy closes the connections exchanges are using, which wakes any
// that waits on its upstream.
func (p *Pool) CloseBusy() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for up := range p.busy {
		up.Close()
	}
}

// CloseAll closes the idle connections; those put back later are closed
// too.
func (p *Pool) CloseAll() {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	if p.sweep != nil {
		p.sweep.Stop()
	}
	p.mu.Unlock()
	for _, up := range idle {
		up.Close()
	}
}

// Replayable: req may be sent again after a pooled connection failed,
// as http.Transport decides it: no body, and a method that is
// idempotent (or an Idempotency-Key saying so).
func Replayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

// Stale: the upstream closed a pooled connection before answering.
func Stale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
