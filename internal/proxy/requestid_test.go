package proxy

import (
	"net/http"
	"strings"
	"testing"

	"github.com/google/uuid"
)

func TestNewRequestIDIsARandomUUID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 10*requestIDBatch*16; i++ {
		id := newRequestID()
		u, err := uuid.Parse(id)
		if err != nil || len(id) != 36 || !validRequestID(id) || u.Version() != 4 || u.Variant() != uuid.RFC4122 || u.String() != id {
			t.Fatalf("%q: %v (version %d, variant %v)", id, err, u.Version(), u.Variant())
		}
		if seen[id] {
			t.Fatalf("%q twice", id)
		}
		seen[id] = true
	}
}

func BenchmarkNewRequestID(b *testing.B) {
	b.Run("batched", func(b *testing.B) {
		for b.Loop() {
			_ = newRequestID()
		}
	})
	b.Run("uuid.NewString", func(b *testing.B) {
		for b.Loop() {
			_ = uuid.NewString()
		}
	})
}

func TestEnsureRequestID(t *testing.T) {
	for _, c := range []struct {
		in   []string
		keep string // "" : a new one
	}{
		{nil, ""}, {[]string{"req-1"}, "req-1"}, {[]string{"req-1", "req-2"}, "req-1"}, {[]string{"bad id"}, ""},
		{[]string{"", "req-2"}, ""}, {[]string{strings.Repeat("a", 129)}, ""},
	} {
		h := http.Header{}
		if c.in != nil {
			h["X-Request-Id"] = c.in
		}
		got := ensureRequestID(h)
		if c.keep != "" && got != c.keep || c.keep == "" && (len(got) != 36 || !validRequestID(got)) {
			t.Errorf("%q: got %q", c.in, got)
		}
		if v := h.Values("X-Request-Id"); len(v) != 1 || v[0] != got {
			t.Errorf("%q: header now %q, want only %q", c.in, v, got)
		}
	}
}
