package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustmesh/trustmesh/internal/ca/keymanager"
)

var oidKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 15}

func parseChain(t *testing.T, chain [][]byte) []*x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	for _, d := range chain {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	return certs
}

// TestX509SVIDConformsToSpec issues SVIDs under CAs of every key type and
// checks each X509-SVID rule, with go-spiffe's parser and verifier as the
// referee.
func TestX509SVIDConformsToSpec(t *testing.T) {
	for _, kt := range []keymanager.KeyType{keymanager.ECP256, keymanager.ECP384, keymanager.RSA2048} {
		t.Run(kt.String(), func(t *testing.T) {
			f := newFixture(t, func(c *ManagerConfig) { c.X509KeyType = kt })
			if !kt.Matches(f.ca.X509Authority().Cert.PublicKey) {
				t.Fatalf("CA key type is not %v", kt)
			}
			key := newKey(t)
			pub, err := ParseCSR(newCSR(t, key))
			if err != nil {
				t.Fatal(err)
			}
			id := spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/api")
			issued, err := f.ca.SignX509SVID(X509SVIDParams{SPIFFEID: id, PublicKey: pub, DNSNames: []string{"api.default.svc", "api"}, TTL: 30 * time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
			svid, err := x509svid.ParseRaw(concat(issued.Chain), keyDER)
			if err != nil {
				t.Fatalf("go-spiffe rejects the SVID: %v", err)
			}
			if svid.ID != id {
				t.Fatalf("SVID ID = %s", svid.ID)
			}
			gotID, chains, err := x509svid.Verify(svid.Certificates, f.bundle(t), x509svid.WithTime(f.clock.Now()))
			if err != nil || gotID != id || len(chains) == 0 {
				t.Fatalf("SVID does not verify against the published bundle: %v", err)
			}
			leaf := svid.Certificates[0]
			if len(leaf.URIs) != 1 {
				t.Fatalf("URI SANs = %v, want exactly one", leaf.URIs)
			}
			if leaf.IsCA || !leaf.BasicConstraintsValid {
				t.Fatal("leaf must carry basicConstraints CA=false")
			}
			if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 || leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
				t.Fatalf("key usage = %b", leaf.KeyUsage)
			}
			critical := false
			for _, ext := range leaf.Extensions {
				if ext.Id.Equal(oidKeyUsage) {
					critical = ext.Critical
				}
			}
			if !critical {
				t.Fatal("key usage extension is not critical")
			}
			if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
				t.Fatalf("EKU = %v", leaf.ExtKeyUsage)
			}
			if got := leaf.NotAfter.Sub(f.clock.Now()); got != 30*time.Minute {
				t.Fatalf("TTL = %s, want 30m", got)
			}
			if leaf.Subject.CommonName != "api.default.svc" || !slices.Equal(leaf.DNSNames, []string{"api.default.svc", "api"}) {
				t.Fatalf("DNS: CN %q SANs %v", leaf.Subject.CommonName, leaf.DNSNames)
			}
			if issued.Serial.Cmp(leaf.SerialNumber) != 0 || !issued.NotAfter.Equal(leaf.NotAfter) {
				t.Fatal("issued metadata does not match the certificate")
			}
			// The signing CA: a CA with keyCertSign and the trust domain ID.
			caCert := f.ca.X509Authority().Cert
			if !caCert.IsCA || caCert.KeyUsage&x509.KeyUsageCertSign == 0 || len(caCert.URIs) != 1 || caCert.URIs[0].String() != "spiffe://example.org" {
				t.Fatalf("CA certificate: IsCA %v usage %b URIs %v", caCert.IsCA, caCert.KeyUsage, caCert.URIs)
			}
			if got := caCert.NotAfter.Sub(f.clock.Now()); got != DefaultCATTL {
				t.Fatalf("CA TTL = %s, want %s", got, DefaultCATTL)
			}
		})
	}
}

func concat(ders [][]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, d...)
	}
	return out
}

func TestX509SVIDDefaultsAndSerials(t *testing.T) {
	f := newFixture(t, nil)
	id := spiffeid.RequireFromString("spiffe://example.org/w")
	seen := map[string]bool{}
	for i := 0; i < 20; i++ {
		issued, err := f.ca.SignX509SVID(X509SVIDParams{SPIFFEID: id, PublicKey: newKey(t).Public()})
		if err != nil {
			t.Fatal(err)
		}
		if got := issued.NotAfter.Sub(f.clock.Now()); got != DefaultX509SVIDTTL {
			t.Fatalf("default TTL = %s, want 1h", got)
		}
		s := issued.Serial.Text(16)
		if seen[s] || issued.Serial.Sign() <= 0 {
			t.Fatalf("serial %s repeated or not positive", s)
		}
		seen[s] = true
	}
}

func TestSVIDNeverOutlivesCA(t *testing.T) {
	f := newFixture(t, nil)
	caNotAfter := f.ca.X509Authority().Cert.NotAfter
	// 10 minutes before the CA expires (rotation not run), ask for an hour.
	f.clock.Set(caNotAfter.Add(-10 * time.Minute))
	issued, err := f.ca.SignX509SVID(X509SVIDParams{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/w"), PublicKey: newKey(t).Public(), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !issued.NotAfter.Equal(caNotAfter) {
		t.Fatalf("SVID expires %s, after the CA's %s", issued.NotAfter, caNotAfter)
	}
	_, exp, err := f.ca.SignJWTSVID(spiffeid.RequireFromString("spiffe://example.org/w"), []string{"x"}, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if exp.After(f.ca.JWTKey().NotAfter) {
		t.Fatalf("JWT-SVID expires %s, after its key's %s", exp, f.ca.JWTKey().NotAfter)
	}
	// Once the CA has expired, nothing more is signed with it.
	f.clock.Set(caNotAfter.Add(time.Second))
	if _, err := f.ca.SignX509SVID(X509SVIDParams{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/w"), PublicKey: newKey(t).Public()}); err == nil {
		t.Fatal("signed with an expired CA")
	}
}

// TestSignRefusesInvalidIdentities: the CA itself enforces the SPIFFE ID
// rules for SVIDs, whatever its caller checked.
func TestSignRefusesInvalidIdentities(t *testing.T) {
	f := newFixture(t, nil)
	pub := newKey(t).Public()
	for name, id := range map[string]spiffeid.ID{
		"zero":           {},
		"trust domain":   td.ID(),
		"foreign domain": spiffeid.RequireFromString("spiffe://other.org/w"),
	} {
		if _, err := f.ca.SignX509SVID(X509SVIDParams{SPIFFEID: id, PublicKey: pub}); err == nil {
			t.Errorf("X.509-SVID issued for %s ID %q", name, id)
		}
		if _, _, err := f.ca.SignJWTSVID(id, []string{"aud"}, 0); err == nil {
			t.Errorf("JWT-SVID issued for %s ID %q", name, id)
		}
	}
	if _, err := f.ca.SignX509SVID(X509SVIDParams{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/w")}); err == nil {
		t.Error("issued without a public key")
	}
	empty := New(Config{TrustDomain: td})
	if _, err := empty.SignX509SVID(X509SVIDParams{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/w"), PublicKey: pub}); err != ErrNoActiveCA {
		t.Errorf("no CA: err = %v", err)
	}
}

func TestJWTSVID(t *testing.T) {
	f := newFixture(t, nil)
	id := spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/api")
	tok, exp, err := f.ca.SignJWTSVID(id, []string{"spiffe://example.org/db", "other"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Validated as the JWT-SVID spec says, by go-spiffe. (It checks expiry
	// against the real clock; our fake clock starts at real time.)
	svid, err := jwtsvid.ParseAndValidate(tok, f.bundle(t), []string{"spiffe://example.org/db"})
	if err != nil {
		t.Fatalf("go-spiffe rejects the JWT-SVID: %v", err)
	}
	if svid.ID != id || !svid.Expiry.Equal(exp) {
		t.Fatalf("svid = %+v", svid)
	}
	if got := exp.Sub(f.clock.Now()); got != DefaultJWTSVIDTTL {
		t.Fatalf("default JWT TTL = %s", got)
	}
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("not ES256: %v", err)
	}
	h := parsed.Headers[0]
	if h.KeyID != f.ca.JWTKey().KeyID || h.ExtraHeaders[jose.HeaderType] != "JWT" {
		t.Fatalf("header = %+v", h)
	}
	var claims map[string]any
	_ = parsed.UnsafeClaimsWithoutVerification(&claims)
	for _, k := range []string{"sub", "aud", "exp", "iat"} {
		if _, ok := claims[k]; !ok {
			t.Errorf("claim %s missing", k)
		}
	}
	if _, err := jwtsvid.ParseAndValidate(tok, f.bundle(t), []string{"someone-else"}); err == nil {
		t.Fatal("accepted for the wrong audience")
	}
	// A bundle without our key rejects it.
	other := newFixture(t, nil)
	if _, err := jwtsvid.ParseAndValidate(tok, other.bundle(t), []string{"other"}); err == nil {
		t.Fatal("validated against a foreign bundle")
	}
	if _, _, err := f.ca.SignJWTSVID(id, nil, 0); err == nil {
		t.Fatal("issued without audience")
	}
	if _, _, err := f.ca.SignJWTSVID(id, []string{""}, 0); err == nil {
		t.Fatal("issued with an empty audience")
	}
}

func TestJWTKeyTypes(t *testing.T) {
	for kt, alg := range map[keymanager.KeyType]jose.SignatureAlgorithm{keymanager.ECP384: jose.ES384, keymanager.RSA2048: jose.RS256} {
		f := newFixture(t, func(c *ManagerConfig) { c.JWTKeyType = kt })
		tok, _, err := f.ca.SignJWTSVID(spiffeid.RequireFromString("spiffe://example.org/w"), []string{"a"}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{alg}); err != nil {
			t.Errorf("%v key: token not %s: %v", kt, alg, err)
		}
		if _, err := jwtsvid.ParseAndValidate(tok, f.bundle(t), []string{"a"}); err != nil {
			t.Errorf("%v key: %v", kt, err)
		}
	}
}

func TestParseCSR(t *testing.T) {
	key := newKey(t)
	good := newCSR(t, key)
	if _, err := ParseCSR(good); err != nil {
		t.Fatal(err)
	}
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-5] ^= 0xff // inside the signature
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	for name, tc := range map[string]struct {
		der  []byte
		want string
	}{
		"empty":     {nil, "empty"},
		"garbage":   {[]byte("not a csr"), "invalid CSR"},
		"tampered":  {tampered, "signature"},
		"huge":      {make([]byte, maxCSRSize+1), "larger than"},
		"rsa-1024":  {newCSR(t, rsa1024), "1024 bits"},
		"ecdsa-224": {newCSR(t, p224), "curve"},
	} {
		_, err := ParseCSR(tc.der)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want mention of %q", name, err, tc.want)
		}
	}
}

// FuzzParseCSR: arbitrary bytes never panic, and anything accepted carries
// a verified signature over an acceptable key.
func FuzzParseCSR(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	f.Add(der)
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		pub, err := ParseCSR(data)
		if err != nil {
			return
		}
		if CheckPublicKey(pub) != nil {
			t.Fatal("accepted an unacceptable key")
		}
		csr, err := x509.ParseCertificateRequest(data)
		if err != nil || csr.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not verify")
		}
	})
}
