package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
)

// maxCSRSize bounds what we hand to the ASN.1 parser.
const maxCSRSize = 16 << 10

// ParseCSR parses a DER certificate signing request, verifies its
// self-signature (proof that the requester holds the private key) and
// checks the key is one we are willing to certify. Only the public key is
// used: the SPIFFE ID, DNS names and lifetime come from the registration
// entry, never from the request, so a CSR cannot ask for more than the
// entry grants.
func ParseCSR(der []byte) (crypto.PublicKey, error) {
	if len(der) == 0 {
		return nil, errors.New("invalid CSR: empty")
	}
	if len(der) > maxCSRSize {
		return nil, fmt.Errorf("invalid CSR: larger than %d bytes", maxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("invalid CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("invalid CSR: signature does not verify (no proof of key possession): %w", err)
	}
	if err := CheckPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("invalid CSR: %w", err)
	}
	return csr.PublicKey, nil
}

// CheckPublicKey accepts ECDSA P-256/P-384/P-521, RSA 2048–8192 and
// Ed25519 keys.
func CheckPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("unsupported ECDSA curve %s", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 8192 {
			return fmt.Errorf("RSA key of %d bits: want 2048 to 8192", n)
		}
		return nil
	case ed25519.PublicKey:
		return nil
	}
	return fmt.Errorf("unsupported public key type %T", pub)
}
