// Package attest holds Trustmesh's attestors: node attestation (proving
// which machine an agent runs on) and workload attestation (learning which
// process is calling the Workload API).
package attest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"time"
)

// X509PoP node attestation: the agent holds a key whose certificate chains
// to a CA the server trusts, and proves possession by signing a value bound
// to the very TLS connection it attests over: the TLS exporter (RFC 5705,
// as the tls-exporter channel binding of RFC 9266) under the label below.
// Both ends derive it independently, so the proof is fresh, cannot be
// replayed on another connection, and needs no server-side challenge state
// (which matters when several server replicas answer).
const (
	X509PoPType          = "x509pop"
	x509PoPExporterLabel = "EXPORTER-trustmesh-x509pop-v1"
	x509PoPBindingLen    = 32
	maxX509PoPChain      = 8
)

// X509PoPBinding returns the connection-bound value the agent signs.
func X509PoPBinding(cs *tls.ConnectionState) ([]byte, error) {
	if cs == nil {
		return nil, errors.New("x509pop needs a TLS connection")
	}
	if cs.Version != tls.VersionTLS13 {
		return nil, errors.New("x509pop needs TLS 1.3")
	}
	return cs.ExportKeyingMaterial(x509PoPExporterLabel, nil, x509PoPBindingLen)
}

// SignX509PoP signs binding with the agent's x509pop key.
func SignX509PoP(key crypto.Signer, binding []byte) ([]byte, error) {
	switch key.Public().(type) {
	case *ecdsa.PublicKey:
		sum := sha256.Sum256(binding)
		return key.Sign(rand.Reader, sum[:], crypto.SHA256)
	case *rsa.PublicKey:
		sum := sha256.Sum256(binding)
		return key.Sign(rand.Reader, sum[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	case ed25519.PublicKey:
		return key.Sign(rand.Reader, binding, crypto.Hash(0))
	}
	return nil, fmt.Errorf("x509pop: unsupported key type %T", key.Public())
}

func popAlgorithm(pub crypto.PublicKey) (x509.SignatureAlgorithm, error) {
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return x509.ECDSAWithSHA256, nil
	case *rsa.PublicKey:
		return x509.SHA256WithRSAPSS, nil
	case ed25519.PublicKey:
		return x509.PureEd25519, nil
	}
	return 0, fmt.Errorf("unsupported key type %T", pub)
}

// X509PoPResult is what a successful x509pop attestation establishes.
type X509PoPResult struct {
	// Fingerprint is the SHA-256 of the leaf certificate, hex: the agent's
	// stable name (its SPIFFE ID ends in /x509pop/<fingerprint>).
	Fingerprint string
	// Selectors describe the certificate, for node aliases:
	// x509pop:subject:cn:NAME, x509pop:subject:o:ORG, x509pop:subject:ou:UNIT,
	// x509pop:serialnumber:HEX, x509pop:san:dns:NAME, x509pop:san:uri:URI,
	// x509pop:san:email:ADDR, x509pop:san:ip:ADDR and
	// x509pop:ca:fingerprint:HEX for every certificate above the leaf.
	Selectors []string
	NotAfter  time.Time
}

// VerifyX509PoP checks an x509pop attestation: the chain (leaf first) must
// verify to roots at time now, the leaf must not be a CA, and signature
// must be the leaf key's signature over binding.
func VerifyX509PoP(chainDER [][]byte, signature, binding []byte, roots *x509.CertPool, now time.Time) (X509PoPResult, error) {
	if roots == nil {
		return X509PoPResult{}, errors.New("x509pop attestation is not enabled on this server")
	}
	if len(chainDER) == 0 || len(chainDER) > maxX509PoPChain {
		return X509PoPResult{}, fmt.Errorf("x509pop: want 1 to %d certificates, got %d", maxX509PoPChain, len(chainDER))
	}
	chain := make([]*x509.Certificate, len(chainDER))
	for i, d := range chainDER {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return X509PoPResult{}, fmt.Errorf("x509pop: certificate %d: %w", i, err)
		}
		chain[i] = c
	}
	leaf := chain[0]
	if leaf.IsCA {
		return X509PoPResult{}, errors.New("x509pop: the leaf certificate is a CA")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	verified, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return X509PoPResult{}, fmt.Errorf("x509pop: certificate does not chain to a trusted CA: %w", err)
	}
	algo, err := popAlgorithm(leaf.PublicKey)
	if err != nil {
		return X509PoPResult{}, fmt.Errorf("x509pop: %w", err)
	}
	if err := leaf.CheckSignature(algo, binding, signature); err != nil {
		return X509PoPResult{}, fmt.Errorf("x509pop: proof of possession does not verify: %w", err)
	}
	fp := sha256.Sum256(leaf.Raw)
	res := X509PoPResult{Fingerprint: hex.EncodeToString(fp[:]), NotAfter: leaf.NotAfter}
	add := func(kind, v string) {
		if v != "" {
			res.Selectors = append(res.Selectors, X509PoPType+":"+kind+":"+v)
		}
	}
	add("subject:cn", leaf.Subject.CommonName)
	for _, o := range leaf.Subject.Organization {
		add("subject:o", o)
	}
	for _, ou := range leaf.Subject.OrganizationalUnit {
		add("subject:ou", ou)
	}
	add("serialnumber", leaf.SerialNumber.Text(16))
	for _, d := range leaf.DNSNames {
		add("san:dns", d)
	}
	for _, u := range leaf.URIs {
		add("san:uri", u.String())
	}
	for _, e := range leaf.EmailAddresses {
		add("san:email", e)
	}
	for _, ip := range leaf.IPAddresses {
		add("san:ip", ip.String())
	}
	for _, c := range verified[0][1:] {
		sum := sha256.Sum256(c.Raw)
		add("ca:fingerprint", hex.EncodeToString(sum[:]))
	}
	sort.Strings(res.Selectors)
	return res, nil
}
