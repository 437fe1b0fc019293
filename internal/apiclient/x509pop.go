package apiclient

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
)

// AttestX509PoP performs x509pop attestation against the server at addr.
// The proof signs a value bound to the TLS connection (see
// internal/attest), so this opens its own connection, derives the value
// from it, and sends the request over that same connection.
//
// It is bounded as a client's calls are (WithTimeouts; the defaults
// otherwise): the connect by Dial, the handshake by TLSHandshake, the whole
// exchange by Call, ctx's deadline if earlier.
func AttestX509PoP(ctx context.Context, addr string, cfg *tls.Config, csr []byte,
	prove func(cs *tls.ConnectionState) (*apiv1.X509PoPProof, error), opts ...Option) (apiv1.AttestResponse, error) {
	var out apiv1.AttestResponse
	t := buildOptions(opts).timeouts
	ctx, cancel := context.WithTimeout(ctx, t.Call)
	defer cancel()
	d := net.Dialer{Timeout: t.Dial}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return out, unwrapDialError(err)
	}
	defer raw.Close()
	// The exchange ends at ctx's deadline, or at once if ctx is cancelled.
	dl, _ := ctx.Deadline()
	_ = raw.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	tcfg := cfg.Clone()
	tcfg.NextProtos = []string{"http/1.1"}
	if tcfg.ServerName == "" {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			tcfg.ServerName = host
		}
	}
	conn := tls.Client(raw, tcfg)
	hctx, hcancel := context.WithTimeout(ctx, t.TLSHandshake)
	err = conn.HandshakeContext(hctx)
	hcancel()
	if err != nil {
		return out, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	cs := conn.ConnectionState()
	proof, err := prove(&cs)
	if err != nil {
		return out, err
	}
	body, err := json.Marshal(apiv1.AttestRequest{X509PoP: proof, CSR: csr})
	if err != nil {
		return out, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+apiv1.PathAgentAttest, bytes.NewReader(body))
	if err != nil {
		return out, err
	}
	req.Header.Set("Content-Type", "application/json")
	if err := req.Write(conn); err != nil {
		return out, fmt.Errorf("send attestation: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return out, fmt.Errorf("read attestation answer: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return out, err
	}
	if resp.StatusCode != http.StatusOK {
		return out, errorFrom(resp, data)
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return out, fmt.Errorf("decode attestation answer: %w", err)
	}
	return out, nil
}
