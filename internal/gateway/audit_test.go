package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/accesslog"
)

// slowWriter counts writes and holds each a little, so concurrent callers
// pile up behind a write in progress.
type slowWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
	fail   bool
	seen   map[string]bool // request ids written
}

func (w *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(200 * time.Microsecond)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	if w.fail {
		return 0, errors.New("disk full")
	}
	for _, l := range strings.Split(strings.TrimSuffix(string(p), "\n"), "\n") {
		var m struct {
			ID string `json:"request_id"`
		}
		_ = json.Unmarshal([]byte(l), &m)
		w.seen[m.ID] = true
	}
	return w.buf.Write(p)
}

// TestAuditGroupCommit: concurrent lines all arrive whole, each before
// its write returns, in fewer writes than lines.
func TestAuditGroupCommit(t *testing.T) {
	w := &slowWriter{seen: map[string]bool{}}
	a := &auditLog{w: w, log: slog.New(slog.NewTextHandler(io.Discard, nil)), now: time.Now}
	const writers, each = 16, 200
	var wg sync.WaitGroup
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				id := fmt.Sprintf("%d-%d", g, i)
				a.write(&accesslog.Record{RequestID: id, Reason: "r"})
				w.mu.Lock()
				in := w.seen[id]
				w.mu.Unlock()
				if !in {
					t.Errorf("line %s not written when write returned", id)
					return
				}
			}
		}()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(w.buf.String(), "\n"), "\n")
	if len(lines) != writers*each {
		t.Fatalf("%d lines, want %d", len(lines), writers*each)
	}
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil || m["event"] != "access_decision" || m["timestamp"] == "" {
			t.Fatalf("line %q: %v", l, err)
		}
	}
	if w.writes >= writers*each {
		t.Errorf("%d writes for %d lines: no batching", w.writes, writers*each)
	}
	t.Logf("%d lines in %d writes", len(lines), w.writes)
}

func TestAuditWriteFailuresCounted(t *testing.T) {
	logs := &syncBuffer{}
	w := &slowWriter{fail: true}
	a := &auditLog{w: w, log: slog.New(slog.NewTextHandler(logs, nil)), now: time.Now}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); a.write(&accesslog.Record{}) }()
	}
	wg.Wait()
	if n := a.failed.Load(); n != 50 {
		t.Errorf("%d failures counted, want 50", n)
	}
	if c := strings.Count(logs.String(), "audit log write failed"); c != 1 {
		t.Errorf("failure logged %d times, want once", c)
	}
	a.write(&accesslog.Record{LatencyMS: math.NaN()})
	if n := a.failed.Load(); n != 51 {
		t.Errorf("an unencodable record is not counted: %d", n)
	}
}
