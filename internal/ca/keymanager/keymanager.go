// Package keymanager holds the CA's private keys. KeyManager is the plugin
// point (disk and memory implementations here; a KMS or HSM one can be
// added) and keymanagertest is the contract suite every implementation
// runs, as SPIRE's keymanagertest does.
package keymanager

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"strings"
)

// KeyType is the algorithm and size of a CA or JWT signing key.
type KeyType int

const (
	ECP256 KeyType = iota + 1
	ECP384
	RSA2048
)

// ParseKeyType accepts SPIRE's spelling (ec-p256, ec-p384, rsa-2048) and
// the common alternatives (P-256, p256, RSA2048, …).
func ParseKeyType(s string) (KeyType, error) {
	n := strings.NewReplacer("-", "", "_", "").Replace(strings.ToLower(strings.TrimSpace(s)))
	switch n {
	case "ecp256", "p256", "ec256", "es256":
		return ECP256, nil
	case "ecp384", "p384", "ec384", "es384":
		return ECP384, nil
	case "rsa2048", "rs256":
		return RSA2048, nil
	}
	return 0, fmt.Errorf("unknown key type %q: want ec-p256, ec-p384 or rsa-2048", s)
}

func (k KeyType) String() string {
	switch k {
	case ECP256:
		return "ec-p256"
	case ECP384:
		return "ec-p384"
	case RSA2048:
		return "rsa-2048"
	}
	return fmt.Sprintf("KeyType(%d)", int(k))
}

// Generate creates a private key of type k from crypto/rand.
func (k KeyType) Generate() (crypto.Signer, error) {
	switch k {
	case ECP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return nil, fmt.Errorf("unsupported key type %v", k)
}

// Matches reports whether pub is a key of type k.
func (k KeyType) Matches(pub crypto.PublicKey) bool {
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		return (k == ECP256 && p.Curve == elliptic.P256()) || (k == ECP384 && p.Curve == elliptic.P384())
	case *rsa.PublicKey:
		return k == RSA2048 && p.N.BitLen() == 2048
	}
	return false
}

// ErrKeyNotFound is returned by GetKey for an unknown id.
var ErrKeyNotFound = errors.New("key not found")

// KeyManager creates, stores and hands out signing keys by id.
// Implementations must be safe for concurrent use.
type KeyManager interface {
	// GenerateKey creates a new key under id, replacing any key that had
	// the id before, and returns it once it is stored durably.
	GenerateKey(ctx context.Context, id string, kt KeyType) (crypto.Signer, error)
	// GetKey returns the key stored under id, or ErrKeyNotFound.
	GetKey(ctx context.Context, id string) (crypto.Signer, error)
}
