// Package assertion signs the identity the gateway hands to upstreams: a
// short-lived JWT in X-Trustmesh-Jwt-Assertion (iss = the gateway's
// external URL, aud = the route's host), verifiable with the keys the
// gateway publishes at /.well-known/trustmesh/jwks.json, as Pomerium's
// X-Pomerium-Jwt-Assertion.
package assertion

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Claims are what an assertion says about the caller.
type Claims struct {
	Subject string   // iss/sub of the user or token
	User    string   // X-Auth-Request-User
	Email   string   // may be empty
	Groups  []string // may be empty
	IdP     string   // the identity's issuer
}

// Signer signs assertions with one ES256 key.
type Signer struct {
	issuer string
	ttl    time.Duration
	now    func() time.Time
	signer jose.Signer
	jwks   []byte
	kid    string

	mu    sync.Mutex
	cache map[string]cachedAssertion
}

type cachedAssertion struct {
	raw     string
	renewAt time.Time
}

// Options configure a Signer.
type Options struct {
	Issuer string        // the gateway's external URL
	TTL    time.Duration // lifetime of an assertion (default 60 s)
	// KeyFile holds the PEM (PKCS#8) EC P-256 key; created (0600) when
	// absent. Replicas behind one name must share it. Empty: a key in
	// memory, new at every start.
	KeyFile string
	Now     func() time.Time
}

// New loads or creates the key and prepares the signer.
func New(opts Options) (*Signer, error) {
	if opts.TTL <= 0 {
		opts.TTL = 60 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	key, err := loadOrCreate(opts.KeyFile)
	if err != nil {
		return nil, err
	}
	pub := jose.JSONWebKey{Key: &key.PublicKey, Algorithm: string(jose.ES256), Use: "sig"}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, err
	}
	pub.KeyID = base64.RawURLEncoding.EncodeToString(tp)
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}})
	if err != nil {
		return nil, err
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: pub.KeyID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, err
	}
	return &Signer{issuer: opts.Issuer, ttl: opts.TTL, now: opts.Now, signer: sig, jwks: jwks, kid: pub.KeyID, cache: map[string]cachedAssertion{}}, nil
}

// JWKS is the public key set (JSON).
func (s *Signer) JWKS() []byte { return s.jwks }

// KeyID is the signing key's id (its RFC 7638 thumbprint).
func (s *Signer) KeyID() string { return s.kid }

// Sign returns an assertion of c for audience. Assertions are reused while
// more than half their lifetime remains, so a busy user costs one
// signature per half-TTL, not one per request.
func (s *Signer) Sign(c Claims, audience string) (string, error) {
	now := s.now()
	ck := cacheKey(c, audience)
	s.mu.Lock()
	if a, ok := s.cache[ck]; ok && now.Before(a.renewAt) {
		s.mu.Unlock()
		return a.raw, nil
	}
	s.mu.Unlock()
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", err
	}
	claims := struct {
		jwt.Claims
		Email  string   `json:"email,omitempty"`
		Groups []string `json:"groups"`
		User   string   `json:"user,omitempty"`
		IdP    string   `json:"idp,omitempty"`
	}{
		Claims: jwt.Claims{
			Issuer: s.issuer, Subject: c.Subject, Audience: jwt.Audience{audience},
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now.Add(-5 * time.Second)),
			Expiry: jwt.NewNumericDate(now.Add(s.ttl)), ID: base64.RawURLEncoding.EncodeToString(jti),
		},
		Email: c.Email, Groups: c.Groups, User: c.User, IdP: c.IdP,
	}
	if claims.Groups == nil {
		claims.Groups = []string{}
	}
	raw, err := jwt.Signed(s.signer).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("sign assertion: %w", err)
	}
	s.mu.Lock()
	if len(s.cache) > 8192 {
		for k, a := range s.cache {
			if !now.Before(a.renewAt) {
				delete(s.cache, k)
			}
		}
		if len(s.cache) > 8192 {
			clear(s.cache)
		}
	}
	s.cache[ck] = cachedAssertion{raw: raw, renewAt: now.Add(s.ttl / 2)}
	s.mu.Unlock()
	return raw, nil
}

// cacheKey is a digest of the claims and audience, each length-prefixed
// so that no two different sets encode alike. (It is on every proxied
// request's path: appended into one buffer, no fmt.)
func cacheKey(c Claims, aud string) string {
	var stack [512]byte
	b := stack[:0]
	add := func(s string) {
		b = strconv.AppendInt(b, int64(len(s)), 10)
		b = append(b, ':')
		b = append(b, s...)
		b = append(b, ';')
	}
	add(c.Subject)
	add(c.User)
	add(c.Email)
	add(c.IdP)
	add(aud)
	for _, g := range c.Groups {
		add(g)
	}
	sum := sha256.Sum256(b)
	return string(sum[:])
}

func loadOrCreate(path string) (*ecdsa.PrivateKey, error) {
	if path == "" {
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	info, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("assertion key: %w", err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("assertion key: %w", err)
		}
		if _, err := f.Write(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
			f.Close()
			return nil, fmt.Errorf("assertion key: %w", err)
		}
		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("assertion key: %w", err)
		}
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("assertion key: %w", err)
	}
	return loadKey(path, info)
}

// CheckKeyFile reports what New would refuse in the key file at path,
// without creating it: a key file that exists must be private (no group
// or other permission bits) and hold an EC P-256 key. An absent file is
// fine; New creates it.
func CheckKeyFile(path string) error {
	if path == "" {
		return nil
	}
	info, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("assertion key: %w", err)
	}
	_, err = loadKey(path, info)
	return err
}

func loadKey(path string, info fs.FileInfo) (*ecdsa.PrivateKey, error) {
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("assertion key %s: mode %04o lets others read it: chmod 600 it", path, info.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("assertion key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("assertion key %s: no PEM block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		if ek, err2 := x509.ParseECPrivateKey(block.Bytes); err2 == nil {
			k = ek
		} else {
			return nil, fmt.Errorf("assertion key %s: %w", path, err)
		}
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("assertion key %s: want an EC P-256 key (ES256)", path)
	}
	return ec, nil
}
