package agent

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/apiclient"
	"github.com/trustmesh/trustmesh/internal/attest"
	"github.com/trustmesh/trustmesh/internal/ca"
	"github.com/trustmesh/trustmesh/internal/ca/keymanager"
	"github.com/trustmesh/trustmesh/internal/identity"
	"github.com/trustmesh/trustmesh/internal/registry"
)

// Files in the agent's data dir.
const (
	agentSVIDFile = "agent_svid.pem"
	agentKeyFile  = "agent_svid.key"
	bundleFile    = "bundle.json"
)

// ErrBanned means the server banned this agent: it must stop.
var ErrBanned = errors.New("this agent is banned by the server: an admin must evict it (trustmesh agent evict) before it can attest again")

// ErrMustReattest means the agent was evicted and its attestation method
// cannot be repeated (a join token is single use).
var ErrMustReattest = errors.New("this agent was evicted and its join token is spent: restart it with a new token (trustmesh token generate)")

// ErrNoAttestationMethod: nothing saved and nothing to attest with.
var ErrNoAttestationMethod = errors.New("no saved agent SVID and no attestation method: give --join-token, or x509pop cert_file and key_file")

// node is the agent's own identity towards the server: it attests, keeps
// its SVID (persisted 0600 so a restart needs no new token), renews it at
// half-life, and holds the trust bundle used to verify the server.
type node struct {
	set    Settings
	log    *slog.Logger
	td     spiffeid.TrustDomain
	client *apiclient.Client

	mu       sync.Mutex // serializes attest/renew
	cert     atomic.Pointer[tls.Certificate]
	renewAt  atomic.Int64 // unix nanos
	bundle   atomic.Pointer[spiffebundle.Bundle]
	attested atomic.Bool
}

func newNode(set Settings, log *slog.Logger) (*node, error) {
	n := &node{set: set, log: log}
	data, err := os.ReadFile(set.TrustBundle)
	if err != nil {
		return nil, fmt.Errorf("read trust bundle: %w", err)
	}
	roots, err := ca.ParseCertificatesPEM(data)
	if err != nil {
		return nil, fmt.Errorf("trust bundle %s: %w", set.TrustBundle, err)
	}
	n.td = set.TrustDomain
	if n.td.IsZero() {
		if n.td, err = trustDomainOf(roots); err != nil {
			return nil, err
		}
	}
	boot := spiffebundle.FromX509Authorities(n.td, roots)
	// A bundle saved by an earlier run is newer than the bootstrap file
	// (the CA may have rotated since): prefer it.
	if saved, err := spiffebundle.Load(n.td, filepath.Join(set.DataDir, bundleFile)); err == nil {
		boot = saved
	}
	n.bundle.Store(boot)
	n.client = apiclient.NewTLS(set.Server, identity.ClientTLSConfig(n.clientCert, n, registry.ServerID(n.td)),
		apiclient.WithTimeouts(set.ServerTimeouts))
	return n, nil
}

// trustDomainOf reads the trust domain from a CA certificate's
// spiffe://<td> URI SAN (Trustmesh and SPIRE CAs carry one).
func trustDomainOf(certs []*x509.Certificate) (spiffeid.TrustDomain, error) {
	for _, c := range certs {
		for _, u := range c.URIs {
			if id, err := spiffeid.FromURI(u); err == nil && id.Path() == "" {
				return id.TrustDomain(), nil
			}
		}
	}
	return spiffeid.TrustDomain{}, errors.New("the trust bundle does not name a trust domain (no spiffe://<td> URI SAN): set trust_domain")
}

// GetX509BundleForTrustDomain implements x509bundle.Source for verifying
// the server.
func (n *node) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return n.bundle.Load().GetX509BundleForTrustDomain(td)
}

func (n *node) clientCert() (*tls.Certificate, error) {
	if c := n.cert.Load(); c != nil {
		return c, nil
	}
	return &tls.Certificate{}, nil // no certificate yet: attestation needs none
}

// ID is the agent's SPIFFE ID (zero before attestation).
func (n *node) ID() spiffeid.ID {
	c := n.cert.Load()
	if c == nil || c.Leaf == nil || len(c.Leaf.URIs) == 0 {
		return spiffeid.ID{}
	}
	id, _ := spiffeid.FromURI(c.Leaf.URIs[0])
	return id
}

// Bundle is the current trust bundle.
func (n *node) Bundle() *spiffebundle.Bundle { return n.bundle.Load() }

// SetBundle adopts a bundle received from the server and saves it.
func (n *node) SetBundle(b *spiffebundle.Bundle) {
	if cur := n.bundle.Load(); cur != nil && cur.Equal(b) {
		return
	}
	n.bundle.Store(b)
	if data, err := b.Marshal(); err == nil {
		if err := keymanager.WriteFileAtomic(filepath.Join(n.set.DataDir, bundleFile), data, 0o600); err != nil {
			n.log.Warn("save trust bundle", "error", err)
		}
	}
}

// Start gives the agent an identity: the saved SVID if it is still valid,
// otherwise a fresh attestation.
func (n *node) Start(ctx context.Context) error {
	if err := os.MkdirAll(n.set.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	if err := n.loadSaved(); err == nil {
		n.log.Info("resuming with saved agent SVID", "spiffe_id", n.ID().String(), "expires", n.cert.Load().Leaf.NotAfter)
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		n.log.Warn("saved agent SVID unusable; attesting again", "reason", err)
	}
	return n.Attest(ctx)
}

func (n *node) loadSaved() error {
	chainPEM, err := os.ReadFile(filepath.Join(n.set.DataDir, agentSVIDFile))
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(filepath.Join(n.set.DataDir, agentKeyFile))
	if err != nil {
		return err
	}
	certs, err := ca.ParseCertificatesPEM(chainPEM)
	if err != nil {
		return err
	}
	key, err := keymanager.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return err
	}
	if !time.Now().Before(certs[0].NotAfter) {
		return errors.New("expired")
	}
	if id, err := spiffeid.FromURI(certs[0].URIs[0]); err != nil || id.TrustDomain() != n.td {
		return errors.New("issued for another trust domain")
	}
	ders := make([][]byte, len(certs))
	for i, c := range certs {
		ders[i] = c.Raw
	}
	n.adopt(ders, key, time.Now())
	n.attested.Store(true)
	return nil
}

func (n *node) adopt(chain [][]byte, key crypto.Signer, received time.Time) {
	cert, err := identity.TLSCertificate(chain, key)
	if err != nil {
		return
	}
	n.cert.Store(cert)
	n.renewAt.Store(halfLife(received, cert.Leaf.NotAfter, 0).UnixNano())
	n.client.Close() // new connections present the new certificate
}

func (n *node) save(chain [][]byte, key crypto.Signer) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := keymanager.WriteFileAtomic(filepath.Join(n.set.DataDir, agentKeyFile),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("save agent key: %w", err)
	}
	return keymanager.WriteFileAtomic(filepath.Join(n.set.DataDir, agentSVIDFile), ca.EncodeCertificatesPEM(chain...), 0o600)
}

// Attest runs node attestation with the configured method.
func (n *node) Attest(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return err
	}
	var resp apiv1.AttestResponse
	switch {
	case n.set.X509PoP != nil:
		resp, err = n.attestX509PoP(ctx, csr)
	case n.set.JoinToken != "":
		resp, err = n.client.Attest(ctx, apiv1.AttestRequest{JoinToken: n.set.JoinToken, CSR: csr})
	default:
		return ErrNoAttestationMethod
	}
	if err != nil {
		if apiclient.HasCode(err, apiv1.CodeAgentBanned) {
			return ErrBanned
		}
		return fmt.Errorf("node attestation: %w", err)
	}
	if b, err := spiffebundle.Parse(n.td, resp.Bundle); err == nil {
		n.SetBundle(b)
	}
	if err := n.save(resp.SVID.Chain, key); err != nil {
		return err
	}
	n.adopt(resp.SVID.Chain, key, time.Now())
	n.attested.Store(true)
	n.log.Info("node attested", "spiffe_id", resp.SVID.SPIFFEID, "expires", resp.SVID.ExpiresAt)
	return nil
}

func (n *node) attestX509PoP(ctx context.Context, csr []byte) (apiv1.AttestResponse, error) {
	data, err := os.ReadFile(n.set.X509PoP.CertFile)
	if err != nil {
		return apiv1.AttestResponse{}, err
	}
	certs, err := ca.ParseCertificatesPEM(data)
	if err != nil {
		return apiv1.AttestResponse{}, fmt.Errorf("x509pop certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(n.set.X509PoP.KeyFile)
	if err != nil {
		return apiv1.AttestResponse{}, err
	}
	key, err := keymanager.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return apiv1.AttestResponse{}, fmt.Errorf("x509pop key: %w", err)
	}
	chain := make([][]byte, len(certs))
	for i, c := range certs {
		chain[i] = c.Raw
	}
	cfg := identity.ClientTLSConfig(nil, n, registry.ServerID(n.td))
	return apiclient.AttestX509PoP(ctx, n.set.Server, cfg, csr, func(cs *tls.ConnectionState) (*apiv1.X509PoPProof, error) {
		binding, err := attest.X509PoPBinding(cs)
		if err != nil {
			return nil, err
		}
		sig, err := attest.SignX509PoP(key, binding)
		return &apiv1.X509PoPProof{Chain: chain, Signature: sig}, err
	}, apiclient.WithTimeouts(n.set.ServerTimeouts))
}

// RenewDue renews the agent SVID if half its life has passed.
func (n *node) RenewDue(ctx context.Context, now time.Time) error {
	if now.UnixNano() < n.renewAt.Load() {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return err
	}
	svid, err := n.client.RenewAgent(ctx, csr)
	if err != nil {
		return err
	}
	if err := n.save(svid.Chain, key); err != nil {
		return err
	}
	n.adopt(svid.Chain, key, time.Now())
	n.log.Info("agent SVID renewed", "expires", svid.ExpiresAt)
	return nil
}

// Recover handles an authorization failure from the server: a banned
// agent stops; an evicted one attests again when its method allows.
func (n *node) Recover(ctx context.Context, err error) error {
	switch {
	case apiclient.HasCode(err, apiv1.CodeAgentBanned):
		return ErrBanned
	case apiclient.HasCode(err, apiv1.CodeAgentNotAttested):
		if n.set.X509PoP == nil {
			return ErrMustReattest
		}
		n.log.Warn("agent was evicted: attesting again with x509pop")
		return n.Attest(ctx)
	}
	return nil
}

func newKeyAndCSR() (crypto.Signer, []byte, error) {
	key, err := keymanager.ECP256.Generate()
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

// halfLife is when a credential received at received and expiring at
// notAfter should be renewed: half its remaining life, earlier by up to
// jitter (a fraction of that life), so many SVIDs issued together do not
// all come back at once.
func halfLife(received, notAfter time.Time, jitter float64) time.Time {
	life := notAfter.Sub(received)
	return received.Add(time.Duration(float64(life) * (0.5 - jitter)))
}

// refused reports whether the server refused the attestation itself (as
// opposed to being unreachable): retrying would not help.
func refused(err error) bool {
	var ae *apiclient.Error
	return errors.As(err, &ae) && ae.Status/100 == 4
}
