// Package sqlstore implements store.Store on SQL databases: SQLite through
// modernc.org/sqlite (the embedded default) and PostgreSQL through pgx. Both
// dialects share every query; the few differences (placeholders, error
// codes, column types in migrations) are confined to dialect.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/trustmesh/trustmesh/internal/store"
)

type dialect int

const (
	dialectSQLite dialect = iota + 1
	dialectPostgres
)

func (d dialect) String() string {
	if d == dialectPostgres {
		return "postgres"
	}
	return "sqlite"
}

// Store is a store.Store backed by database/sql.
type Store struct {
	db      *sql.DB
	dialect dialect
}

var _ store.Store = (*Store)(nil)

// Open connects to the datastore named by rawURL and applies any pending
// schema migrations. Accepted forms:
//
//	sqlite://relative/path.sqlite3   sqlite:///absolute/path.sqlite3
//	postgres://user:pass@host:5432/db?sslmode=disable   (or postgresql://)
func Open(ctx context.Context, rawURL string) (*Store, error) {
	d, target, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	var db *sql.DB
	switch d {
	case dialectSQLite:
		db, err = openSQLite(target)
	case dialectPostgres:
		db, err = sql.Open("pgx", target)
	}
	if err != nil {
		return nil, err
	}
	s := &Store{db: db, dialect: d}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to %s datastore %s: %w", d, RedactURL(rawURL), err)
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// ParseURL checks a datastore URL and returns its dialect and the driver
// connection string. It never touches the network or the filesystem.
func ParseURL(rawURL string) (dialect, string, error) {
	switch {
	case strings.HasPrefix(rawURL, "sqlite://"):
		path := strings.TrimPrefix(rawURL, "sqlite://")
		if i := strings.IndexAny(path, "?#"); i >= 0 {
			return 0, "", fmt.Errorf("invalid datastore URL %q: sqlite URLs take no query or fragment", rawURL)
		}
		if path == "" {
			return 0, "", fmt.Errorf("invalid datastore URL %q: missing database file path (sqlite:///abs/path or sqlite://rel/path)", rawURL)
		}
		return dialectSQLite, path, nil
	case strings.HasPrefix(rawURL, "postgres://"), strings.HasPrefix(rawURL, "postgresql://"):
		u, err := url.Parse(rawURL)
		if err != nil {
			return 0, "", fmt.Errorf("invalid datastore URL %s: %w", RedactURL(rawURL), err)
		}
		if u.Host == "" && u.Query().Get("host") == "" {
			return 0, "", fmt.Errorf("invalid datastore URL %s: missing host", RedactURL(rawURL))
		}
		return dialectPostgres, rawURL, nil
	default:
		return 0, "", fmt.Errorf("invalid datastore URL %q: scheme must be sqlite:// or postgres://", RedactURL(rawURL))
	}
}

// RedactURL hides a password in a datastore URL so it can be logged.
func RedactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil {
		if err != nil && strings.Contains(rawURL, "@") {
			return "<unparsable URL>"
		}
		return rawURL
	}
	return u.Redacted()
}

func openSQLite(path string) (*sql.DB, error) {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create datastore directory: %w", err)
		}
	}
	// The database holds token hashes and agent records: owner-only. Create
	// it before the driver does, which would use the umask's 0644.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open datastore file: %w", err)
	}
	f.Close()
	q := url.Values{}
	for _, p := range []string{
		"journal_mode(WAL)",
		// FULL: a commit is fsynced before it is acknowledged, so an
		// acknowledged entry survives kill -9 and power loss alike.
		"synchronous(FULL)",
		"busy_timeout(10000)",
		"foreign_keys(1)",
	} {
		q.Add("_pragma", p)
	}
	// Writers take the write lock at BEGIN, so concurrent writers queue on
	// busy_timeout instead of failing on lock upgrade.
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, err
	}
	return db, nil
}

// Close releases the database connections.
func (s *Store) Close() error { return s.db.Close() }

// DB exposes the underlying handle for tests and tooling.
func (s *Store) DB() *sql.DB { return s.db }

// rebind turns the '?' placeholders every query is written with into the
// dialect's form.
func (s *Store) rebind(q string) string {
	if s.dialect != dialectPostgres {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 8)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

func (s *Store) exec(ctx context.Context, q querier, query string, args ...any) (sql.Result, error) {
	return q.ExecContext(ctx, s.rebind(query), args...)
}

func (s *Store) query(ctx context.Context, q querier, query string, args ...any) (*sql.Rows, error) {
	return q.QueryContext(ctx, s.rebind(query), args...)
}

func (s *Store) queryRow(ctx context.Context, q querier, query string, args ...any) *sql.Row {
	return q.QueryRowContext(ctx, s.rebind(query), args...)
}

type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// inTx runs fn in a transaction, committing when it returns nil.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// isUniqueViolation reports whether err is a primary key or unique
// constraint violation in either dialect.
func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23505"
	}
	var sqliteErr *sqlite.Error
	if errors.As(err, &sqliteErr) {
		switch sqliteErr.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return true
		}
	}
	return false
}
