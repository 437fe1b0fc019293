package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/upstream/upstreamtest"
)

// BenchmarkH1Exchange: one keep-alive client through the HTTP/1.1 path
// (a recording side, no TLS) to an upstream that answers from memory; the
// per-request cost of the forwarder itself, allocations included.
func BenchmarkH1Exchange(b *testing.B) {
	upAddr := upstreamtest.Serve(b, func(c net.Conn, br *bufio.Reader) {
		_ = c.SetDeadline(time.Time{}) // as long as the benchmark runs
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			req.Body.Close()
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
		}
	})
	addr, _, _ := startH1(b, upAddr)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	const request = "GET /api/items?id=1 HTTP/1.1\r\nHost: api.example\r\nUser-Agent: bench\r\nAccept: */*\r\nX-Request-Id: 0f8fad5b-d9cb-469f-a165-70867728950e\r\n\r\n"
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write([]byte(request)); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, resp.Body); err != nil || n != 5 {
			b.Fatalf("body: %d bytes, %v", n, err)
		}
	}
}
