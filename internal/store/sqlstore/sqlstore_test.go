package sqlstore

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trustmesh/trustmesh/internal/store"
	"github.com/trustmesh/trustmesh/internal/store/storetest"
)

func openForTest(t *testing.T, url string) *Store {
	t.Helper()
	s, err := Open(context.Background(), url)
	if err != nil {
		t.Fatalf("Open(%s): %v", RedactURL(url), err)
	}
	return s
}

func TestSQLiteContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openForTest(t, "sqlite://"+filepath.Join(t.TempDir(), "ds.sqlite3"))
	})
}

func TestPostgresContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openForTest(t, storetest.PostgresURL(t))
	})
}

func TestSQLiteFileIsOwnerOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "ds.sqlite3")
	s := openForTest(t, "sqlite://"+path)
	defer s.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("datastore mode = %v, want 0600", fi.Mode().Perm())
	}
	var mode string
	if err := s.DB().QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q (%v), want wal", mode, err)
	}
}

func TestMigrationsIdempotentAndVersioned(t *testing.T) {
	for name, url := range map[string]func(t *testing.T) string{
		"sqlite":   func(t *testing.T) string { return "sqlite://" + filepath.Join(t.TempDir(), "ds.sqlite3") },
		"postgres": func(t *testing.T) string { return storetest.PostgresURL(t) },
	} {
		t.Run(name, func(t *testing.T) {
			u := url(t)
			s := openForTest(t, u)
			s.Close()
			s = openForTest(t, u) // re-open applies nothing new
			var n int
			if err := s.DB().QueryRow("SELECT COUNT(*) FROM schema_migrations").Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != SchemaVersion() {
				t.Fatalf("schema_migrations rows = %d, want %d", n, SchemaVersion())
			}
			// A schema newer than the binary is refused, not clobbered.
			if _, err := s.DB().Exec(s.rebind("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'future', 0)"), SchemaVersion()+1); err != nil {
				t.Fatal(err)
			}
			s.Close()
			_, err := Open(context.Background(), u)
			if err == nil || !strings.Contains(err.Error(), "newer than this binary") {
				t.Fatalf("open newer schema: err = %v", err)
			}
		})
	}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in      string
		wantErr string
	}{
		{"sqlite:///abs/ds.sqlite3", ""},
		{"sqlite://rel/ds.sqlite3", ""},
		{"postgres://u:p@127.0.0.1:5432/db?sslmode=disable", ""},
		{"postgresql://u@localhost/db", ""},
		{"sqlite://", "missing database file path"},
		{"sqlite:///x?mode=ro", "no query"},
		{"mysql://x", "scheme must be"},
		{"/plain/path", "scheme must be"},
		{"postgres:///db", "missing host"},
	} {
		_, _, err := ParseURL(tc.in)
		if tc.wantErr == "" && err != nil {
			t.Errorf("ParseURL(%q) = %v", tc.in, err)
		}
		if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("ParseURL(%q) = %v, want error containing %q", tc.in, err, tc.wantErr)
		}
	}
}

func TestRedactURL(t *testing.T) {
	got := RedactURL("postgres://user:s3cret@db:5432/x")
	if strings.Contains(got, "s3cret") {
		t.Fatalf("RedactURL leaked the password: %s", got)
	}
}
