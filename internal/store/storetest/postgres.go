package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // "pgx" driver for the admin connection
)

// PostgresURLEnv names the environment variable holding a PostgreSQL URL
// whose role may CREATE DATABASE. .ci/run sets it after starting the
// machine's PostgreSQL server.
const PostgresURLEnv = "TRUSTMESH_TEST_POSTGRES_URL"

// RequirePostgresEnv, when "1", turns a missing PostgreSQL into a test
// failure instead of a skip, so CI cannot pass without running the
// PostgreSQL half of the contract.
const RequirePostgresEnv = "TRUSTMESH_TEST_REQUIRE_POSTGRES"

// PostgresURL creates a fresh, empty database on the test PostgreSQL server
// and returns its URL; the database is dropped when the test ends. The test
// is skipped when no server is configured (failed under CI).
func PostgresURL(t testing.TB) string {
	t.Helper()
	base := os.Getenv(PostgresURLEnv)
	if base == "" {
		if os.Getenv(RequirePostgresEnv) == "1" {
			t.Fatalf("%s is not set but %s=1: PostgreSQL tests must run", PostgresURLEnv, RequirePostgresEnv)
		}
		t.Skipf("no PostgreSQL: set %s (see .ci/run) to run the PostgreSQL half of this test", PostgresURLEnv)
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", PostgresURLEnv, err)
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "trustmesh_test_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		admin, err := sql.Open("pgx", base)
		if err != nil {
			return
		}
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop test database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}
