package proxy

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The XFCC value is computed once per connection: it must still name the
// connection's own peer, with the SHA-256 of that peer's leaf, whichever
// connection a request comes on.
func TestXFCCPerConnection(t *testing.T) {
	m := newMesh(t, meshOpts{})
	addr := m.api.Addr("permissive").String() // frontend is allowed, mTLS or not
	for conn := 0; conn < 2; conn++ {
		cfg := m.svidTLS(t, idFrontend)
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		leaf := sha256.Sum256(cfg.Certificates[0].Certificate[0])
		want := "By=" + idAPI + ";Hash=" + hex.EncodeToString(leaf[:]) + ";URI=" + idFrontend
		br := bufio.NewReader(c)
		// Several requests on the one connection (HTTP/1.1 keep-alive).
		for i := 0; i < 3; i++ {
			if _, err := io.WriteString(c, "GET /x HTTP/1.1\r\nHost: api\r\nX-Forwarded-Client-Cert: URI=spiffe://evil\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			var got echoReply
			err = json.NewDecoder(resp.Body).Decode(&got)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("%d %v", resp.StatusCode, err)
			}
			if x := got.Headers.Values("X-Forwarded-Client-Cert"); len(x) != 1 || x[0] != want {
				t.Fatalf("connection %d request %d: XFCC %q, want %q", conn, i, x, want)
			}
		}
		c.Close()
	}
	// Plaintext on the same port: no XFCC at all (the client's is stripped).
	line, err := rawExchange(t, addr, nil, "GET /public/z HTTP/1.1\r\nHost: api\r\nX-Forwarded-Client-Cert: URI=spiffe://evil\r\n\r\n")
	if err != nil || line != "HTTP/1.1 200 OK" {
		t.Fatalf("%q %v", line, err)
	}
	m.echo.mu.Lock()
	x := m.echo.last.Header.Get("X-Forwarded-Client-Cert")
	m.echo.mu.Unlock()
	if x != "" {
		t.Fatalf("plaintext request forwarded with XFCC %q", x)
	}
}

func TestConnInfoXFCCFollowsOurIdentity(t *testing.T) {
	ci := &connInfo{principal: idFrontend, leafHash: "ab"}
	if got := ci.xfccFor(idAPI); got != "By="+idAPI+";Hash=ab;URI="+idFrontend {
		t.Fatal(got)
	}
	if got := ci.xfccFor(idBatch); !strings.HasPrefix(got, "By="+idBatch+";") {
		t.Fatalf("after our ID changed: %q", got)
	}
}

func TestRequestCounterCache(t *testing.T) {
	m := newMetrics(func() (z time.Time) { return z }, func() uint64 { return 0 })
	a := m.request(idFrontend, idAPI, 200, "allow")
	a.Inc()
	m.request(idFrontend, idAPI, 200, "allow").Inc()
	m.request(idFrontend, idAPI, 403, "deny").Inc()
	if a != m.requests.WithLabelValues(idFrontend, idAPI, "200", "allow") {
		t.Fatal("cached counter is not the vector's child")
	}
	for labels, want := range map[[2]string]float64{{"200", "allow"}: 2, {"403", "deny"}: 1} {
		var d dto.Metric
		if err := m.requests.WithLabelValues(idFrontend, idAPI, labels[0], labels[1]).(prometheus.Metric).Write(&d); err != nil {
			t.Fatal(err)
		}
		if d.GetCounter().GetValue() != want {
			t.Fatalf("%v: %v, want %v", labels, d.GetCounter().GetValue(), want)
		}
	}
}
