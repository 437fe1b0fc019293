// Package session stores the gateway's server-side sessions and its
// short-lived single-use tickets (login state, cross-host hand-offs, refresh
// locks). A Store holds opaque records: the gateway encrypts every record
// with a key derived from the cookie that names it, so a copy of the store
// (a Redis dump, the SQLite file) reveals no token and no live cookie.
//
// Implementations: memory (one process), sqlite:///path (one host, several
// processes) and redis://host:port/db (any number of replicas). They all
// pass the contract suite in sessiontest.
package session

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Errors every Store returns.
var (
	ErrNotFound = errors.New("session: not found")
	ErrConflict = errors.New("session: changed concurrently")
	ErrExists   = errors.New("session: already exists")
)

// Record is one stored session.
type Record struct {
	// Key identifies the record: a hash of the cookie value, never the
	// cookie value itself.
	Key string
	// Version increases on every update; Update succeeds only when the
	// stored version equals the one read (compare-and-swap).
	Version int64
	// ExpiresAt is when the store forgets the record (idle timeout and
	// maximum lifetime, whichever comes first).
	ExpiresAt time.Time
	Data      []byte
}

// Store is where sessions live. It is used by the gateway (its consumer);
// every implementation must pass sessiontest.Run.
type Store interface {
	// Create stores a new record at version 1; ErrExists if the key is taken.
	Create(ctx context.Context, r Record) error
	// Get returns the record; ErrNotFound if absent or expired.
	Get(ctx context.Context, key string) (Record, error)
	// Update replaces the record if its stored version is r.Version and
	// stores it as r.Version+1; ErrConflict if it changed meanwhile,
	// ErrNotFound if it is gone.
	Update(ctx context.Context, r Record) (Record, error)
	// Delete removes the record (no error if absent).
	Delete(ctx context.Context, key string) error
	// PutTicket stores value under key for ttl unless key exists
	// (ErrExists): single-use tickets and locks.
	PutTicket(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// TakeTicket returns and removes a ticket atomically; ErrNotFound if
	// absent or expired, so a ticket is taken at most once.
	TakeTicket(ctx context.Context, key string) ([]byte, error)
	Close() error
}

// Purger is implemented by stores that must be told to drop expired records
// (Redis expires them itself).
type Purger interface {
	Purge(ctx context.Context) (int, error)
}

// Options configure Open.
type Options struct {
	// Now is the clock (time.Now when nil). Stores judge expiry with it, so
	// tests can move time.
	Now func() time.Time
}

func (o Options) now() func() time.Time {
	if o.Now == nil {
		return time.Now
	}
	return o.Now
}

// Open returns the store a URL names: "memory", "sqlite:///path/to/file"
// or "redis://host:port/db" (rediss:// for TLS; user and password in the
// URL as go-redis accepts them).
func Open(ctx context.Context, spec string, opts Options) (Store, error) {
	kind, err := CheckURL(spec)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "memory":
		return NewMemory(opts), nil
	case "sqlite":
		u, _ := url.Parse(spec)
		return OpenSQLite(ctx, u.Path, opts)
	default:
		return OpenRedis(ctx, spec, opts)
	}
}

// CheckURL validates a store URL and returns its kind (memory, sqlite,
// redis).
func CheckURL(spec string) (string, error) {
	if spec == "" || spec == "memory" || spec == "memory://" {
		return "memory", nil
	}
	u, err := url.Parse(spec)
	if err != nil {
		return "", fmt.Errorf("store %q: not a URL", redactURL(spec))
	}
	switch u.Scheme {
	case "sqlite":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") || strings.HasSuffix(u.Path, "/") {
			return "", fmt.Errorf("store %q: want sqlite:///absolute/path/to/file", spec)
		}
		return "sqlite", nil
	case "redis", "rediss":
		if u.Host == "" {
			return "", fmt.Errorf("store %q: want redis://host:port/db", redactURL(spec))
		}
		if db := strings.Trim(u.Path, "/"); db != "" {
			for _, c := range db {
				if c < '0' || c > '9' {
					return "", fmt.Errorf("store %q: the database must be a number (redis://host:port/0)", redactURL(spec))
				}
			}
		}
		return "redis", nil
	}
	return "", fmt.Errorf("store %q: want memory, sqlite:///path or redis://host:port/db", redactURL(spec))
}

// redactURL hides a password in a store URL, for messages.
func redactURL(spec string) string {
	u, err := url.Parse(spec)
	if err != nil {
		if i := strings.LastIndexByte(spec, '@'); i >= 0 {
			return "…@" + spec[i+1:]
		}
		return spec
	}
	return u.Redacted()
}

// Redact is redactURL for callers that log a store URL.
func Redact(spec string) string { return redactURL(spec) }
