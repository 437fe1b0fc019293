package session

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// SQLite is a Store in a SQLite file: processes on one host can share it.
type SQLite struct {
	db  *sql.DB
	now func() time.Time
}

const sqliteSchema = `
CREATE TABLE IF NOT EXISTS gateway_sessions (
	key        TEXT PRIMARY KEY,
	version    INTEGER NOT NULL,
	expires_at INTEGER NOT NULL,
	data       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS gateway_sessions_expiry ON gateway_sessions (expires_at);
CREATE TABLE IF NOT EXISTS gateway_tickets (
	key        TEXT PRIMARY KEY,
	expires_at INTEGER NOT NULL,
	value      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS gateway_tickets_expiry ON gateway_tickets (expires_at);
`

// OpenSQLite opens (creating, mode 0600) the SQLite session database at path.
func OpenSQLite(ctx context.Context, path string, opts Options) (*SQLite, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("session store directory: %w", err)
	}
	// Sessions are encrypted, but the file is still nobody else's business.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open session store: %w", err)
	}
	f.Close()
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(NORMAL)", "busy_timeout(10000)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open session store: %w", err)
	}
	if _, err := db.ExecContext(ctx, sqliteSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("session store schema: %w", err)
	}
	return &SQLite{db: db, now: opts.now()}, nil
}

func (s *SQLite) nowNS() int64 { return s.now().UnixNano() }

func (s *SQLite) Create(ctx context.Context, r Record) error {
	// An expired record under the same key is replaced.
	res, err := s.db.ExecContext(ctx, `INSERT INTO gateway_sessions (key, version, expires_at, data) VALUES (?, 1, ?, ?)
		ON CONFLICT (key) DO UPDATE SET version = 1, expires_at = excluded.expires_at, data = excluded.data
		WHERE gateway_sessions.expires_at <= ?`, r.Key, r.ExpiresAt.UnixNano(), nonNil(r.Data), s.nowNS())
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrExists
	}
	return nil
}

func (s *SQLite) Get(ctx context.Context, key string) (Record, error) {
	r := Record{Key: key}
	var exp int64
	err := s.db.QueryRowContext(ctx, `SELECT version, expires_at, data FROM gateway_sessions WHERE key = ? AND expires_at > ?`,
		key, s.nowNS()).Scan(&r.Version, &exp, &r.Data)
	if errors.Is(err, sql.ErrNoRows) {
		return Record{}, ErrNotFound
	}
	if err != nil {
		return Record{}, fmt.Errorf("get session: %w", err)
	}
	r.ExpiresAt = time.Unix(0, exp)
	return r, nil
}

func (s *SQLite) Update(ctx context.Context, r Record) (Record, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE gateway_sessions SET version = version + 1, expires_at = ?, data = ?
		WHERE key = ? AND version = ? AND expires_at > ?`, r.ExpiresAt.UnixNano(), nonNil(r.Data), r.Key, r.Version, s.nowNS())
	if err != nil {
		return Record{}, fmt.Errorf("update session: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		r.Version++
		return r, nil
	}
	if _, err := s.Get(ctx, r.Key); err != nil {
		return Record{}, err
	}
	return Record{}, ErrConflict
}

func (s *SQLite) Delete(ctx context.Context, key string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM gateway_sessions WHERE key = ?`, key); err != nil {
		return fmt.Errorf("delete session: %w", err)
	}
	return nil
}

func (s *SQLite) PutTicket(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	now := s.now()
	res, err := s.db.ExecContext(ctx, `INSERT INTO gateway_tickets (key, expires_at, value) VALUES (?, ?, ?)
		ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at, value = excluded.value
		WHERE gateway_tickets.expires_at <= ?`, key, now.Add(ttl).UnixNano(), value, now.UnixNano())
	if err != nil {
		return fmt.Errorf("put ticket: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrExists
	}
	return nil
}

func (s *SQLite) TakeTicket(ctx context.Context, key string) ([]byte, error) {
	var v []byte
	var exp int64
	err := s.db.QueryRowContext(ctx, `DELETE FROM gateway_tickets WHERE key = ? RETURNING expires_at, value`, key).Scan(&exp, &v)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("take ticket: %w", err)
	}
	if exp <= s.nowNS() {
		return nil, ErrNotFound
	}
	return v, nil
}

// Purge deletes expired sessions and tickets.
func (s *SQLite) Purge(ctx context.Context) (int, error) {
	now := s.nowNS()
	n := 0
	for _, q := range []string{`DELETE FROM gateway_sessions WHERE expires_at <= ?`, `DELETE FROM gateway_tickets WHERE expires_at <= ?`} {
		res, err := s.db.ExecContext(ctx, q, now)
		if err != nil {
			return n, fmt.Errorf("purge sessions: %w", err)
		}
		k, _ := res.RowsAffected()
		n += int(k)
	}
	return n, nil
}

func (s *SQLite) Close() error { return s.db.Close() }

// nonNil: the driver stores a nil slice as NULL, which the NOT NULL data
// column refuses; a record without data is an empty blob.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
