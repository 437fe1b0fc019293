// Command backend is the application behind every setup in
// bench/dataplane.sh: a minimal HTTP/1.1 server on loopback. GET / answers
// 200 with a fixed body of -body bytes; GET /echo answers with the request
// headers it received (the script uses it to check that each proxy chain
// really forwards, and what identity headers it adds).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"net/http"
	"sort"
	"strconv"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18410", "HOST:PORT to serve on")
	size := flag.Int("body", 128, "response body bytes for GET /")
	flag.Parse()

	body := bytes.Repeat([]byte("x"), *size)
	if *size > 0 {
		body[len(body)-1] = '\n'
	}
	length := strconv.Itoa(len(body))
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		keys := make([]string, 0, len(r.Header))
		for k := range r.Header {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s %s %s\n", r.Method, r.RequestURI, r.Proto)
		for _, k := range keys {
			for _, v := range r.Header[k] {
				fmt.Fprintf(w, "%s: %s\n", k, v)
			}
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{length}
		_, _ = w.Write(body)
	})
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
