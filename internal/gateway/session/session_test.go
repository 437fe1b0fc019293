package session_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/gateway/session"
	"github.com/trustmesh/trustmesh/internal/gateway/session/sessiontest"
)

func TestMemory(t *testing.T) {
	sessiontest.Run(t, func(t *testing.T, clock func() time.Time) session.Store {
		return session.NewMemory(session.Options{Now: clock})
	})
}

func TestSQLite(t *testing.T) {
	sessiontest.Run(t, func(t *testing.T, clock func() time.Time) session.Store {
		s, err := session.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "sessions.db"), session.Options{Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestRedis(t *testing.T) {
	addr := sessiontest.StartRedis(t)
	var db atomic.Int32
	sessiontest.Run(t, func(t *testing.T, clock func() time.Time) session.Store {
		// A database per test (Redis has 16), reused round-robin: keys
		// are unique per test anyway.
		s, err := session.Open(context.Background(), fmt.Sprintf("redis://%s/%d", addr, db.Add(1)%16), session.Options{Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestCheckURL(t *testing.T) {
	for _, tc := range []struct {
		in, kind string
		ok       bool
	}{
		{"memory", "memory", true},
		{"", "memory", true},
		{"sqlite:///var/lib/trustmesh/sessions.db", "sqlite", true},
		{"sqlite://relative.db", "", false},
		{"sqlite:///dir/", "", false},
		{"redis://127.0.0.1:6379/0", "redis", true},
		{"redis://:secret@127.0.0.1:6379/2", "redis", true},
		{"rediss://redis.example.com:6380/0", "redis", true},
		{"redis://127.0.0.1:6379/x", "", false},
		{"redis:///0", "", false},
		{"postgres://x", "", false},
	} {
		kind, err := session.CheckURL(tc.in)
		if (err == nil) != tc.ok || kind != tc.kind {
			t.Errorf("CheckURL(%q) = %q, %v", tc.in, kind, err)
		}
	}
	if _, err := session.CheckURL("redis://:hunter2@127.0.0.1:6379/x"); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("the password must not appear in errors: %v", err)
	}
}
