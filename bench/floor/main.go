// Command floor is a reference for the benchmarks, not a proxy anyone
// should run: the least a Go HTTP/1.1 keep-alive proxy can do per request,
// so that bench/gateway.sh and bench/dataplane.sh (GO_FLOOR=1) can tell
// what Go itself costs from what net/http's parsing, and Trustmesh's own
// work (policy, audit, identity headers), add on top.
//
// One goroutine per client connection, with one upstream connection of its
// own. By default it copies each request head to the upstream and each
// response head and Content-Length body back, finding the end of a head
// and the Content-Length and nothing else: no header map, no checks, no
// log, no authorization. -parse goes through net/http's parser and framing
// instead (http.ReadRequest, Request.Write, http.ReadResponse,
// Response.Write, as the proxy's HTTP/1.1 loop does). A request with a
// body, or a response without a Content-Length, ends the connection.
//
// -tls-in and -tls-out make the two halves of an mTLS pair with
// crypto/tls (TLS 1.3, the certificates bench/dataplane.sh gives nginx):
// -tls-in accepts TLS and requires a client certificate that chains to
// -bundle; -tls-out dials the upstream over TLS with its certificate and
// verifies the server's against -bundle and -server-name.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18700", "HOST:PORT to serve on")
	upstream := flag.String("upstream", "", "HOST:PORT to forward to")
	parse := flag.Bool("parse", false, "parse and frame with net/http instead of copying heads")
	tlsIn := flag.Bool("tls-in", false, "accept mTLS (needs -cert, -key, -bundle)")
	tlsOut := flag.Bool("tls-out", false, "dial the upstream with mTLS (needs -cert, -key, -bundle, -server-name)")
	certFile := flag.String("cert", "", "certificate chain (PEM)")
	keyFile := flag.String("key", "", "private key (PEM)")
	bundleFile := flag.String("bundle", "", "CA certificates to verify the peer against (PEM)")
	serverName := flag.String("server-name", "", "-tls-out: the name the upstream's certificate must carry")
	flag.Parse()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	dial := func() (net.Conn, error) { return net.Dial("tcp", *upstream) }
	if *tlsIn || *tlsOut {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			log.Fatal(err)
		}
		pem, err := os.ReadFile(*bundleFile)
		if err != nil {
			log.Fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			log.Fatalf("%s: no certificates", *bundleFile)
		}
		if *tlsIn {
			ln = tls.NewListener(ln, &tls.Config{
				Certificates: []tls.Certificate{cert}, ClientCAs: pool,
				ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13,
			})
		}
		if *tlsOut {
			cfg := &tls.Config{
				Certificates: []tls.Certificate{cert}, RootCAs: pool,
				ServerName: *serverName, MinVersion: tls.VersionTLS13,
			}
			dial = func() (net.Conn, error) { return tls.Dial("tcp", *upstream, cfg) }
		}
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go relay(c, dial, *parse)
	}
}

// relay serves one client connection until it or the upstream ends.
func relay(c net.Conn, dial func() (net.Conn, error), parse bool) {
	defer c.Close()
	u, err := dial()
	if err != nil {
		log.Print(err)
		return
	}
	defer u.Close()
	cr, cw := bufio.NewReader(c), bufio.NewWriter(c)
	ur, uw := bufio.NewReader(u), bufio.NewWriter(u)
	for {
		if parse {
			req, err := http.ReadRequest(cr)
			if err != nil || req.Write(uw) != nil || uw.Flush() != nil {
				return
			}
			resp, err := http.ReadResponse(ur, req)
			if err != nil || resp.Write(cw) != nil || cw.Flush() != nil {
				return
			}
			continue
		}
		if n, err := copyHead(cr, uw); err != nil || n > 0 || uw.Flush() != nil {
			return
		}
		n, err := copyHead(ur, cw)
		if err != nil || n < 0 {
			return
		}
		if _, err := io.CopyN(cw, ur, int64(n)); err != nil || cw.Flush() != nil {
			return
		}
	}
}

// copyHead copies one message head, up to and including its empty line,
// from r to w, and returns its Content-Length (-1 when it has none).
func copyHead(r *bufio.Reader, w *bufio.Writer) (int, error) {
	n := -1
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		_, _ = w.Write(line)
		if len(line) <= 2 {
			return n, nil
		}
		if k := bytes.IndexByte(line, ':'); k > 0 && bytes.EqualFold(line[:k], []byte("content-length")) {
			if n, err = strconv.Atoi(string(bytes.TrimSpace(line[k+1:]))); err != nil {
				return 0, err
			}
		}
	}
}
