package ca

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/trustmesh/trustmesh/internal/ca/keymanager"
)

// Upstream is an existing CA Trustmesh signs its intermediates under (the
// "disk" UpstreamAuthority of SPIRE). The trust bundle then holds the
// upstream roots, and SVID chains carry the intermediates.
type Upstream struct {
	Cert          *x509.Certificate   // signs our intermediates
	Signer        crypto.Signer       // Cert's key
	Intermediates []*x509.Certificate // between Cert and a root, if any
	Roots         []*x509.Certificate // published in the bundle
}

// LoadUpstream reads an upstream CA: certFile holds its certificate
// (followed by any intermediates up to the root), keyFile its private key,
// and bundleFile the roots to trust. bundleFile may be empty when the
// certificate is itself a self-signed root.
func LoadUpstream(certFile, keyFile, bundleFile string) (*Upstream, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("upstream CA certificate: %w", err)
	}
	certs, err := ParseCertificatesPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("upstream CA certificate %s: %w", certFile, err)
	}
	keyPEM, err := readPrivateFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("upstream CA key: %w", err)
	}
	key, err := keymanager.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("upstream CA key %s: %w", keyFile, err)
	}
	u := &Upstream{Cert: certs[0], Signer: key, Intermediates: certs[1:]}
	if bundleFile != "" {
		rootPEM, err := os.ReadFile(bundleFile)
		if err != nil {
			return nil, fmt.Errorf("upstream bundle: %w", err)
		}
		if u.Roots, err = ParseCertificatesPEM(rootPEM); err != nil {
			return nil, fmt.Errorf("upstream bundle %s: %w", bundleFile, err)
		}
	} else {
		if err := u.Cert.CheckSignatureFrom(u.Cert); err != nil {
			return nil, errors.New("upstream CA certificate is not self-signed: give the roots in bundle_file")
		}
		u.Roots = []*x509.Certificate{u.Cert}
	}
	if err := u.validate(); err != nil {
		return nil, err
	}
	return u, nil
}

// readPrivateFile reads a private key file, refusing (as ssh does) one
// that group or others may read or write: a CA key anyone else can read
// lets them mint identities.
func readPrivateFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s is accessible by group or others (mode %04o): refusing to use it; chmod 600 it", path, perm)
	}
	return io.ReadAll(f)
}

// IsRoot reports whether c is one of the upstream bundle's roots.
func (u *Upstream) IsRoot(c *x509.Certificate) bool {
	for _, r := range u.Roots {
		if r.Equal(c) {
			return true
		}
	}
	return false
}

func (u *Upstream) validate() error {
	if !u.Cert.IsCA || u.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return errors.New("upstream certificate is not a CA with keyCertSign")
	}
	if u.Cert.MaxPathLenZero {
		return errors.New("upstream certificate has pathLenConstraint 0 and cannot sign an intermediate CA")
	}
	pub, ok := u.Signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(u.Cert.PublicKey) {
		return errors.New("upstream key does not match the upstream certificate")
	}
	roots := x509.NewCertPool()
	for _, r := range u.Roots {
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range u.Intermediates {
		inter.AddCert(c)
	}
	if _, err := u.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("upstream certificate does not chain to the upstream bundle: %w", err)
	}
	return nil
}

// ParseCertificatesPEM parses every CERTIFICATE block in data, in order.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

// EncodeCertificatesPEM renders DER certificates as concatenated PEM.
func EncodeCertificatesPEM(ders ...[]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	return out
}
