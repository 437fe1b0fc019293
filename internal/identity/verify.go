// Package identity verifies SPIFFE X.509-SVIDs and builds the TLS
// configurations Trustmesh components use to authenticate each other:
// TLS 1.3 only, peers proven by an SVID chaining to the trust bundle.
package identity

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// VerifyX509SVID checks certs (leaf first) as an X.509-SVID at time now:
// go-spiffe's checks (exactly one URI SAN holding a valid SPIFFE ID, leaf
// not a CA and without keyCertSign or cRLSign, chain to the bundle of the
// ID's trust domain) plus the X509-SVID rules go-spiffe leaves to the
// caller: the leaf has digitalSignature in a key usage extension marked
// critical, its ID has a path, and, when the certificate restricts extended
// key usage, the usage needed here (usage) is among them.
func VerifyX509SVID(certs []*x509.Certificate, bundles x509bundle.Source, now time.Time, usage x509.ExtKeyUsage) (spiffeid.ID, error) {
	if len(certs) == 0 {
		return spiffeid.ID{}, errors.New("no certificate presented")
	}
	id, _, err := x509svid.Verify(certs, bundles, x509svid.WithTime(now))
	if err != nil {
		return spiffeid.ID{}, err
	}
	leaf := certs[0]
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return spiffeid.ID{}, errors.New("x509svid: leaf certificate lacks the digitalSignature key usage")
	}
	if !keyUsageCritical(leaf) {
		return spiffeid.ID{}, errors.New("x509svid: leaf certificate's key usage extension is not marked critical")
	}
	if id.Path() == "" {
		return spiffeid.ID{}, fmt.Errorf("x509svid: leaf SPIFFE ID %q has no path", id)
	}
	if len(leaf.ExtKeyUsage) > 0 && !slices.Contains(leaf.ExtKeyUsage, usage) && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return spiffeid.ID{}, fmt.Errorf("x509svid: leaf certificate's extended key usage does not allow %s", usageName(usage))
	}
	return id, nil
}

// oidKeyUsage is the key usage extension (RFC 5280, 4.2.1.3).
var oidKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 15}

func keyUsageCritical(c *x509.Certificate) bool {
	for _, ext := range c.Extensions {
		if ext.Id.Equal(oidKeyUsage) {
			return ext.Critical
		}
	}
	return false
}

func usageName(u x509.ExtKeyUsage) string {
	switch u {
	case x509.ExtKeyUsageClientAuth:
		return "client authentication"
	case x509.ExtKeyUsageServerAuth:
		return "server authentication"
	}
	return fmt.Sprintf("usage %d", u)
}
