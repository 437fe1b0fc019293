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

	"github.com/trustmesh/trustmesh/internal/testenv"
)

// marshalLike is what the proxy wrote before appendRecord: json.Marshal of
// the record, the timestamp filled in from now.
func marshalLike(t testing.TB, r decisionRecord, now time.Time) []byte {
	t.Helper()
	if r.Timestamp == "" {
		r.Timestamp = now.UTC().Format(time.RFC3339Nano)
	}
	want, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	return want
}

func checkEncoding(t testing.TB, r decisionRecord) {
	t.Helper()
	now := time.Date(2026, 12, 1, 22, 14, 3, 512_000_000, time.FixedZone("x", 3600))
	want := marshalLike(t, r, now)
	got, ok := appendRecord(nil, &r, now)
	if !ok {
		t.Fatalf("appendRecord refused %+v", r)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("appendRecord differs from encoding/json:\n got %s\nwant %s", got, want)
	}
	var back decisionRecord
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatalf("not valid JSON: %v: %s", err, got)
	}
}

func TestAuditEncoderMatchesEncodingJSON(t *testing.T) {
	pol, rule, zero := "default/api-allow", 3, 0
	cases := []decisionRecord{
		{},
		{Event: "access_decision", Direction: "inbound", Listener: "http", Protocol: "http", Decision: "deny", Rule: &zero},
		{
			Timestamp: "2026-12-01T22:14:03.512Z", Event: "access_decision", RequestID: "0c1b-x", Direction: "inbound", Listener: "http",
			Protocol: "http", SourcePrincipal: "spiffe://example.org/ns/default/sa/frontend", SourceIP: "127.0.0.1",
			Destination: "spiffe://example.org/ns/default/sa/api", DestinationPort: 8080, Method: "GET", Path: "/admin?x=<1>&y=\"2\"",
			Host: "api", Decision: "allow", Action: "ALLOW", Policy: &pol, Rule: &rule, Reason: "allowed by default/api-allow rule 3",
			MTLS: true, Authenticated: true, Status: 200, LatencyMS: 0.213, DryRun: []string{"a/b", "c/d"}, Audit: []string{"e/f"},
		},
		{Path: "\x00\x01\b\f\n\r\t\x1f\x7f\\/\u2028\u2029\xff\xfe é 日本 \U0001F600 \xed\xa0\x80", Reason: "a\"b", DryRun: []string{}, Audit: []string{""}},
		{Host: strings.Repeat("<&>", 100), DestinationPort: math.MaxUint32, Status: -1, Rule: &rule},
	}
	for _, f := range []float64{0, 1, -1, 0.001, 1e-6, 9.99e-7, 1e-7, 123456.789, 1e20, 1e21, 1.5e300, 5e-324, -2.5e-8, math.MaxFloat64} {
		cases = append(cases, decisionRecord{LatencyMS: f})
	}
	for i, c := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkEncoding(t, c) })
	}
	if _, ok := appendRecord(nil, &decisionRecord{LatencyMS: math.NaN()}, time.Now()); ok {
		t.Fatal("NaN latency encoded")
	}
	// No allocation once the buffer has room.
	r := cases[2]
	r.Timestamp = ""
	buf := make([]byte, 0, 4096)
	if n := testing.AllocsPerRun(100, func() { buf, _ = appendRecord(buf[:0], &r, time.Now()) }); n != 0 {
		t.Fatalf("appendRecord: %v allocations", n)
	}
}

func FuzzAuditEncoder(f *testing.F) {
	f.Add("/api?x=1", "spiffe://example.org/ns/default/sa/frontend", "denied by <x> & \"y\"", "a/b", uint32(8080), 200, 0.213, true, 2)
	f.Add("\xff\x00\u2028", "", "\\", "", uint32(0), 0, 1e-9, false, -1)
	f.Fuzz(func(t *testing.T, path, principal, reason, pol string, port uint32, status int, latency float64, mtls bool, rule int) {
		if math.IsNaN(latency) || math.IsInf(latency, 0) {
			return
		}
		r := decisionRecord{
			Event: "access_decision", RequestID: principal, Direction: "inbound", Listener: pol, Protocol: "http",
			SourcePrincipal: principal, SourceIP: path, Destination: reason, DestinationPort: port, Method: pol, Path: path,
			Host: reason, Decision: "allow", Action: pol, Reason: reason, MTLS: mtls, Authenticated: !mtls, Status: status, LatencyMS: latency,
		}
		if rule >= 0 {
			r.Policy, r.Rule = &pol, &rule
			r.DryRun, r.Audit = []string{path, reason}, []string{principal}
		}
		checkEncoding(t, r)
		r.Timestamp = path
		checkEncoding(t, r)
	})
}

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
		var r decisionRecord
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
	a.write(&decisionRecord{RequestID: "tcp-1"})
	if n, _ := w.snapshot(); n != 1 {
		t.Fatalf("%d writes after an idle record, want 1", n)
	}
	// A request that ends writes its record before end returns.
	a.begin()
	a.write(&decisionRecord{RequestID: "one"})
	a.end()
	if n, data := w.snapshot(); n != 2 || !strings.Contains(data, `"request_id":"one"`) {
		t.Fatalf("after one request: %d writes: %s", n, data)
	}
	// Overlapping requests: buffered until the last one ends, then one write.
	a.begin()
	a.begin()
	a.write(&decisionRecord{RequestID: "a"})
	a.write(&decisionRecord{RequestID: "tcp-2"})
	a.end()
	if n, _ := w.snapshot(); n != 2 {
		t.Fatalf("%d writes while a request is in flight, want 2", n)
	}
	a.write(&decisionRecord{RequestID: "b"})
	a.end()
	n, data := w.snapshot()
	if got := strings.Join(requestIDs(t, data), " "); n != 3 || got != "tcp-1 one a tcp-2 b" {
		t.Fatalf("%d writes, records %q", n, got)
	}
	// A request that never ends (a stream): the timer writes the others.
	a.begin()
	a.write(&decisionRecord{RequestID: "c"})
	time.Sleep(auditFlushDelay / 2)
	if n, _ := w.snapshot(); n != 3 {
		t.Fatal("written before the flush delay")
	}
	waitFor(t, 5*time.Second, "the timed flush", func() bool { n, _ := w.snapshot(); return n == 4 })
	// The size limit writes at once.
	big := strings.Repeat("x", auditFlushBytes)
	a.write(&decisionRecord{RequestID: "d", Path: big})
	if n, _ := w.snapshot(); n != 5 {
		t.Fatalf("%d writes after a full buffer, want 5", n)
	}
	// close writes what is left; later records go straight out.
	a.write(&decisionRecord{RequestID: "e"})
	a.close()
	a.write(&decisionRecord{RequestID: "f"})
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
	a.write(&decisionRecord{})
	a.write(&decisionRecord{})
	a.end()
	a.write(&decisionRecord{LatencyMS: math.Inf(1)})
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
				a.write(&decisionRecord{RequestID: fmt.Sprintf("%d-%d", g, i), Reason: strings.Repeat("r", i%300)})
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
