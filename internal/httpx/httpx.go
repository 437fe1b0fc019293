// Package httpx holds the HTTP pieces the sidecar proxy and the access
// gateway share on their request paths: a response writer that records
// the status, a buffer pool for httputil.ReverseProxy, the protocol
// upgrade rule, the hop-by-hop header rule, identity-header matching
// that a client cannot dodge with underscores, and HTTP/1.1 writers for
// the common request and response heads (wire.go).
package httpx

import (
	"errors"
	"net/http"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// StatusWriter records the response code. Unwrap lets
// http.ResponseController (used by ReverseProxy for flushing and protocol
// upgrades) reach the real writer.
type StatusWriter struct {
	http.ResponseWriter
	status int
}

// WriteHeader records the first final status (or 101), not 1xx
// informational responses such as 103 Early Hints.
func (w *StatusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 || code == http.StatusSwitchingProtocols {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *StatusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *StatusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Code is the status sent (200 if the handler sent none).
func (w *StatusWriter) Code() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// BufferPool recycles ReverseProxy's 32 KiB copy buffers.
type BufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (BufferPool) Get() []byte  { return *(buffers.Get().(*[]byte)) }
func (BufferPool) Put(b []byte) { buffers.Put(&b) }

// GetBuffer and PutBuffer hand out the same 32 KiB copy buffers as
// pointers, for loops that copy themselves (a Put of a slice allocates
// its pointer; these do not).
func GetBuffer() *[]byte  { return buffers.Get().(*[]byte) }
func PutBuffer(b *[]byte) { buffers.Put(b) }

// ErrUpgradeRefused is CheckUpgrade's answer to an upgrade other than
// WebSocket.
var ErrUpgradeRefused = errors.New("protocol upgrade refused: only websocket is forwarded")

// CheckUpgrade applies the upgrade rule to an HTTP/1.1 request about to be
// authorized and forwarded. Authorization is per request; after a 101
// Switching Protocols the proxy only copies bytes, so an upgrade is a
// tunnel that later requests could ride past the policy. WebSocket is
// allowed (its messages are not HTTP requests: the handshake is what the
// policy decides). An h2c upgrade (RFC 7540 section 3.2, which a client
// may always do without) is removed, with its HTTP2-Settings, and the
// request is served as HTTP/1.1, as Envoy does. Any other upgrade is
// refused with ErrUpgradeRefused (answer 400).
func CheckUpgrade(h http.Header) error {
	delete(h, "Http2-Settings")
	ups := h["Upgrade"]
	if len(ups) == 0 {
		return nil
	}
	websocket, h2c, other := false, false, false
	for _, v := range ups {
		for _, tok := range strings.Split(v, ",") {
			tok = strings.TrimSpace(tok)
			name, _, _ := strings.Cut(tok, "/") // protocol/version
			switch {
			case tok == "":
			case strings.EqualFold(name, "websocket"):
				websocket = true
			case strings.EqualFold(name, "h2c"):
				h2c = true
			default:
				other = true
			}
		}
	}
	switch {
	case other || websocket && h2c:
		return ErrUpgradeRefused
	case h2c:
		delete(h, "Upgrade")
	}
	return nil
}

// CanonicalName is a header name as a backend that maps '_' to '-' (CGI,
// WSGI, Rack, PHP and many frameworks do: HTTP_X_FORWARDED_CLIENT_CERT)
// would see it: X_Forwarded_Client_Cert is X-Forwarded-Client-Cert. Identity
// headers are stripped by this name, so underscores cannot smuggle one
// past the proxy.
func CanonicalName(k string) string {
	if strings.IndexByte(k, '_') < 0 {
		return k // net/http already canonicalized it
	}
	return http.CanonicalHeaderKey(strings.ReplaceAll(k, "_", "-"))
}

// hopHeaders are the connection's, not the message's (RFC 9110 7.6.1).
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// RemoveHopHeaders drops hop-by-hop headers and those Connection names;
// for an upgrade handshake the upgrade itself is kept. "Te: trailers"
// stays, as httputil.ReverseProxy keeps it: gRPC servers require it.
func RemoveHopHeaders(h http.Header, keepUpgrade bool) {
	upgrade := h["Upgrade"]
	trailers := httpguts.HeaderValuesContainsToken(h["Te"], "trailers")
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				delete(h, http.CanonicalHeaderKey(name))
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
	if keepUpgrade {
		h["Connection"] = []string{"Upgrade"}
		h["Upgrade"] = upgrade
	}
	if trailers {
		h["Te"] = []string{"trailers"}
	}
}
