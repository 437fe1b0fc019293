package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

var auditStrings = []string{
	"", "a", "plain text", `quote " backslash \ slash /`, "<script>&amp;</script>", "tab\tnl\ncr\rbs\bff\f",
	"\x00\x01\x1f\x7f", "é ü 日本", "\u2028\u2029", "bad \xff\xfe utf8 \xc3", "emoji 🙂", "trunc\xe2\x82",
}

func randomRecord(rng *rand.Rand) *decisionRecord {
	s := func() string { return auditStrings[rng.IntN(len(auditStrings))] }
	r := &decisionRecord{
		Timestamp: s(), Event: s(), RequestID: s(), Direction: s(), Listener: s(), Protocol: s(),
		SourcePrincipal: s(), SourceIP: s(), Destination: s(), DestinationPort: rng.Uint32N(3) * 65535,
		Method: s(), Path: s(), Host: s(), Decision: s(), Action: s(), Reason: s(),
		MTLS: rng.IntN(2) == 0, Authenticated: rng.IntN(2) == 0, Status: []int{0, 200, -1, 503}[rng.IntN(4)],
		LatencyMS: []float64{0, 1.5, 0.001, 1e-7, 123456.789, 1e21, -2.5, 5e-324, math.MaxFloat64}[rng.IntN(9)],
		Route:     s(), Mode: s(), User: s(), Email: s(), AuthMethod: s(), IdP: s(), Session: s(), Check: s(),
	}
	if rng.IntN(2) == 0 {
		p := s()
		r.Policy = &p
	}
	if rng.IntN(2) == 0 {
		rule := rng.IntN(5) - 1
		r.Rule = &rule
	}
	for i := rng.IntN(3); i > 0; i-- {
		r.DryRun = append(r.DryRun, s())
	}
	if rng.IntN(3) == 0 {
		r.Audit = []string{}
	}
	for i := rng.IntN(3); i > 0; i-- {
		r.Audit = append(r.Audit, s())
	}
	return r
}

// TestAuditJSONMatchesMarshal: the hand-written encoder writes exactly
// what encoding/json writes, so the format is the documented one.
func TestAuditJSONMatchesMarshal(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 3000; i++ {
		r := randomRecord(rng)
		ts := time.Unix(rng.Int64N(4e9), rng.Int64N(1e9)).In(time.FixedZone("x", 3600))
		if rng.IntN(2) == 0 {
			r.Timestamp = ""
		}
		got, ok := r.appendJSON(nil, ts)
		if !ok {
			t.Fatalf("record %d not encoded", i)
		}
		if r.Timestamp == "" {
			r.Timestamp = ts.UTC().Format(time.RFC3339Nano)
		}
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("record %d:\n got %s\nwant %s", i, got, want)
		}
	}
	for _, f := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if _, ok := (&decisionRecord{LatencyMS: f}).appendJSON(nil, time.Now()); ok {
			t.Errorf("latency %v encoded", f)
		}
	}
}

func FuzzAuditJSON(f *testing.F) {
	for _, s := range auditStrings {
		f.Add(s, 1.25)
	}
	f.Fuzz(func(t *testing.T, s string, latency float64) {
		if math.IsNaN(latency) || math.IsInf(latency, 0) {
			return
		}
		r := &decisionRecord{Timestamp: "t" + s, Event: s, Reason: s, Path: s, Policy: &s, DryRun: []string{s, s}, LatencyMS: latency, Check: s}
		got, _ := r.appendJSON(nil, time.Time{})
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("got %s\nwant %s", got, want)
		}
	})
}

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
				a.write(&decisionRecord{RequestID: id, Reason: "r"})
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
		go func() { defer wg.Done(); a.write(&decisionRecord{}) }()
	}
	wg.Wait()
	if n := a.failed.Load(); n != 50 {
		t.Errorf("%d failures counted, want 50", n)
	}
	if c := strings.Count(logs.String(), "audit log write failed"); c != 1 {
		t.Errorf("failure logged %d times, want once", c)
	}
	a.write(&decisionRecord{LatencyMS: math.NaN()})
	if n := a.failed.Load(); n != 51 {
		t.Errorf("an unencodable record is not counted: %d", n)
	}
}
