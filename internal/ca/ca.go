// Package ca is Trustmesh's certificate authority: it signs X.509-SVIDs
// and JWT-SVIDs with the active CA and JWT key, and (manager.go) prepares,
// publishes, activates and retires those keys on SPIRE's schedule.
package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults as in SPIRE.
const (
	DefaultCATTL       = 24 * time.Hour
	DefaultX509SVIDTTL = time.Hour
	DefaultJWTSVIDTTL  = 5 * time.Minute
	// backdate tolerates clock skew between the server and relying parties.
	backdate = 10 * time.Second
)

// ErrNoActiveCA is returned while no usable authority is loaded.
var ErrNoActiveCA = errors.New("no active certificate authority")

// X509Authority is a signing CA certificate with its key.
type X509Authority struct {
	Cert   *x509.Certificate
	Signer crypto.Signer
	// ChainDER is what follows a leaf in an SVID: nothing for a
	// self-signed CA (the root is in the bundle), the intermediate and any
	// upstream intermediates under an upstream CA.
	ChainDER [][]byte
}

// CA signs SVIDs with the currently active authority. The manager swaps the
// authority and JWT key atomically; signing never blocks on rotation.
type CA struct {
	td      spiffeid.TrustDomain
	now     func() time.Time
	x509TTL time.Duration
	jwtTTL  time.Duration
	x509    atomic.Pointer[X509Authority]
	jwt     atomic.Pointer[JWTKey]
}

// Config configures a CA.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	X509SVIDTTL time.Duration // default for entries without a TTL
	JWTSVIDTTL  time.Duration
	Clock       func() time.Time // nil: time.Now
}

// New returns a CA without authorities; the manager provides them.
func New(cfg Config) *CA {
	c := &CA{td: cfg.TrustDomain, now: cfg.Clock, x509TTL: cfg.X509SVIDTTL, jwtTTL: cfg.JWTSVIDTTL}
	if c.now == nil {
		c.now = time.Now
	}
	if c.x509TTL == 0 {
		c.x509TTL = DefaultX509SVIDTTL
	}
	if c.jwtTTL == 0 {
		c.jwtTTL = DefaultJWTSVIDTTL
	}
	return c
}

// TrustDomain returns the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// SetX509Authority makes a the signing authority for new X.509-SVIDs.
func (c *CA) SetX509Authority(a *X509Authority) { c.x509.Store(a) }

// X509Authority returns the active authority, or nil.
func (c *CA) X509Authority() *X509Authority { return c.x509.Load() }

// SetJWTKey makes k the signing key for new JWT-SVIDs.
func (c *CA) SetJWTKey(k *JWTKey) { c.jwt.Store(k) }

// JWTKey returns the active JWT key, or nil.
func (c *CA) JWTKey() *JWTKey { return c.jwt.Load() }

// X509SVIDParams describes an X.509-SVID to issue.
type X509SVIDParams struct {
	SPIFFEID  spiffeid.ID
	PublicKey crypto.PublicKey
	DNSNames  []string
	TTL       time.Duration // 0: the CA default
}

// IssuedX509SVID is a signed SVID: Chain[0] is the leaf, followed by the
// intermediates needed to reach the bundle.
type IssuedX509SVID struct {
	Chain    [][]byte
	Serial   *big.Int
	NotAfter time.Time
}

// SignX509SVID issues an X.509-SVID conforming to the X509-SVID spec:
// exactly one URI SAN (the SPIFFE ID), CA=false, a critical key usage with
// digitalSignature (plus keyEncipherment and keyAgreement, as SPIRE) and
// never keyCertSign or cRLSign, EKU serverAuth and clientAuth. The
// certificate never outlives the CA that signs it, which is what lets a
// retired CA leave the bundle once it expires.
func (c *CA) SignX509SVID(p X509SVIDParams) (IssuedX509SVID, error) {
	a := c.x509.Load()
	if a == nil {
		return IssuedX509SVID{}, ErrNoActiveCA
	}
	if err := c.checkSVIDID(p.SPIFFEID); err != nil {
		return IssuedX509SVID{}, err
	}
	if p.PublicKey == nil {
		return IssuedX509SVID{}, errors.New("missing public key")
	}
	now := c.now()
	notBefore, notAfter, err := c.validity(now, p.TTL, c.x509TTL, a.Cert.NotBefore, a.Cert.NotAfter)
	if err != nil {
		return IssuedX509SVID{}, err
	}
	serial, err := NewSerial()
	if err != nil {
		return IssuedX509SVID{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Trustmesh"}},
		URIs:                  []*url.URL{p.SPIFFEID.URL()},
		DNSNames:              p.DNSNames,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	if len(p.DNSNames) > 0 {
		tmpl.Subject.CommonName = p.DNSNames[0]
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, p.PublicKey, a.Signer)
	if err != nil {
		return IssuedX509SVID{}, fmt.Errorf("sign X.509-SVID: %w", err)
	}
	chain := make([][]byte, 0, 1+len(a.ChainDER))
	chain = append(chain, der)
	chain = append(chain, a.ChainDER...)
	return IssuedX509SVID{Chain: chain, Serial: serial, NotAfter: notAfter}, nil
}

// checkSVIDID enforces that an SVID names a workload in this trust domain:
// the spec forbids a leaf with a root (path-less) SPIFFE ID.
func (c *CA) checkSVIDID(id spiffeid.ID) error {
	switch {
	case id.IsZero():
		return errors.New("missing SPIFFE ID")
	case id.TrustDomain() != c.td:
		return fmt.Errorf("SPIFFE ID %q is not in trust domain %q", id, c.td.Name())
	case id.Path() == "":
		return fmt.Errorf("SPIFFE ID %q has no path: an SVID must name a workload, not the trust domain", id)
	}
	return nil
}

// validity computes an SVID's validity window: backdated for skew, ttl (or
// the default) long, cut at the issuer's expiry.
func (c *CA) validity(now time.Time, ttl, def time.Duration, issuerNotBefore, issuerNotAfter time.Time) (time.Time, time.Time, error) {
	if ttl == 0 {
		ttl = def
	}
	if ttl < 0 {
		return time.Time{}, time.Time{}, fmt.Errorf("negative TTL %s", ttl)
	}
	if !now.Before(issuerNotAfter) {
		return time.Time{}, time.Time{}, fmt.Errorf("%w: the active authority expired at %s", ErrNoActiveCA, issuerNotAfter.Format(time.RFC3339))
	}
	notBefore := now.Add(-backdate)
	if notBefore.Before(issuerNotBefore) {
		notBefore = issuerNotBefore
	}
	notAfter := now.Add(ttl)
	if notAfter.After(issuerNotAfter) {
		notAfter = issuerNotAfter
	}
	return notBefore, notAfter, nil
}

// NewSerial returns a random positive 128-bit certificate serial number.
func NewSerial() (*big.Int, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	b[0] &= 0x7f // positive in DER
	b[0] |= 0x40 // never zero, constant length
	return new(big.Int).SetBytes(b[:]), nil
}
