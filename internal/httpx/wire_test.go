package httpx

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// The fast writers must write exactly what net/http writes, byte for
// byte, for every message they take, and must take the common ones.

func parseRequest(t testing.TB, raw string) *http.Request {
	t.Helper()
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	return r
}

// compareRequestHead writes r with both writers; handled reports whether
// WriteRequestHead took it.
func compareRequestHead(t testing.TB, r *http.Request) (handled bool) {
	t.Helper()
	var want bytes.Buffer
	werr := r.Write(&want)
	var got bytes.Buffer
	bw := bufio.NewWriter(&got)
	handled = WriteRequestHead(bw, r)
	bw.Flush()
	if !handled {
		if got.Len() != 0 {
			t.Fatalf("refused but wrote %q", got.String())
		}
		return false
	}
	if werr != nil {
		t.Fatalf("took a request net/http refuses (%v): wrote %q", werr, got.String())
	}
	if got.String() != want.String() {
		t.Fatalf("request head differs from net/http's:\n got %q\nwant %q", got.String(), want.String())
	}
	return true
}

func TestWriteRequestHeadMatchesNetHTTP(t *testing.T) {
	for _, tc := range []struct {
		raw    string
		mutate func(*http.Request)
		taken  bool
	}{
		{raw: "GET /api/items?id=1 HTTP/1.1\r\nHost: api.example\r\nUser-Agent: bench\r\nAccept: */*\r\nX-Request-Id: 0f8f\r\n\r\n", taken: true},
		{raw: "GET / HTTP/1.1\r\nHost: a\r\n\r\n", taken: true},                                                                           // default User-Agent
		{raw: "GET / HTTP/1.1\r\nHost: a\r\n\r\n", mutate: func(r *http.Request) { r.Header["User-Agent"] = []string{""} }, taken: true},  // none
		{raw: "GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: one\r\nUser-Agent: two\r\n\r\n", taken: true},                                     // the first only
		{raw: "GET / HTTP/1.1\r\nHost: a\r\n\r\n", mutate: func(r *http.Request) { r.Header["User-Agent"] = []string{" "} }, taken: true}, // an empty field
		{raw: "GET / HTTP/1.1\r\nHost: a\r\n\r\n", mutate: func(r *http.Request) { r.Header["User-Agent"] = nil }, taken: true},           // none
		{raw: "DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n", taken: true},                                                                       // no length
		{raw: "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", taken: true},                                                    // Content-Length: 0
		{raw: "PATCH /x HTTP/1.1\r\nHost: a\r\n\r\n", taken: true},
		{raw: "HEAD /x HTTP/1.1\r\nHost: a:8080\r\nB: 2\r\nA: 1\r\nA: 0\r\nC:  padded  \r\n\r\n", taken: true}, // sorted, multi-valued, trimmed
		{raw: "GET /p%20q/%2F?x=%41&y HTTP/1.1\r\nHost: a\r\n\r\n", taken: true},                               // escaped path kept
		{raw: "GET http://other.example/abs?q HTTP/1.1\r\nHost: a\r\n\r\n", taken: true},                       // absolute form: origin form out
		{raw: "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", taken: true},
		{raw: "GET / HTTP/1.1\r\nHost: a\r\n\r\n", mutate: func(r *http.Request) { r.Header.Set("X-Forwarded-Client-Cert", "By=spiffe://x;Hash=ab;URI=spiffe://y") }, taken: true},
		{raw: "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"}, // a body
		{raw: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{raw: "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"}, // IPv6 literal
		{raw: "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"},
		{raw: "GET / HTTP/1.1\r\nHost: a\r\n\r\n", mutate: func(r *http.Request) { r.Header.Set("X-Bad", "a\r\nInjected: 1") }},
		{raw: "GET / HTTP/1.1\r\nHost: a\r\n\r\n", mutate: func(r *http.Request) { r.Header["Bad Name"] = []string{"v"} }, taken: true}, // dropped, as net/http does
		{raw: "GET / HTTP/1.1\r\nHost: a\r\n\r\n", mutate: func(r *http.Request) { r.Host = "bücher.example" }},
		{raw: "GET / HTTP/1.1\r\nHost: a\r\n\r\n", mutate: func(r *http.Request) {
			for i := range maxSortedFields + 1 {
				r.Header.Set("X-F"+strings.Repeat("x", i), "v")
			}
		}},
	} {
		r := parseRequest(t, tc.raw)
		if tc.mutate != nil {
			tc.mutate(r)
		}
		if got := compareRequestHead(t, r); got != tc.taken {
			t.Errorf("%q: taken %v, want %v", tc.raw, got, tc.taken)
		}
	}
}

func parseResponse(t testing.TB, raw string, method string) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(raw)), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	return resp
}

// compareResponse writes two parses of raw with both writers.
func compareResponse(t testing.TB, raw, method string, mutate func(*http.Response)) (handled bool) {
	t.Helper()
	a, b := parseResponse(t, raw, method), parseResponse(t, raw, method)
	if mutate != nil {
		mutate(a)
		mutate(b)
	}
	return compareResponses(t, a, b)
}

// compareResponses writes a with net/http and b, the same response again,
// with WriteResponse; handled reports whether WriteResponse took it.
func compareResponses(t testing.TB, a, b *http.Response) (handled bool) {
	t.Helper()
	var want bytes.Buffer
	werr := a.Write(&want)
	var got bytes.Buffer
	bw := bufio.NewWriter(&got)
	handled, err := WriteResponse(bw, b)
	bw.Flush()
	if !handled {
		if got.Len() != 0 || err != nil {
			t.Fatalf("refused but wrote %q (%v)", got.String(), err)
		}
		return false
	}
	if (err == nil) != (werr == nil) {
		t.Fatalf("error %v, net/http's %v", err, werr)
	}
	if got.String() != want.String() {
		t.Fatalf("response differs from net/http's:\n got %q\nwant %q", got.String(), want.String())
	}
	return true
}

func TestWriteResponseMatchesNetHTTP(t *testing.T) {
	for _, tc := range []struct {
		raw, method string
		mutate      func(*http.Response)
		taken       bool
	}{
		{raw: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello", method: "GET", taken: true},
		{raw: "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nB: 2\r\nA: 1\r\nA: 0\r\n\r\nnop", method: "GET", taken: true},
		{raw: "HTTP/1.1 200 Fine Thanks\r\nContent-Length: 1\r\n\r\nx", method: "GET", taken: true}, // its own reason
		{raw: "HTTP/1.1 299\r\nContent-Length: 1\r\n\r\nx", method: "GET", taken: true},             // none (net/http writes "299 299")
		{raw: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", method: "GET", taken: true},
		{raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", method: "GET", mutate: func(r *http.Response) { r.Close = true }, taken: true},
		{raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", method: "GET", taken: true},                                                           // short: an error
		{raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", method: "GET", mutate: func(r *http.Response) { r.ContentLength = 3 }, taken: true}, // long: an error
		{raw: "HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + strings.Repeat("z", 70000), method: "POST", taken: true},                            // past the buffers
		{raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", method: "HEAD"},
		{raw: "HTTP/1.1 204 No Content\r\n\r\n", method: "GET"},
		{raw: "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", method: "GET"},
		{raw: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", method: "GET"},
		{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", method: "GET"},
		{raw: "HTTP/1.1 200 OK\r\n\r\nuntil close", method: "GET"},
		{raw: "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx", method: "GET"},
		{raw: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", method: "GET", mutate: func(r *http.Response) { r.Header.Set("X-Bad", "a\nb") }},
	} {
		if got := compareResponse(t, tc.raw, tc.method, tc.mutate); got != tc.taken {
			t.Errorf("%q: taken %v, want %v", tc.raw, got, tc.taken)
		}
	}
}

func FuzzWriteRequestHead(f *testing.F) {
	f.Add("GET /a?b HTTP/1.1\r\nHost: h\r\nUser-Agent: u\r\nX: 1\r\n\r\n")
	f.Add("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
	f.Add("OPTIONS * HTTP/1.1\r\nHost: a\r\nB: \t2 \r\nA: 1\r\n\r\n")
	f.Fuzz(func(t *testing.T, raw string) {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			return
		}
		compareRequestHead(t, r)
	})
}

func FuzzWriteResponse(f *testing.F) {
	f.Add("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nA: 1\r\n\r\nhello", false)
	f.Add("HTTP/1.0 301 Moved\r\nLocation: /x\r\nContent-Length: 2\r\n\r\nab", true)
	f.Fuzz(func(t *testing.T, raw string, close bool) {
		for _, m := range []string{"GET", "HEAD"} {
			a, err := http.ReadResponse(bufio.NewReader(strings.NewReader(raw)), &http.Request{Method: m})
			if err != nil {
				return
			}
			io.Copy(io.Discard, a.Body) // the raw form parses: compare
			compareResponse(t, raw, m, func(r *http.Response) { r.Close = r.Close || close })
		}
	})
}

// failingWriter fails every write.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

type closeRecorder struct {
	io.Reader
	closed bool
}

func (c *closeRecorder) Close() error { c.closed = true; return nil }

// A head that cannot be written leaves the body unclosed, as net/http
// does: closing a response body before its end would read the rest of it
// from the upstream first.
func TestWriteResponseHeadFailureLeavesBodyOpen(t *testing.T) {
	for _, write := range []func(*bufio.Writer, *http.Response) error{
		func(w *bufio.Writer, r *http.Response) error { return r.Write(w) },
		func(w *bufio.Writer, r *http.Response) error {
			handled, err := WriteResponse(w, r)
			if !handled {
				t.Fatal("not taken")
			}
			return err
		},
	} {
		body := &closeRecorder{Reader: strings.NewReader("hello")}
		resp := &http.Response{StatusCode: 200, ProtoMajor: 1, ProtoMinor: 1, ContentLength: 5, Body: body,
			Header: http.Header{"X-Big": {strings.Repeat("a", 8000)}}}
		if err := write(bufio.NewWriterSize(failingWriter{}, 4096), resp); err == nil {
			t.Fatal("no error")
		}
		if body.closed {
			t.Fatal("the body was closed")
		}
	}
}

// Messages built in code rather than parsed (values untrimmed, hosts and
// paths of any kind): the same bytes as net/http, or refused.
func FuzzWriteRequestHeadBuilt(f *testing.F) {
	f.Add("GET", "a:80", "/p", "", "X-A", " v ", " ", true)
	f.Add("POST", "[::1%25en0]:80", "/a b", "q=1", "user-agent", "x", "", false)
	f.Fuzz(func(t *testing.T, method, host, path, query, key, value, ua string, setUA bool) {
		r := &http.Request{Method: method, Host: host, URL: &url.URL{Path: path, RawQuery: query}, Header: http.Header{key: {value}}}
		if setUA {
			r.Header["User-Agent"] = []string{ua}
		}
		compareRequestHead(t, r)
	})
}

func FuzzWriteResponseBuilt(f *testing.F) {
	f.Add(200, "200 OK", 1, 1, "X-A", " v ", "hello", 0, false, "GET")
	f.Add(404, "", 1, 0, "Connection", "close", "x", 1, true, "HEAD")
	f.Fuzz(func(t *testing.T, code int, status string, major, minor int, key, value, body string, lengthDelta int, close bool, method string) {
		build := func() *http.Response {
			return &http.Response{StatusCode: code, Status: status, ProtoMajor: major, ProtoMinor: minor,
				Header: http.Header{key: {value}}, ContentLength: int64(len(body) + lengthDelta%4), Close: close,
				Body: io.NopCloser(strings.NewReader(body)), Request: &http.Request{Method: method}}
		}
		compareResponses(t, build(), build())
	})
}
