// Package apiclient talks to the control plane's HTTP API, over the local
// admin socket or over mTLS.
package apiclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
)

// Error is a non-2xx answer from the server.
type Error struct {
	Status  int
	Message string
	Code    string // apiv1.Code*, when the server gave one
}

func (e *Error) Error() string { return e.Message }

// Timeouts bound every phase of a call to the server, so that a server
// that accepts connections but never answers (hung, or a black hole on the
// way) makes calls fail in bounded time instead of blocking. A zero field
// takes its value from DefaultTimeouts.
type Timeouts struct {
	// Dial bounds the TCP connect (or unix socket connect).
	Dial time.Duration
	// TLSHandshake bounds the TLS handshake of a new connection.
	TLSHandshake time.Duration
	// Call bounds an ordinary call as a whole: connection, request,
	// response headers and body.
	Call time.Duration
	// StreamOpen bounds opening the watch stream: connection, request and
	// response headers. The stream itself then has no deadline (it is
	// long-lived); its reader watches for silence (the server sends
	// heartbeats).
	StreamOpen time.Duration
	// Ping is the HTTP/2 connection health check: a connection on which
	// nothing arrived for this long is pinged, and closed if the ping is
	// not answered within as long again. Without it a connection to a
	// server that stopped answering would stay in the pool, and every
	// later call on it (the watch stream reopening included) would wait
	// out its own timeout and fail, even once the server answers new
	// connections again.
	Ping time.Duration
}

// DefaultTimeouts are the timeouts of a client made without WithTimeouts.
var DefaultTimeouts = Timeouts{
	Dial:         10 * time.Second,
	TLSHandshake: 10 * time.Second,
	Call:         30 * time.Second,
	StreamOpen:   30 * time.Second,
	Ping:         15 * time.Second,
}

// withDefaults fills zero fields from DefaultTimeouts.
func (t Timeouts) withDefaults() Timeouts {
	d := DefaultTimeouts
	for _, f := range []struct{ v, def *time.Duration }{
		{&t.Dial, &d.Dial}, {&t.TLSHandshake, &d.TLSHandshake}, {&t.Call, &d.Call},
		{&t.StreamOpen, &d.StreamOpen}, {&t.Ping, &d.Ping},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	return t
}

// Option configures a client.
type Option func(*options)

type options struct {
	timeouts Timeouts
}

// WithTimeouts sets the client's timeouts (zero fields: the defaults).
func WithTimeouts(t Timeouts) Option {
	return func(o *options) { o.timeouts = t }
}

func buildOptions(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	o.timeouts = o.timeouts.withDefaults()
	return o
}

// Client calls the API.
type Client struct {
	http     *http.Client
	base     string
	timeouts Timeouts
}

// NewSocket returns a client for the admin unix socket at path.
func NewSocket(path string, opts ...Option) *Client {
	o := buildOptions(opts)
	d := net.Dialer{Timeout: o.timeouts.Dial}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", path)
		},
	}
	return &Client{http: &http.Client{Transport: tr, Timeout: o.timeouts.Call}, base: "http://admin.sock", timeouts: o.timeouts}
}

// NewTLS returns a client for the server's TCP listener at addr
// (host:port) with the given TLS configuration (see identity).
func NewTLS(addr string, cfg *tls.Config, opts ...Option) *Client {
	o := buildOptions(opts)
	d := &net.Dialer{Timeout: o.timeouts.Dial, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		TLSClientConfig:     cfg,
		ForceAttemptHTTP2:   true,
		DialContext:         d.DialContext,
		TLSHandshakeTimeout: o.timeouts.TLSHandshake,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: o.timeouts.Ping,
			PingTimeout:     o.timeouts.Ping,
		},
	}
	return &Client{http: &http.Client{Transport: tr, Timeout: o.timeouts.Call}, base: "https://" + addr, timeouts: o.timeouts}
}

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return unwrapDialError(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return errorFrom(resp, data)
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*[]byte); ok {
		*raw = data
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode server answer: %w", err)
	}
	return nil
}

// errorFrom builds the error for a non-2xx answer from its JSON body.
func errorFrom(resp *http.Response, body []byte) *Error {
	var e apiv1.Error
	if json.Unmarshal(body, &e) != nil || e.Error == "" {
		e.Error = "server answered " + resp.Status
	}
	return &Error{Status: resp.StatusCode, Message: e.Error, Code: e.Code}
}

// unwrapDialError turns "Get http://admin.sock/...: dial unix ...: connect:
// no such file" into something that says what to check.
func unwrapDialError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return fmt.Errorf("cannot reach the server (%v): is it running, and is the address or socket path right?", oe)
	}
	return err
}

// Health checks the server answers.
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, apiv1.PathHealth, nil, nil)
}

// TrustDomain asks the server for its trust domain.
func (c *Client) TrustDomain(ctx context.Context) (string, error) {
	var out struct {
		TrustDomain string `json:"trust_domain"`
	}
	err := c.do(ctx, http.MethodGet, apiv1.PathHealth, nil, &out)
	return out.TrustDomain, err
}

// CreateEntry creates a registration entry.
func (c *Client) CreateEntry(ctx context.Context, in apiv1.EntryCreate) (apiv1.Entry, error) {
	var out apiv1.Entry
	err := c.do(ctx, http.MethodPost, apiv1.PathEntries, in, &out)
	return out, err
}

// ListEntries lists entries, optionally filtered.
func (c *Client) ListEntries(ctx context.Context, spiffeID, parentID string) ([]apiv1.Entry, error) {
	q := url.Values{}
	if spiffeID != "" {
		q.Set("spiffe_id", spiffeID)
	}
	if parentID != "" {
		q.Set("parent_id", parentID)
	}
	path := apiv1.PathEntries
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out apiv1.EntryList
	err := c.do(ctx, http.MethodGet, path, nil, &out)
	return out.Entries, err
}

// GetEntry fetches one entry.
func (c *Client) GetEntry(ctx context.Context, id string) (apiv1.Entry, error) {
	var out apiv1.Entry
	err := c.do(ctx, http.MethodGet, apiv1.PathEntry+url.PathEscape(id), nil, &out)
	return out, err
}

// UpdateEntry patches an entry.
func (c *Client) UpdateEntry(ctx context.Context, id string, p apiv1.EntryPatch) (apiv1.Entry, error) {
	var out apiv1.Entry
	err := c.do(ctx, http.MethodPatch, apiv1.PathEntry+url.PathEscape(id), p, &out)
	return out, err
}

// DeleteEntry deletes an entry and returns it.
func (c *Client) DeleteEntry(ctx context.Context, id string) (apiv1.Entry, error) {
	var out apiv1.Entry
	err := c.do(ctx, http.MethodDelete, apiv1.PathEntry+url.PathEscape(id), nil, &out)
	return out, err
}

// GenerateToken mints a join token.
func (c *Client) GenerateToken(ctx context.Context, ttl time.Duration) (apiv1.Token, error) {
	var out apiv1.Token
	err := c.do(ctx, http.MethodPost, apiv1.PathTokens, apiv1.TokenCreate{TTL: int64(ttl / time.Second)}, &out)
	return out, err
}

// RevokeToken deletes an unused join token.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, apiv1.PathToken+url.PathEscape(id), nil, nil)
}

// ListAgents lists attested agents.
func (c *Client) ListAgents(ctx context.Context) ([]apiv1.Agent, error) {
	var out apiv1.AgentList
	err := c.do(ctx, http.MethodGet, apiv1.PathAgents, nil, &out)
	return out.Agents, err
}

// EvictAgent deletes an agent's record; it must attest again.
func (c *Client) EvictAgent(ctx context.Context, spiffeID string) (apiv1.Agent, error) {
	var out apiv1.Agent
	err := c.do(ctx, http.MethodPost, apiv1.PathAgentEvict, apiv1.AgentRef{SPIFFEID: spiffeID}, &out)
	return out, err
}

// BanAgent bans an agent.
func (c *Client) BanAgent(ctx context.Context, spiffeID string) (apiv1.Agent, error) {
	var out apiv1.Agent
	err := c.do(ctx, http.MethodPost, apiv1.PathAgentBan, apiv1.AgentRef{SPIFFEID: spiffeID}, &out)
	return out, err
}

// Bundle fetches the trust bundle as "pem" or "spiffe" (JWKS).
func (c *Client) Bundle(ctx context.Context, format string) ([]byte, error) {
	var out []byte
	err := c.do(ctx, http.MethodGet, apiv1.PathBundle+"?format="+url.QueryEscape(format), nil, &out)
	return out, err
}

// MintX509 mints an X.509-SVID for a CSR.
func (c *Client) MintX509(ctx context.Context, in apiv1.X509MintRequest) (apiv1.X509MintResponse, error) {
	var out apiv1.X509MintResponse
	err := c.do(ctx, http.MethodPost, apiv1.PathMintX509, in, &out)
	return out, err
}

// MintJWT mints a JWT-SVID.
func (c *Client) MintJWT(ctx context.Context, in apiv1.JWTMintRequest) (apiv1.JWTSVID, error) {
	var out apiv1.JWTSVID
	err := c.do(ctx, http.MethodPost, apiv1.PathMintJWT, in, &out)
	return out, err
}

// Attest performs node attestation with a join token.
func (c *Client) Attest(ctx context.Context, in apiv1.AttestRequest) (apiv1.AttestResponse, error) {
	var out apiv1.AttestResponse
	err := c.do(ctx, http.MethodPost, apiv1.PathAgentAttest, in, &out)
	return out, err
}

// RenewAgent renews the calling agent's SVID.
func (c *Client) RenewAgent(ctx context.Context, csr []byte) (apiv1.X509SVID, error) {
	var out apiv1.X509SVID
	err := c.do(ctx, http.MethodPost, apiv1.PathAgentRenew, apiv1.RenewRequest{CSR: csr}, &out)
	return out, err
}

// AgentEntries lists the calling agent's authorized entries.
func (c *Client) AgentEntries(ctx context.Context) ([]apiv1.Entry, error) {
	var out apiv1.EntryList
	err := c.do(ctx, http.MethodGet, apiv1.PathAgentEntries, nil, &out)
	return out.Entries, err
}

// AgentX509SVIDs asks for SVIDs for authorized entries.
func (c *Client) AgentX509SVIDs(ctx context.Context, reqs []apiv1.SVIDRequest) ([]apiv1.X509SVIDResult, error) {
	var out apiv1.X509SVIDBatchResponse
	err := c.do(ctx, http.MethodPost, apiv1.PathAgentX509SVID, apiv1.X509SVIDBatchRequest{Requests: reqs}, &out)
	return out.Results, err
}

// AgentJWTSVID asks for a JWT-SVID for an authorized entry.
func (c *Client) AgentJWTSVID(ctx context.Context, entryID string, audience []string) (apiv1.JWTSVID, error) {
	var out apiv1.JWTSVID
	err := c.do(ctx, http.MethodPost, apiv1.PathAgentJWTSVID, apiv1.AgentJWTRequest{EntryID: entryID, Audience: audience}, &out)
	return out, err
}

// HasCode reports whether err is an API error with the given code.
func HasCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// IsStatus reports whether err is an API error with the given status.
func IsStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

// Watch opens the agent watch stream. Next returns events until the stream
// ends (io.EOF) or fails; Close ends it.
//
// Opening is bounded (the client's Dial, TLSHandshake and StreamOpen
// timeouts: a server that accepts the connection and never answers makes
// Watch fail rather than block); the open stream has no deadline.
func (c *Client) Watch(ctx context.Context) (*WatchStream, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	open := c.timeouts.StreamOpen
	timer := time.AfterFunc(open, func() { cancel(errStreamOpen) })
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+apiv1.PathAgentWatch, nil)
	if err != nil {
		timer.Stop()
		cancel(nil)
		return nil, err
	}
	// The stream is long-lived: the client's overall timeout must not
	// apply (the timer above bounds the opening instead).
	hc := *c.http
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err == nil && resp.StatusCode != http.StatusOK {
		// A refusal: its short body is read still under the open timeout.
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		timer.Stop()
		cancel(nil)
		return nil, errorFrom(resp, data)
	}
	if !timer.Stop() {
		// The open timeout fired: whatever Do returned, the stream's
		// context is cancelled.
		if err == nil {
			resp.Body.Close()
		}
		cancel(nil)
		return nil, fmt.Errorf("no answer from the server within %s: %w", open, context.DeadlineExceeded)
	}
	if err != nil {
		cancel(nil)
		return nil, unwrapDialError(err)
	}
	dec := json.NewDecoder(resp.Body)
	return &WatchStream{body: resp.Body, dec: dec, cancel: cancel}, nil
}

var errStreamOpen = errors.New("watch stream open timeout")

// WatchStream reads watch events.
type WatchStream struct {
	body   io.ReadCloser
	dec    *json.Decoder
	cancel context.CancelCauseFunc
}

// Next returns the next event. An "error" event is returned as an *Error
// with status 403 (the server ended the stream on an authorization check).
func (w *WatchStream) Next() (apiv1.WatchEvent, error) {
	var ev apiv1.WatchEvent
	if err := w.dec.Decode(&ev); err != nil {
		return ev, err
	}
	if ev.Kind == apiv1.WatchError {
		return ev, &Error{Status: http.StatusForbidden, Message: ev.Error, Code: ev.Code}
	}
	return ev, nil
}

// Close ends the stream.
func (w *WatchStream) Close() error {
	err := w.body.Close()
	w.cancel(nil)
	return err
}
