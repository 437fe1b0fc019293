package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// JWTKey is a JWT-SVID signing key, published in the bundle under KeyID.
type JWTKey struct {
	Signer   crypto.Signer
	KeyID    string
	NotAfter time.Time
	signer   jose.Signer
}

// NewJWTKey prepares a JWT key for signing with the algorithm that fits its
// type (ES256, ES384 or RS256).
func NewJWTKey(signer crypto.Signer, keyID string, notAfter time.Time) (*JWTKey, error) {
	alg, err := jwtAlgorithm(signer.Public())
	if err != nil {
		return nil, err
	}
	js, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: keyIDSigner{cryptosigner.Opaque(signer), keyID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("create JWT signer: %w", err)
	}
	return &JWTKey{Signer: signer, KeyID: keyID, NotAfter: notAfter, signer: js}, nil
}

func jwtAlgorithm(pub crypto.PublicKey) (jose.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		}
	case *rsa.PublicKey:
		return jose.RS256, nil
	}
	return "", fmt.Errorf("no JWT-SVID algorithm for key type %T", pub)
}

// keyIDSigner puts the key ID in the JOSE header: JWT-SVID validators
// (go-spiffe among them) find the bundle key by "kid".
type keyIDSigner struct {
	jose.OpaqueSigner
	keyID string
}

func (s keyIDSigner) Public() *jose.JSONWebKey {
	k := s.OpaqueSigner.Public()
	k.KeyID = s.keyID
	return k
}

// SignJWTSVID issues a JWT-SVID for id with the given audiences. Its
// expiry never exceeds the signing key's, so a retired key can leave the
// bundle once it expires.
func (c *CA) SignJWTSVID(id spiffeid.ID, audience []string, ttl time.Duration) (string, time.Time, error) {
	k := c.jwt.Load()
	if k == nil {
		return "", time.Time{}, ErrNoActiveCA
	}
	if err := c.checkSVIDID(id); err != nil {
		return "", time.Time{}, err
	}
	if len(audience) == 0 {
		return "", time.Time{}, errors.New("a JWT-SVID needs at least one audience")
	}
	for _, a := range audience {
		if a == "" {
			return "", time.Time{}, errors.New("empty audience")
		}
	}
	now := c.now()
	_, exp, err := c.validity(now, ttl, c.jwtTTL, time.Time{}, k.NotAfter)
	if err != nil {
		return "", time.Time{}, err
	}
	claims := jwt.Claims{
		Subject:  id.String(),
		Audience: jwt.Audience(audience),
		Expiry:   jwt.NewNumericDate(exp),
		IssuedAt: jwt.NewNumericDate(now),
	}
	tok, err := jwt.Signed(k.signer).Claims(claims).Serialize()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign JWT-SVID: %w", err)
	}
	return tok, exp.Truncate(time.Second), nil
}
