package apiclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
)

// hungListener accepts TCP connections and never reads, writes or closes
// them until the test ends: a server that is up but stuck.
func hungListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// tlsServer is an HTTP/2 TLS server running h; its address and a client
// configuration that trusts it.
func tlsServer(t *testing.T, h http.HandlerFunc) (string, *tls.Config) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return srv.Listener.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
}

// within runs f and fails the test unless it returns within d.
func within[T any](t *testing.T, d time.Duration, what string, f func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- f() }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case v := <-done:
		return v
	case <-timer.C:
		t.Fatalf("%s: still blocked after %s", what, d)
		panic("unreachable")
	}
}

type watchResult struct {
	w   *WatchStream
	err error
}

func watch(c *Client) func() watchResult {
	return func() watchResult {
		w, err := c.Watch(context.Background())
		return watchResult{w, err}
	}
}

// TestWatchOpenBounded: opening the watch stream against a server that
// accepts the connection and never answers fails in bounded time, at
// every phase: the TLS handshake (by its own timeout, or by the open
// timeout if that is shorter) and the response headers.
func TestWatchOpenBounded(t *testing.T) {
	hung := hungListener(t)
	t.Run("tls handshake", func(t *testing.T) {
		c := NewTLS(hung, &tls.Config{}, WithTimeouts(Timeouts{TLSHandshake: 200 * time.Millisecond, StreamOpen: time.Hour}))
		defer c.Close()
		r := within(t, 10*time.Second, "Watch against a hung server", watch(c))
		if r.err == nil || !strings.Contains(r.err.Error(), "TLS handshake timeout") {
			t.Fatalf("Watch: %v, want a TLS handshake timeout", r.err)
		}
	})
	t.Run("open timeout covers the handshake", func(t *testing.T) {
		c := NewTLS(hung, &tls.Config{}, WithTimeouts(Timeouts{TLSHandshake: time.Hour, StreamOpen: 200 * time.Millisecond}))
		defer c.Close()
		r := within(t, 10*time.Second, "Watch against a hung server", watch(c))
		if !errors.Is(r.err, context.DeadlineExceeded) {
			t.Fatalf("Watch: %v, want the open timeout", r.err)
		}
	})
	t.Run("response headers", func(t *testing.T) {
		release := make(chan struct{})
		addr, cfg := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
			select { // handshake done, request read, never an answer
			case <-release:
			case <-r.Context().Done():
			}
		})
		defer close(release)
		c := NewTLS(addr, cfg, WithTimeouts(Timeouts{StreamOpen: 300 * time.Millisecond, Call: 300 * time.Millisecond}))
		defer c.Close()
		r := within(t, 10*time.Second, "Watch against a server that never answers", watch(c))
		if !errors.Is(r.err, context.DeadlineExceeded) {
			t.Fatalf("Watch: %v, want the open timeout", r.err)
		}
		// An ordinary call is bounded as a whole.
		err := within(t, 10*time.Second, "Health against a server that never answers", func() error {
			return c.Health(context.Background())
		})
		if err == nil {
			t.Fatal("Health succeeded against a server that never answers")
		}
	})
}

// TestWatchStreamOutlivesOpenTimeout: the open timeout bounds only the
// opening: an open stream quiet for several times that long still works.
func TestWatchStreamOutlivesOpenTimeout(t *testing.T) {
	const open = 200 * time.Millisecond
	addr, cfg := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
		enc := json.NewEncoder(w)
		rc := http.NewResponseController(w)
		_ = enc.Encode(apiv1.WatchEvent{Kind: apiv1.WatchState, Revision: 1})
		_ = rc.Flush()
		select {
		case <-time.After(5 * open):
		case <-r.Context().Done():
			return
		}
		_ = enc.Encode(apiv1.WatchEvent{Kind: apiv1.WatchHeartbeat, Revision: 1})
		_ = rc.Flush()
	})
	c := NewTLS(addr, cfg, WithTimeouts(Timeouts{StreamOpen: open}))
	defer c.Close()
	r := within(t, 10*time.Second, "Watch", watch(c))
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.w.Close()
	for _, want := range []string{apiv1.WatchState, apiv1.WatchHeartbeat} {
		ev, err := r.w.Next()
		if err != nil || ev.Kind != want {
			t.Fatalf("Next: %v %v, want a %s event", ev.Kind, err, want)
		}
	}
}

// TestWatchRefused: a refusal is still an *Error with the server's status
// and code.
func TestWatchRefused(t *testing.T) {
	addr, cfg := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		_ = json.NewEncoder(w).Encode(apiv1.Error{Error: "agent is banned", Code: apiv1.CodeAgentBanned})
	})
	c := NewTLS(addr, cfg)
	defer c.Close()
	_, err := c.Watch(context.Background())
	if !IsStatus(err, http.StatusForbidden) || !HasCode(err, apiv1.CodeAgentBanned) {
		t.Fatalf("Watch: %v, want 403 %s", err, apiv1.CodeAgentBanned)
	}
}

// TestAttestX509PoPBounded: x509pop attestation opens its own connection;
// with no deadline on ctx it is still bounded, at the handshake and at the
// answer.
func TestAttestX509PoPBounded(t *testing.T) {
	prove := func(*tls.ConnectionState) (*apiv1.X509PoPProof, error) { return &apiv1.X509PoPProof{}, nil }
	attest := func(addr string, cfg *tls.Config, tm Timeouts) func() error {
		return func() error {
			_, err := AttestX509PoP(context.Background(), addr, cfg, nil, prove, WithTimeouts(tm))
			return err
		}
	}
	t.Run("tls handshake", func(t *testing.T) {
		err := within(t, 10*time.Second, "AttestX509PoP against a hung server",
			attest(hungListener(t), &tls.Config{}, Timeouts{TLSHandshake: 200 * time.Millisecond}))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("AttestX509PoP: %v, want a handshake timeout", err)
		}
	})
	t.Run("answer", func(t *testing.T) {
		release := make(chan struct{})
		addr, cfg := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		defer close(release)
		err := within(t, 10*time.Second, "AttestX509PoP against a server that never answers",
			attest(addr, cfg, Timeouts{Call: 300 * time.Millisecond}))
		if err == nil || !strings.Contains(err.Error(), "read attestation answer") {
			t.Fatalf("AttestX509PoP: %v, want a read timeout", err)
		}
	})
}

// TestTimeoutsDefaults: zero fields take the defaults; every transport
// made here bounds the connect and the TLS handshake.
func TestTimeoutsDefaults(t *testing.T) {
	got := Timeouts{Call: time.Second}.withDefaults()
	want := DefaultTimeouts
	want.Call = time.Second
	if got != want {
		t.Fatalf("withDefaults = %+v, want %+v", got, want)
	}
	c := NewTLS("127.0.0.1:1", &tls.Config{})
	tr := c.http.Transport.(*http.Transport)
	if tr.TLSHandshakeTimeout != DefaultTimeouts.TLSHandshake || tr.DialContext == nil || tr.HTTP2 == nil ||
		tr.HTTP2.SendPingTimeout != DefaultTimeouts.Ping || tr.HTTP2.PingTimeout != DefaultTimeouts.Ping ||
		c.http.Timeout != DefaultTimeouts.Call {
		t.Fatalf("TLS client transport lacks its bounds: %+v", tr)
	}
	if s := NewSocket("/nonexistent"); s.http.Timeout != DefaultTimeouts.Call || s.timeouts.StreamOpen != DefaultTimeouts.StreamOpen {
		t.Fatal("socket client lacks its bounds")
	}
}
