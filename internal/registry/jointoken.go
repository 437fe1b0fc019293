package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/trustmesh/trustmesh/internal/store"
)

// Join token format: "<id>.<secret>". The id (16 hex digits) is public: it
// names the agent (spiffe://<td>/trustmesh/agent/join_token/<id>) and the
// audit trail. The secret (32 random bytes, base64url) is shown once and
// only its SHA-256 is stored. 256 bits of entropy need no slow hash.
const (
	tokenIDBytes     = 8
	tokenSecretBytes = 32
	MinJoinTokenTTL  = time.Second
	MaxJoinTokenTTL  = 30 * 24 * time.Hour
)

// ErrInvalidJoinToken is returned for every redemption failure, whatever
// the reason, so a caller cannot probe which tokens exist. The server logs
// the detailed reason.
var ErrInvalidJoinToken = errors.New("invalid, expired or already used join token")

// NewJoinToken mints a token valid until now+ttl. It returns the string to
// hand to the operator and the record to store.
func NewJoinToken(now time.Time, ttl time.Duration) (string, store.JoinToken, error) {
	if ttl < MinJoinTokenTTL || ttl > MaxJoinTokenTTL {
		return "", store.JoinToken{}, fmt.Errorf("join token TTL %s must be between %s and %s", ttl, MinJoinTokenTTL, MaxJoinTokenTTL)
	}
	idb := make([]byte, tokenIDBytes)
	secret := make([]byte, tokenSecretBytes)
	if _, err := rand.Read(idb); err != nil {
		return "", store.JoinToken{}, err
	}
	if _, err := rand.Read(secret); err != nil {
		return "", store.JoinToken{}, err
	}
	id := hex.EncodeToString(idb)
	enc := base64.RawURLEncoding.EncodeToString(secret)
	sum := sha256.Sum256([]byte(enc))
	return id + "." + enc, store.JoinToken{
		ID:         id,
		SecretHash: sum[:],
		ExpiresAt:  now.Add(ttl).UTC(),
		CreatedAt:  now.UTC(),
	}, nil
}

// ParseJoinToken splits a token into its public id and secret, checking the
// shape only.
func ParseJoinToken(token string) (id, secret string, err error) {
	id, secret, ok := strings.Cut(strings.TrimSpace(token), ".")
	if !ok || len(id) != 2*tokenIDBytes || secret == "" {
		return "", "", errors.New("malformed join token: want <id>.<secret> as printed by 'trustmesh token generate'")
	}
	if _, err := hex.DecodeString(id); err != nil {
		return "", "", errors.New("malformed join token: id is not hex")
	}
	raw, err := base64.RawURLEncoding.DecodeString(secret)
	if err != nil || len(raw) != tokenSecretBytes {
		return "", "", errors.New("malformed join token: secret has the wrong encoding or length")
	}
	return id, secret, nil
}

// VerifyJoinToken checks token against the store without consuming it and
// returns its id. The secret is compared in constant time. The caller
// consumes the token (store.AttestAgent with the id) in the same
// transaction that records the agent, after the secret matched, so a wrong
// guess cannot burn someone else's token and single use holds across
// replicas.
func VerifyJoinToken(ctx context.Context, s store.Store, token string, now time.Time) (string, error) {
	id, secret, err := ParseJoinToken(token)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidJoinToken, err)
	}
	rec, err := s.GetJoinToken(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return "", fmt.Errorf("%w: token %s not found (never issued, revoked or already used)", ErrInvalidJoinToken, id)
	}
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(sum[:], rec.SecretHash) != 1 {
		return "", fmt.Errorf("%w: token %s secret mismatch", ErrInvalidJoinToken, id)
	}
	if !now.Before(rec.ExpiresAt) {
		return "", fmt.Errorf("%w: token %s expired at %s", ErrInvalidJoinToken, id, rec.ExpiresAt.Format(time.RFC3339))
	}
	return id, nil
}
