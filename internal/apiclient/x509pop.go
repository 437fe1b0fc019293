package apiclient

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
)

// AttestX509PoP performs x509pop attestation against the server at addr.
// The proof signs a value bound to the TLS connection (see
// internal/attest), so this opens its own connection, derives the value
// from it, and sends the request over that same connection.
func AttestX509PoP(ctx context.Context, addr string, cfg *tls.Config, csr []byte,
	prove func(cs *tls.ConnectionState) (*apiv1.X509PoPProof, error)) (apiv1.AttestResponse, error) {
	var out apiv1.AttestResponse
	d := tls.Dialer{Config: cfg.Clone()}
	d.Config.NextProtos = []string{"http/1.1"}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return out, unwrapDialError(err)
	}
	conn := raw.(*tls.Conn)
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
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
