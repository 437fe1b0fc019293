package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ServerTLSConfig serves getCert's certificate over TLS 1.3. Client
// certificates are optional at the TLS layer (an agent attesting for the
// first time has none) but, when presented, must be valid X.509-SVIDs:
// otherwise the handshake fails. Handlers then decide per operation, with
// PeerID, whether the caller may proceed.
//
// Verification runs in VerifyConnection, which crypto/tls also calls on
// resumed sessions, so a resumed session is re-checked against the current
// bundle. When verification fails and refresh is non-nil, refresh may
// update the bundle source; if it reports true, verification is retried
// once.
func ServerTLSConfig(getCert func() (*tls.Certificate, error), bundles x509bundle.Source, now func() time.Time, refresh func() bool) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return getCert()
		},
		ClientAuth: tls.RequestClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil
			}
			_, err := VerifyX509SVID(cs.PeerCertificates, bundles, now(), x509.ExtKeyUsageClientAuth)
			if err != nil && refresh != nil && refresh() {
				_, err = VerifyX509SVID(cs.PeerCertificates, bundles, now(), x509.ExtKeyUsageClientAuth)
			}
			return err
		},
	}
}

// PeerID returns the SPIFFE ID of a client whose certificate the server
// config above verified, and false for a client without a certificate.
func PeerID(cs *tls.ConnectionState) (spiffeid.ID, bool) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, false
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, false
	}
	return id, true
}

// ClientTLSConfig connects over TLS 1.3 to a server that must present an
// X.509-SVID for serverID chaining to bundles. When clientCert is non-nil
// it is presented for mutual TLS.
func ClientTLSConfig(clientCert func() (*tls.Certificate, error), bundles x509bundle.Source, serverID spiffeid.ID) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Chain and name checks are SPIFFE's, done in VerifyConnection
		// below; the WebPKI hostname check does not apply to SVIDs.
		InsecureSkipVerify: true, //nolint:gosec // replaced by VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := VerifyX509SVID(cs.PeerCertificates, bundles, time.Now(), x509.ExtKeyUsageServerAuth)
			if err != nil {
				return fmt.Errorf("server certificate: %w", err)
			}
			if id != serverID {
				return fmt.Errorf("server presented SPIFFE ID %q, want %q", id, serverID)
			}
			return nil
		},
	}
	if clientCert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return clientCert()
		}
	}
	return cfg
}

// TLSCertificate turns a DER chain and its key into a tls.Certificate.
func TLSCertificate(chain [][]byte, key any) (*tls.Certificate, error) {
	if len(chain) == 0 {
		return nil, errors.New("empty certificate chain")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}
