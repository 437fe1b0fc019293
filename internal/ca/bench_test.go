package ca

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustmesh/trustmesh/internal/audit"
	"github.com/trustmesh/trustmesh/internal/ca/keymanager"
)

// The two benchmarks below are meant to be read together (bench/ca.sh
// prints their ratio): BenchmarkRawCreateCertificate is the floor, one
// x509.CreateCertificate with the same CA key and an equivalent template;
// BenchmarkX509SVIDIssuance is what the server does per SVID: parse the
// CSR and verify its proof-of-possession signature, build and sign the
// leaf, write the audit record to a file.
//
// Each iteration uses a fresh CSR from a pool of pre-generated keys, so no
// result is cached between iterations.

const csrPool = 256

func benchCSRs(b *testing.B) [][]byte {
	b.Helper()
	csrs := make([][]byte, csrPool)
	for i := range csrs {
		csrs[i] = newCSR(b, newKey(b))
	}
	return csrs
}

func benchFixture(b *testing.B, kt keymanager.KeyType) *fixture {
	return newFixture(b, func(c *ManagerConfig) { c.X509KeyType = kt })
}

func BenchmarkX509SVIDIssuance(b *testing.B) {
	for _, kt := range []keymanager.KeyType{keymanager.ECP256, keymanager.RSA2048} {
		b.Run("ca="+kt.String(), func(b *testing.B) {
			f := benchFixture(b, kt)
			csrs := benchCSRs(b)
			auditFile, err := os.OpenFile(filepath.Join(b.TempDir(), "audit.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
			if err != nil {
				b.Fatal(err)
			}
			defer auditFile.Close()
			al := audit.New(auditFile)
			id := spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/api")
			ctx := context.Background()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				pub, err := ParseCSR(csrs[i%csrPool])
				if err != nil {
					b.Fatal(err)
				}
				issued, err := f.ca.SignX509SVID(X509SVIDParams{SPIFFEID: id, PublicKey: pub})
				if err != nil {
					b.Fatal(err)
				}
				al.Record(ctx, audit.Event{Actor: "spiffe://example.org/trustmesh/agent/join_token/0011223344556677",
					Operation: "x509svid.issue", Target: id.String(), Outcome: audit.Success})
				_ = issued
				i++
			}
		})
	}
}

func BenchmarkRawCreateCertificate(b *testing.B) {
	for _, kt := range []keymanager.KeyType{keymanager.ECP256, keymanager.RSA2048} {
		b.Run("ca="+kt.String(), func(b *testing.B) {
			f := benchFixture(b, kt)
			a := f.ca.X509Authority()
			keys := make([]any, csrPool)
			for i := range keys {
				keys[i] = newKey(b).Public()
			}
			u, _ := url.Parse("spiffe://example.org/ns/default/sa/api")
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				serial, _ := NewSerial()
				now := time.Now()
				tmpl := &x509.Certificate{
					SerialNumber: serial, Subject: pkix.Name{Organization: []string{"Trustmesh"}},
					URIs: []*url.URL{u}, NotBefore: now, NotAfter: now.Add(time.Hour),
					KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
					ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
					BasicConstraintsValid: true,
				}
				if _, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, keys[i%csrPool], a.Signer); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// BenchmarkCSRProofOfPossession is the one step issuance adds on top of
// raw signing that is itself a public-key operation: verifying the CSR's
// self-signature (x509.CertificateRequest.CheckSignature, inside ParseCSR).
// bench/ca.sh subtracts it to show what the rest of the pipeline costs.
func BenchmarkCSRProofOfPossession(b *testing.B) {
	csrs := benchCSRs(b)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := ParseCSR(csrs[i%csrPool]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
