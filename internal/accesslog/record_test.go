package accesslog

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// checkEncoding: AppendJSON writes what json.Marshal writes for r (with
// the timestamp filled in from now), and that is valid JSON.
func checkEncoding(t testing.TB, r Record, now time.Time) {
	t.Helper()
	got, ok := r.AppendJSON(nil, now)
	if !ok {
		t.Fatalf("AppendJSON refused %+v", r)
	}
	if r.Timestamp == "" {
		r.Timestamp = now.UTC().Format(time.RFC3339Nano)
	}
	want, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("AppendJSON differs from encoding/json:\n got %s\nwant %s", got, want)
	}
	var back Record
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatalf("not valid JSON: %v: %s", err, got)
	}
}

var testNow = time.Date(2026, 12, 1, 22, 14, 3, 512_000_000, time.FixedZone("x", 3600))

func TestAppendJSONMatchesMarshal(t *testing.T) {
	pol, rule, zero := "default/api-allow", 3, 0
	cases := []Record{
		{},
		{Event: EventAccessDecision, Direction: "inbound", Listener: "http", Protocol: "http", Decision: "deny", Rule: &zero},
		{ // a proxy record
			Timestamp: "2026-12-01T22:14:03.512Z", Event: EventAccessDecision, RequestID: "0c1b-x", Direction: "inbound", Listener: "http",
			Protocol: "http", SourcePrincipal: "spiffe://example.org/ns/default/sa/frontend", SourceIP: "127.0.0.1",
			Destination: "spiffe://example.org/ns/default/sa/api", DestinationPort: 8080, Method: "GET", Path: "/admin?x=<1>&y=\"2\"",
			Host: "api", Decision: "allow", Action: "ALLOW", Policy: &pol, Rule: &rule, Reason: "allowed by default/api-allow rule 3",
			MTLS: true, Authenticated: true, Status: 200, LatencyMS: 0.213, DryRun: []string{"a/b", "c/d"}, Audit: []string{"e/f"},
		},
		{ // a gateway record
			Event: "login", Direction: "inbound", Listener: "gateway", Protocol: "http", SourcePrincipal: "alice@example.com",
			Decision: "allow", Reason: "signed in", Status: 302, Route: "internal-tool", Mode: "login", User: "alice",
			Email: "alice@example.com", AuthMethod: "session", IdP: "corp", Session: "3f2a", Check: "groups",
		},
		{Path: "\x00\x01\b\f\n\r\t\x1f\x7f\\/\u2028\u2029\xff\xfe é 日本 \U0001F600 \xed\xa0\x80", Reason: "a\"b", DryRun: []string{}, Audit: []string{""}},
		{Host: strings.Repeat("<&>", 100), DestinationPort: math.MaxUint32, Status: -1, Rule: &rule},
	}
	for _, f := range []float64{0, 1, -1, 0.001, 1e-6, 9.99e-7, 1e-7, 123456.789, 1e20, 1e21, 1.5e300, 5e-324, -2.5e-8, math.MaxFloat64} {
		cases = append(cases, Record{LatencyMS: f})
	}
	for i, c := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkEncoding(t, c, testNow) })
	}
	for _, f := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if _, ok := (&Record{LatencyMS: f}).AppendJSON(nil, time.Now()); ok {
			t.Errorf("latency %v encoded", f)
		}
	}
	// No allocation once the buffer has room.
	r := cases[2]
	r.Timestamp = ""
	buf := make([]byte, 0, 4096)
	if n := testing.AllocsPerRun(100, func() { buf, _ = r.AppendJSON(buf[:0], time.Now()) }); n != 0 {
		t.Fatalf("AppendJSON: %v allocations", n)
	}
}

var awkwardStrings = []string{
	"", "a", "plain text", `quote " backslash \ slash /`, "<script>&amp;</script>", "tab\tnl\ncr\rbs\bff\f",
	"\x00\x01\x1f\x7f", "é ü 日本", "\u2028\u2029", "bad \xff\xfe utf8 \xc3", "emoji 🙂", "trunc\xe2\x82",
}

// TestRandomRecordsMatchMarshal sets every field, each to an awkward value
// or empty, in random combinations.
func TestRandomRecordsMatchMarshal(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := func() string { return awkwardStrings[rng.IntN(len(awkwardStrings))] }
	for i := 0; i < 3000; i++ {
		r := Record{
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
		for j := rng.IntN(3); j > 0; j-- {
			r.DryRun = append(r.DryRun, s())
		}
		if rng.IntN(3) == 0 {
			r.Audit = []string{}
		}
		for j := rng.IntN(3); j > 0; j-- {
			r.Audit = append(r.Audit, s())
		}
		if rng.IntN(2) == 0 {
			r.Timestamp = ""
		}
		checkEncoding(t, r, time.Unix(rng.Int64N(4e9), rng.Int64N(1e9)).In(time.FixedZone("x", 3600)))
	}
}

func FuzzAppendJSON(f *testing.F) {
	f.Add("/api?x=1", "spiffe://example.org/ns/default/sa/frontend", "denied by <x> & \"y\"", "a/b", uint32(8080), 200, 0.213, true, 2)
	f.Add("\xff\x00\u2028", "", "\\", "", uint32(0), 0, 1e-9, false, -1)
	for _, s := range awkwardStrings {
		f.Add(s, s, s, s, uint32(1), 1, 1.25, false, 0)
	}
	f.Fuzz(func(t *testing.T, path, principal, reason, pol string, port uint32, status int, latency float64, mtls bool, rule int) {
		if math.IsNaN(latency) || math.IsInf(latency, 0) {
			return
		}
		r := Record{
			Event: EventAccessDecision, RequestID: principal, Direction: "inbound", Listener: pol, Protocol: "http",
			SourcePrincipal: principal, SourceIP: path, Destination: reason, DestinationPort: port, Method: pol, Path: path,
			Host: reason, Decision: "allow", Action: pol, Reason: reason, MTLS: mtls, Authenticated: !mtls, Status: status, LatencyMS: latency,
			Route: pol, User: principal, Email: path, Check: reason,
		}
		if rule >= 0 {
			r.Policy, r.Rule = &pol, &rule
			r.DryRun, r.Audit = []string{path, reason}, []string{principal}
		}
		checkEncoding(t, r, testNow)
		r.Timestamp = path
		checkEncoding(t, r, testNow)
	})
}
