package registry

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustmesh/trustmesh/internal/store"
	"github.com/trustmesh/trustmesh/internal/store/sqlstore"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestParseWorkloadID(t *testing.T) {
	for _, tc := range []struct {
		in, wantErr string
	}{
		{"spiffe://example.org/ns/default/sa/api", ""},
		{"spiffe://example.org/a.b-c_d/e", ""},
		{"", "SPIFFE ID is required"},
		{"spiffe://example.org", "needs a path"},
		{"spiffe://other.org/x", `trust domain "other.org" is not the server's trust domain "example.org"`},
		{"https://example.org/x", "scheme"},
		{"spiffe://Example.org/x", "trust domain characters"},
		{"spiffe://example.org/x/", "trailing slash"},
		{"spiffe://example.org/x/../y", "dot segment"},
		{"spiffe://example.org/x?q=1", "path segment characters"},
		{"spiffe://example.org/x y", "path segment characters"},
		{"spiffe://example.org:8080/x", "trust domain characters"},
		{"spiffe://user@example.org/x", "trust domain characters"},
		{"spiffe://example.org/trustmesh/agent/x", "reserved"},
		{"spiffe://example.org/trustmesh", "reserved"},
		{"spiffe://example.org/trustmeshy", ""},
	} {
		_, err := ParseWorkloadID(td, tc.in)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("ParseWorkloadID(%q) = %v", tc.in, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("ParseWorkloadID(%q) = %v, want error containing %q", tc.in, err, tc.wantErr)
		}
	}
}

func TestParseSelector(t *testing.T) {
	for _, tc := range []struct {
		in, typ, val, wantErr string
	}{
		{"unix:uid:1000", "unix", "uid:1000", ""},
		{"k8s:ns:default", "k8s", "ns:default", ""},
		{"join_token:abc", "join_token", "abc", ""},
		{"unix:path:/usr/bin/x y", "unix", "path:/usr/bin/x y", ""},
		{"nocolon", "", "", "want type:value"},
		{":value", "", "", "empty type"},
		{"unix:", "", "", "empty value"},
		{"Unix:uid:1", "", "", "lowercase letters"},
		{"_x:1", "", "", "lowercase letters"},
		{"unix:uid:\n1", "", "", "control character"},
		{"unix:\xff", "", "", "UTF-8"},
		{"unix:" + strings.Repeat("a", 1025), "", "", "longer than 1024"},
	} {
		sel, err := ParseSelector(tc.in)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("ParseSelector(%q) = %v", tc.in, err)
		case tc.wantErr == "" && (sel.Type != tc.typ || sel.Value != tc.val):
			t.Errorf("ParseSelector(%q) = %+v", tc.in, sel)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("ParseSelector(%q) = %v, want error containing %q", tc.in, err, tc.wantErr)
		}
	}
}

func TestParseSelectorsDedupsAndReportsAll(t *testing.T) {
	sels, err := ParseSelectors([]string{"unix:uid:1", "unix:gid:2", "unix:uid:1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(FormatSelectors(sels), ","); got != "unix:gid:2,unix:uid:1" {
		t.Fatalf("ParseSelectors = %s", got)
	}
	_, err = ParseSelectors([]string{"bad", "unix:", "unix:uid:1"})
	if err == nil || !strings.Contains(err.Error(), `"bad"`) || !strings.Contains(err.Error(), `"unix:"`) {
		t.Fatalf("want both errors reported, got %v", err)
	}
}

func TestValidateEntry(t *testing.T) {
	now := time.Now()
	good := EntrySpec{
		SPIFFEID:  "spiffe://example.org/ns/default/sa/api",
		ParentID:  "spiffe://example.org/trustmesh/agent/join_token/0011223344556677",
		Selectors: []string{"unix:uid:1000"},
		DNSNames:  []string{"API.example.org.", "api.example.org", "*.svc.local"},
	}
	e, err := ValidateEntry(td, good, now)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(e.DNSNames, ",") != "api.example.org,*.svc.local" {
		t.Fatalf("DNS names not normalized: %v", e.DNSNames)
	}

	for _, tc := range []struct {
		name    string
		mutate  func(*EntrySpec)
		wantErr []string
	}{
		{"no selectors", func(s *EntrySpec) { s.Selectors = nil }, []string{"at least one selector"}},
		{"same as parent", func(s *EntrySpec) { s.ParentID = s.SPIFFEID }, []string{"must differ"}},
		{"foreign parent", func(s *EntrySpec) { s.ParentID = "spiffe://evil.org/agent" }, []string{"parent ID", "evil.org"}},
		{"ttl too short", func(s *EntrySpec) { s.X509SVIDTTL = time.Second }, []string{"below the minimum"}},
		{"ttl negative", func(s *EntrySpec) { s.JWTSVIDTTL = -time.Minute }, []string{"negative"}},
		{"ttl huge", func(s *EntrySpec) { s.X509SVIDTTL = 10 * MaxSVIDTTL }, []string{"above the maximum"}},
		{"bad dns", func(s *EntrySpec) { s.DNSNames = []string{"-bad.example.org", "a..b", "x_y.org"} }, []string{"-bad.example.org", "a..b", "x_y.org"}},
		{"expired", func(s *EntrySpec) { s.ExpiresAt = now.Add(-time.Minute) }, []string{"not in the future"}},
		{"hint control", func(s *EntrySpec) { s.Hint = "a\x00b" }, []string{"control character"}},
		{"everything wrong at once", func(s *EntrySpec) {
			s.SPIFFEID = "spiffe://example.org"
			s.ParentID = ""
			s.Selectors = []string{"x"}
		}, []string{"needs a path", "parent ID is required", `selector "x"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := good
			spec.DNSNames = append([]string(nil), good.DNSNames...)
			tc.mutate(&spec)
			_, err := ValidateEntry(td, spec, now)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestTTLBoundaries(t *testing.T) {
	if err := CheckTTL("x", MinSVIDTTL); err != nil {
		t.Fatalf("minimum rejected: %v", err)
	}
	if err := CheckTTL("x", MinSVIDTTL-time.Millisecond); err == nil {
		t.Fatal("below minimum accepted")
	}
	if err := CheckTTL("x", 0); err != nil {
		t.Fatalf("zero (default) rejected: %v", err)
	}
}

func newStore(t *testing.T) store.Store {
	t.Helper()
	s, err := sqlstore.Open(context.Background(), "sqlite://"+filepath.Join(t.TempDir(), "ds.sqlite3"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestJoinTokenRedemption(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	now := time.Now()
	tok, rec, err := NewJoinToken(now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(rec.SecretHash), strings.Split(tok, ".")[1]) {
		t.Fatal("record stores the secret")
	}
	if err := s.CreateJoinToken(ctx, rec); err != nil {
		t.Fatal(err)
	}
	id, _, _ := ParseJoinToken(tok)

	// A wrong secret is refused and does not burn the token.
	forged := id + "." + strings.Split(mustToken(t, now), ".")[1]
	if _, err := VerifyJoinToken(ctx, s, forged, now); !errors.Is(err, ErrInvalidJoinToken) {
		t.Fatalf("forged secret: %v", err)
	}
	if _, err := s.GetJoinToken(ctx, id); err != nil {
		t.Fatalf("wrong guess burned the token: %v", err)
	}
	// Expired.
	if _, err := VerifyJoinToken(ctx, s, tok, now.Add(2*time.Hour)); !errors.Is(err, ErrInvalidJoinToken) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired token: %v", err)
	}
	// Verification does not consume; consuming is the store's job (see the
	// store contract's AttestConsumesJoinToken), once per token.
	for i := 0; i < 2; i++ {
		got, err := VerifyJoinToken(ctx, s, tok, now)
		if err != nil || got != id {
			t.Fatalf("verify #%d: %q, %v", i, got, err)
		}
	}
	if _, err := s.AttestAgent(ctx, store.Agent{SPIFFEID: JoinTokenAgentID(td, id).String(), AttestationType: "join_token"}, id); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyJoinToken(ctx, s, tok, now); !errors.Is(err, ErrInvalidJoinToken) {
		t.Fatalf("used token: %v", err)
	}
	for _, bad := range []string{"", "abc", "zzzzzzzzzzzzzzzz.abc", id + ".!!!", id} {
		if _, err := VerifyJoinToken(ctx, s, bad, now); !errors.Is(err, ErrInvalidJoinToken) {
			t.Errorf("malformed %q: %v", bad, err)
		}
	}
	if _, _, err := NewJoinToken(now, 0); err == nil {
		t.Fatal("zero TTL accepted")
	}
}

func mustToken(t *testing.T, now time.Time) string {
	tok, _, err := NewJoinToken(now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestAuthorizedEntries(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	now := time.Now()
	agentA := JoinTokenAgentID(td, "aaaaaaaaaaaaaaaa").String()
	agentB := JoinTokenAgentID(td, "bbbbbbbbbbbbbbbb").String()
	server := ServerID(td).String()
	mk := func(id, spiffeID, parent string, sels []store.Selector, expires time.Time) {
		t.Helper()
		if _, err := s.CreateEntry(ctx, store.Entry{ID: id, SPIFFEID: spiffeID, ParentID: parent, Selectors: sels, ExpiresAt: expires}); err != nil {
			t.Fatal(err)
		}
	}
	uid := []store.Selector{{Type: "unix", Value: "uid:1"}}
	mk("a-web", "spiffe://example.org/web", agentA, uid, time.Time{})
	mk("a-nested", "spiffe://example.org/web/child", "spiffe://example.org/web", uid, time.Time{})
	mk("a-expired", "spiffe://example.org/old", agentA, uid, now.Add(-time.Second))
	mk("b-db", "spiffe://example.org/db", agentB, uid, time.Time{})
	mk("alias-zone", "spiffe://example.org/zone/eu", server, []store.Selector{{Type: "x509pop", Value: "subject:cn:node-a"}}, time.Time{})
	mk("zone-svc", "spiffe://example.org/zone-svc", "spiffe://example.org/zone/eu", uid, time.Time{})
	// A cycle reachable from agent A must not loop: A -> c2 -> c1 -> c2.
	mk("cycle-entry", "spiffe://example.org/c2", agentA, []store.Selector{{Type: "unix", Value: "uid:2"}}, time.Time{})
	mk("cycle1", "spiffe://example.org/c1", "spiffe://example.org/c2", uid, time.Time{})
	mk("cycle2", "spiffe://example.org/c2", "spiffe://example.org/c1", uid, time.Time{})

	got, err := AuthorizedEntries(ctx, s, td, agentA, []store.Selector{{Type: "x509pop", Value: "subject:cn:node-a"}}, now)
	if err != nil {
		t.Fatal(err)
	}
	if ids := entryIDs(got); ids != "a-nested,a-web,cycle-entry,cycle1,cycle2,zone-svc" {
		t.Fatalf("agent A authorized for %s", ids)
	}
	got, err = AuthorizedEntries(ctx, s, td, agentB, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	if ids := entryIDs(got); ids != "b-db" {
		t.Fatalf("agent B authorized for %s (must not see A's entries nor aliases it does not match)", ids)
	}
	got, err = AuthorizedEntries(ctx, s, td, JoinTokenAgentID(td, "cccccccccccccccc").String(), nil, now)
	if err != nil || len(got) != 0 {
		t.Fatalf("unknown agent authorized for %v (%v)", entryIDs(got), err)
	}
}

func entryIDs(es []store.Entry) string {
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.ID
	}
	sortStrings(ids)
	return strings.Join(ids, ",")
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func TestLimits(t *testing.T) {
	long := "spiffe://example.org/" + strings.Repeat("a", MaxIDLength)
	if _, err := ParseWorkloadID(td, long); err == nil || !strings.Contains(err.Error(), "limit is 2048") {
		t.Fatalf("over-long ID: %v", err)
	}
	spec := EntrySpec{SPIFFEID: "spiffe://example.org/w", ParentID: "spiffe://example.org/p"}
	for i := 0; i <= MaxSelectors; i++ {
		spec.Selectors = append(spec.Selectors, "unix:uid:"+strings.Repeat("1", i+1))
	}
	if _, err := ValidateEntry(td, spec, time.Now()); err == nil || !strings.Contains(err.Error(), "at most 64") {
		t.Fatalf("too many selectors: %v", err)
	}
	names, err := NormalizeDNSNames([]string{"API.Example.org.", "api.example.org"})
	if err != nil || len(names) != 1 || names[0] != "api.example.org" {
		t.Fatalf("NormalizeDNSNames = %v, %v", names, err)
	}
}
