package httpx

// Writing HTTP/1.1 messages without fmt. A sidecar spends a tenth of its
// CPU per request in (*http.Request).Write and (*http.Response).Write
// writing heads: the start line goes through fmt.Fprintf, the fields
// through a pooled sorter and a strings.Replacer per value. For the
// common messages (a request without a body, a response with a known
// length) WriteRequestHead and WriteResponse write the very same bytes
// directly — the fields sorted by name, as net/http writes them — and
// refuse, having written nothing, anything else, for the caller to write
// with net/http. The wire tests check byte equality with net/http.

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strconv"

	"golang.org/x/net/http/httpguts"
)

// maxSortedFields bounds the header fields sorted on the stack; a message
// with more goes to net/http.
const maxSortedFields = 32

// WriteRequestHead writes r's head as r.Write(w) would, when r has no
// body (no body, length 0, no transfer coding, no trailer), is not a
// CONNECT nor to be closed, has a plain Host (ASCII, valid, not an IPv6
// literal) and fields that need no sanitizing. Otherwise it writes nothing
// and returns false.
func WriteRequestHead(w *bufio.Writer, r *http.Request) bool {
	if r.Body != nil && r.Body != http.NoBody || r.ContentLength != 0 || len(r.TransferEncoding) != 0 ||
		len(r.Trailer) != 0 || r.Close || r.URL == nil || r.Method == http.MethodConnect {
		return false
	}
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	// Request.Write converts a non-ASCII host to punycode, empties an
	// invalid one and removes an IPv6 zone: none of that here.
	if !isASCII(host) || !httpguts.ValidHostHeader(host) || len(host) > 0 && host[0] == '[' {
		return false
	}
	uri := r.URL.RequestURI()
	if hasCTL(uri) {
		return false // Request.Write refuses it
	}
	method := r.Method
	if method == "" {
		method = http.MethodGet
	}
	// net/http's default where the header is absent; an empty first value
	// sends none (a value of spaces still sends the field, empty).
	ua, sendUA := "Go-http-client/1.1", true
	if vv, ok := r.Header["User-Agent"]; ok {
		ua = ""
		if len(vv) > 0 {
			ua = vv[0]
		}
		if needsSanitizing(ua) {
			return false
		}
		sendUA = ua != ""
		ua = textproto.TrimString(ua)
	}
	var keys [maxSortedFields]string
	n, ok := sortedFields(r.Header, keys[:], requestHeadSkips)
	if !ok {
		return false
	}
	w.WriteString(method)
	w.WriteByte(' ')
	w.WriteString(uri)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(host)
	w.WriteString("\r\n")
	if sendUA {
		w.WriteString("User-Agent: ")
		w.WriteString(ua)
		w.WriteString("\r\n")
	}
	// net/http sends a zero length for these methods (servers expect one),
	// none for the others.
	if method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch {
		w.WriteString("Content-Length: 0\r\n")
	}
	writeFields(w, r.Header, keys[:n])
	w.WriteString("\r\n")
	return true
}

// requestHeadSkips are the fields Request.Write writes itself (or not at
// all) rather than from the header map.
func requestHeadSkips(k string) bool {
	switch k {
	case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
		return true
	}
	return false
}

// responseSkips are the fields Response.Write takes from the response's
// framing rather than from the header map.
func responseSkips(k string) bool {
	switch k {
	case "Content-Length", "Transfer-Encoding", "Trailer":
		return true
	}
	return false
}

// WriteResponse writes resp, head and body, as resp.Write(w) would, when
// it is a final response with a body of known length (Content-Length > 0,
// no transfer coding, no trailer; not to a HEAD; a status that allows a
// body), no Connection field, and fields that need no sanitizing; then
// handled is true and err what writing it met. Otherwise it writes
// nothing and handled is false. Like Response.Write it reads the body to
// its end and closes it, and fails when the body is shorter or longer
// than its length; a head it could not write leaves the body unclosed.
func WriteResponse(w *bufio.Writer, resp *http.Response) (handled bool, err error) {
	code := resp.StatusCode
	if resp.ContentLength <= 0 || len(resp.TransferEncoding) != 0 || len(resp.Trailer) != 0 || resp.Body == nil ||
		code < 200 || code > 999 || code == http.StatusNoContent || code == http.StatusNotModified ||
		resp.Request != nil && resp.Request.Method == http.MethodHead ||
		resp.ProtoMajor < 0 || resp.ProtoMajor > 9 || resp.ProtoMinor < 0 || resp.ProtoMinor > 9 {
		return false, nil
	}
	if _, ok := resp.Header["Connection"]; ok {
		return false, nil // Response.Write looks for a "close" token in it
	}
	var digits [3]byte
	digits[0], digits[1], digits[2] = byte('0'+code/100), byte('0'+code/10%10), byte('0'+code%10)
	text := resp.Status
	if text == "" {
		text = http.StatusText(code)
		if text == "" {
			return false, nil
		}
	} else if len(text) >= 4 && text[0] == digits[0] && text[1] == digits[1] && text[2] == digits[2] && text[3] == ' ' {
		text = text[4:] // "200 OK" -> "OK", as Response.Write trims it
	}
	var keys [maxSortedFields]string
	n, ok := sortedFields(resp.Header, keys[:], responseSkips)
	if !ok {
		return false, nil
	}
	w.WriteString("HTTP/")
	w.WriteByte(byte('0' + resp.ProtoMajor))
	w.WriteByte('.')
	w.WriteByte(byte('0' + resp.ProtoMinor))
	w.WriteByte(' ')
	w.Write(digits[:])
	w.WriteByte(' ')
	w.WriteString(text)
	w.WriteString("\r\n")
	if resp.Close {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("Content-Length: ")
	w.Write(strconv.AppendInt(w.AvailableBuffer(), resp.ContentLength, 10))
	w.WriteString("\r\n")
	writeFields(w, resp.Header, keys[:n])
	if _, err := w.WriteString("\r\n"); err != nil {
		return true, err // as Response.Write: the body is not closed (closing would read it to its end)
	}
	copied, err := copyBody(w, resp.Body, resp.ContentLength)
	if err == nil {
		// Response.Write reads on to the end: a body longer than its
		// length is an error too.
		var extra int64
		extra, err = io.Copy(io.Discard, resp.Body)
		copied += extra
	}
	if cerr := resp.Body.Close(); err == nil {
		err = cerr
	}
	if err == nil && copied != resp.ContentLength {
		err = fmt.Errorf("http: ContentLength=%d with Body length %d", resp.ContentLength, copied)
	}
	return true, err
}

// copyBody copies up to n bytes of body to w. (Not through w's
// io.ReaderFrom: under it a net.TCPConn's would allocate a buffer per
// call.)
func copyBody(w *bufio.Writer, body io.Reader, n int64) (copied int64, err error) {
	bp := GetBuffer()
	defer PutBuffer(bp)
	buf := *bp
	for empty := 0; copied < n; {
		p := buf
		if left := n - copied; int64(len(p)) > left {
			p = p[:left]
		}
		m, rerr := body.Read(p)
		if m == 0 && rerr == nil {
			if empty++; empty == 100 { // as bufio.Writer.ReadFrom gives up
				return copied, io.ErrNoProgress
			}
			continue
		}
		empty = 0
		if m > 0 {
			if _, err := w.Write(p[:m]); err != nil {
				return copied, err
			}
			copied += int64(m)
		}
		if rerr == io.EOF {
			return copied, nil
		}
		if rerr != nil {
			return copied, rerr
		}
	}
	return copied, nil
}

// sortedFields puts h's field names that skip does not take, and that are
// valid (net/http drops the others), into keys in sorted order; false
// when there are more than keys holds or a value needs sanitizing.
func sortedFields(h http.Header, keys []string, skip func(string) bool) (int, bool) {
	n := 0
	for k, vv := range h {
		if skip(k) || !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		if n == len(keys) {
			return 0, false
		}
		for _, v := range vv {
			if needsSanitizing(v) {
				return 0, false
			}
		}
		// Insertion sort: a message has a handful of fields.
		i := n
		for i > 0 && keys[i-1] > k {
			keys[i] = keys[i-1]
			i--
		}
		keys[i] = k
		n++
	}
	return n, true
}

// writeFields writes the fields named in keys, each value trimmed as
// net/http trims it.
func writeFields(w *bufio.Writer, h http.Header, keys []string) {
	for _, k := range keys {
		for _, v := range h[k] {
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(textproto.TrimString(v))
			w.WriteString("\r\n")
		}
	}
}

// needsSanitizing: net/http would replace a CR or LF in v with a space.
func needsSanitizing(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] == '\r' || v[i] == '\n' {
			return true
		}
	}
	return false
}

func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b < ' ' || b == 0x7f {
			return true
		}
	}
	return false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
