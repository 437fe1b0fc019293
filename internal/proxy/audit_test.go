package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/accesslog"
	"github.com/trustmesh/trustmesh/internal/testenv"
)

// recordingWriter records each Write.
type recordingWriter struct {
	mu     sync.Mutex
	writes [][]byte
	err    error
}

func (w *recordingWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	w.writes = append(w.writes, append([]byte(nil), b...))
	return len(b), nil
}

func (w *recordingWriter) snapshot() (n int, all string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.writes), string(bytes.Join(w.writes, nil))
}

func requestIDs(t *testing.T, data string) []string {
	t.Helper()
	var ids []string
	for _, line := range strings.Split(strings.TrimSuffix(data, "\n"), "\n") {
		if line == "" {
			continue
		}
		var r accesslog.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if r.Event != "access_decision" || r.Timestamp == "" {
			t.Fatalf("line %q", line)
		}
		ids = append(ids, r.RequestID)
	}
	return ids
}

func TestAuditLogWritesWhenIdleAndBatchesUnderLoad(t *testing.T) {
	w := &recordingWriter{}
	a := newAuditLog(w, testenv.Log())
	defer a.close()

	// Nothing in flight: each record is written at once.
	a.write(&accesslog.Record{RequestID: "tcp-1"})
	if n, _ := w.snapshot(); n != 1 {
		t.Fatalf("%d writes after an idle record, want 1", n)
	}
	// A request that ends writes its record before end returns.
	a.begin()
	a.write(&accesslog.Record{RequestID: "one"})
	a.end()
	if n, data := w.snapshot(); n != 2 || !strings.Contains(data, `"request_id":"one"`) {
		t.Fatalf("after one request: %d writes: %s", n, data)
	}
	// Overlapping requests: buffered until the last one ends, then one write.
	a.begin()
	a.begin()
	a.write(&accesslog.Record{RequestID: "a"})
	a.write(&accesslog.Record{RequestID: "tcp-2"})
	a.end()
	if n, _ := w.snapshot(); n != 2 {
		t.Fatalf("%d writes while a request is in flight, want 2", n)
	}
	a.write(&accesslog.Record{RequestID: "b"})
	a.end()
	n, data := w.snapshot()
	if got := strings.Join(requestIDs(t, data), " "); n != 3 || got != "tcp-1 one a tcp-2 b" {
		t.Fatalf("%d writes, records %q", n, got)
	}
	// A request that never ends (a stream): the timer writes the others.
	a.begin()
	a.write(&accesslog.Record{RequestID: "c"})
	time.Sleep(auditFlushDelay / 2)
	if n, _ := w.snapshot(); n != 3 {
		t.Fatal("written before the flush delay")
	}
	waitFor(t, 5*time.Second, "the timed flush", func() bool { n, _ := w.snapshot(); return n == 4 })
	// The size limit writes at once.
	big := strings.Repeat("x", auditFlushBytes)
	a.write(&accesslog.Record{RequestID: "d", Path: big})
	if n, _ := w.snapshot(); n != 5 {
		t.Fatalf("%d writes after a full buffer, want 5", n)
	}
	// close writes what is left; later records go straight out.
	a.write(&accesslog.Record{RequestID: "e"})
	a.close()
	a.write(&accesslog.Record{RequestID: "f"})
	a.end()
	n, data = w.snapshot()
	if got := strings.Join(requestIDs(t, data), " "); n != 7 || got != "tcp-1 one a tcp-2 b c d e f" {
		t.Fatalf("%d writes, records %q", n, got)
	}
}

func TestAuditLogCountsFailedRecords(t *testing.T) {
	w := &recordingWriter{err: errors.New("disk full")}
	a := newAuditLog(w, testenv.Log())
	a.begin()
	a.write(&accesslog.Record{})
	a.write(&accesslog.Record{})
	a.end()
	a.write(&accesslog.Record{LatencyMS: math.Inf(1)})
	a.close()
	if got := a.failed.Load(); got != 3 {
		t.Fatalf("failed = %d, want 3", got)
	}
}

func TestAuditLogConcurrentRecordsAllWritten(t *testing.T) {
	w := &recordingWriter{}
	a := newAuditLog(w, testenv.Log())
	const workers, each = 8, 500
	var wg sync.WaitGroup
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				a.begin()
				a.write(&accesslog.Record{RequestID: fmt.Sprintf("%d-%d", g, i), Reason: strings.Repeat("r", i%300)})
				a.end()
			}
		}()
	}
	wg.Wait()
	// The last end wrote everything: nothing waits for the timer.
	_, data := w.snapshot()
	ids := requestIDs(t, data)
	if len(ids) != workers*each {
		t.Fatalf("%d records, want %d", len(ids), workers*each)
	}
	// Each worker's records are in its order.
	next := map[string]int{}
	for _, id := range ids {
		g, i, _ := strings.Cut(id, "-")
		if want := fmt.Sprint(next[g]); i != want {
			t.Fatalf("worker %s: record %s after %d", g, i, next[g]-1)
		}
		next[g]++
	}
	a.close()
}
