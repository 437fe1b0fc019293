package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/trustmesh/trustmesh/internal/identity"
)

// workloadIdentity is the proxy's identity, from the Workload API only:
// its SVID and the trust bundles. go-spiffe's X509Source keeps both
// current; TLS configs read them per handshake, so a rotation applies to
// new connections while established ones carry on.
type workloadIdentity struct {
	src  *workloadapi.X509Source
	want spiffeid.ID // zero: the default SVID

	mu     sync.Mutex
	cached *x509svid.SVID
	cert   *tls.Certificate
}

// openIdentity connects to the Workload API and waits (up to wait) until
// it offers the wanted SVID.
func openIdentity(ctx context.Context, socket string, want spiffeid.ID, wait time.Duration) (*workloadIdentity, error) {
	opts := []workloadapi.X509SourceOption{workloadapi.WithClientOptions(workloadapi.WithAddr("unix://" + socket))}
	if !want.IsZero() {
		opts = append(opts, workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, s := range svids {
				if s.ID == want {
					return s
				}
			}
			return nil
		}))
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	src, err := workloadapi.NewX509Source(wctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("workload API at %s: %w (is the agent running, and is this process registered?)", socket, err)
	}
	id := &workloadIdentity{src: src, want: want}
	for {
		if _, err := id.svid(); err == nil {
			return id, nil
		}
		select {
		case <-src.Updated():
		case <-wctx.Done():
			src.Close()
			return nil, fmt.Errorf("the workload API at %s offers no SVID for %s", socket, want)
		}
	}
}

func (w *workloadIdentity) Close() error { return w.src.Close() }

func (w *workloadIdentity) svid() (*x509svid.SVID, error) {
	s, err := w.src.GetX509SVID()
	if err != nil {
		return nil, err
	}
	if !w.want.IsZero() && s.ID != w.want {
		return nil, fmt.Errorf("no SVID for %s", w.want)
	}
	return s, nil
}

// ID is the current SVID's SPIFFE ID.
func (w *workloadIdentity) ID() spiffeid.ID {
	s, err := w.svid()
	if err != nil {
		return w.want
	}
	return s.ID
}

// Expiry is the current SVID's notAfter.
func (w *workloadIdentity) Expiry() time.Time {
	s, err := w.svid()
	if err != nil || len(s.Certificates) == 0 {
		return time.Time{}
	}
	return s.Certificates[0].NotAfter
}

// certificate is the current SVID as a tls.Certificate, rebuilt only when
// the SVID changes.
func (w *workloadIdentity) certificate() (*tls.Certificate, error) {
	s, err := w.svid()
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cached == s {
		return w.cert, nil
	}
	c := &tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
	for _, cert := range s.Certificates {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	w.cached, w.cert = s, c
	return c, nil
}

func (w *workloadIdentity) bundles() x509bundle.Source { return w.src }

// peerError is a failed peer verification with a metric reason.
type peerError struct {
	reason string
	err    error
}

func (e *peerError) Error() string { return e.err.Error() }
func (e *peerError) Unwrap() error { return e.err }

// verifyPeer checks a peer's chain as an X.509-SVID for usage and that its
// trust domain is accepted.
func verifyPeer(certs []*x509.Certificate, bundles x509bundle.Source, tds []spiffeid.TrustDomain, usage x509.ExtKeyUsage) (spiffeid.ID, error) {
	if len(certs) == 0 {
		return spiffeid.ID{}, &peerError{"no_certificate", errors.New("no certificate presented")}
	}
	if id, err := x509svid.IDFromCert(certs[0]); err == nil && !slices.Contains(tds, id.TrustDomain()) {
		return spiffeid.ID{}, &peerError{"untrusted_domain", fmt.Errorf("peer %s is not in an accepted trust domain (%v)", id, tds)}
	}
	id, err := identity.VerifyX509SVID(certs, bundles, time.Now(), usage)
	if err != nil {
		return spiffeid.ID{}, &peerError{verifyReason(err, certs[0]), err}
	}
	return id, nil
}

// verifyReason classifies a verification failure for metrics.
func verifyReason(err error, leaf *x509.Certificate) string {
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		return "expired"
	case now.Before(leaf.NotBefore):
		return "not_yet_valid"
	case leaf.IsCA:
		return "not_an_svid"
	}
	var ui x509.UnknownAuthorityError
	var ce x509.CertificateInvalidError
	switch {
	case errors.As(err, &ui):
		return "unknown_authority"
	case errors.As(err, &ce):
		return "invalid_certificate"
	}
	if _, idErr := x509svid.IDFromCert(leaf); idErr != nil {
		return "not_an_svid"
	}
	return "unverified_chain"
}

// serverTLS is the inbound TLS config: TLS 1.3, a client SVID required and
// verified in VerifyConnection (which crypto/tls also runs on resumed
// sessions, so a resumed session is re-checked against the current bundle
// and clock).
func (w *workloadIdentity) serverTLS(tds func() []spiffeid.TrustDomain, alpn []string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return w.certificate()
		},
		ClientAuth: tls.RequireAnyClientCert,
		NextProtos: alpn,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := verifyPeer(cs.PeerCertificates, w.bundles(), tds(), x509.ExtKeyUsageClientAuth)
			return err
		},
	}
}

// clientTLS is the outbound TLS config: present our SVID, accept only a
// server SVID with one of ids.
func (w *workloadIdentity) clientTLS(ids []spiffeid.ID, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return w.certificate()
		},
		// The WebPKI hostname check does not apply to SVIDs; the SPIFFE
		// checks run in VerifyConnection.
		InsecureSkipVerify: true, //nolint:gosec // replaced by VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			tds := make([]spiffeid.TrustDomain, 0, len(ids))
			for _, id := range ids {
				tds = append(tds, id.TrustDomain())
			}
			id, err := verifyPeer(cs.PeerCertificates, w.bundles(), tds, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if !slices.Contains(ids, id) {
				return &peerError{"unexpected_identity", fmt.Errorf("upstream presented %s, want one of %v", id, ids)}
			}
			return nil
		},
	}
}
