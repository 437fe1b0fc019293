package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestRecordFields(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf)
	l.Record(context.Background(), Event{Actor: "unix:uid:0", Operation: "entry.create", Target: "e1", Outcome: Success,
		Attrs: []slog.Attr{slog.String("spiffe_id", "spiffe://example.org/x")}})
	l.Record(context.Background(), Event{Actor: "spiffe://example.org/y", Operation: "entry.delete", Target: "e2", Outcome: Denied, Reason: "not admin"})
	lines := bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
	if len(lines) != 2 {
		t.Fatalf("got %d lines: %s", len(lines), buf.String())
	}
	var first, second map[string]any
	if err := json.Unmarshal(lines[0], &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(lines[1], &second); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"actor": "unix:uid:0", "operation": "entry.create", "target": "e1", "outcome": "success", "spiffe_id": "spiffe://example.org/x"} {
		if first[k] != want {
			t.Errorf("first[%s] = %v, want %s", k, first[k], want)
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, first["time"].(string)); err != nil {
		t.Errorf("time field: %v", err)
	}
	if _, ok := first["level"]; ok {
		t.Error("level field present")
	}
	if _, ok := first["reason"]; ok {
		t.Error("empty reason written")
	}
	if second["reason"] != "not admin" || second["outcome"] != "denied" {
		t.Errorf("second = %v", second)
	}
}

func TestOpenOwnerOnlyAppend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logs", "audit.log")
	for i := 0; i < 2; i++ {
		l, c, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		l.Record(context.Background(), Event{Actor: "a", Operation: "op", Outcome: Success})
		c.Close()
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(data, []byte("\n")); n != 2 {
		t.Fatalf("%d records after two opens, want 2 (append)", n)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("audit log mode %v", fi.Mode().Perm())
	}
}

func TestNilLoggerDiscards(t *testing.T) {
	var l *Logger
	l.Record(context.Background(), Event{Operation: "x"}) // must not panic
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, os.ErrClosed }

func TestWriteFailuresAreCounted(t *testing.T) {
	l := New(failingWriter{})
	l.Record(context.Background(), Event{Operation: "x"})
	l.Record(context.Background(), Event{Operation: "y"})
	if n := l.Failures(); n != 2 {
		t.Fatalf("Failures() = %d, want 2", n)
	}
}
