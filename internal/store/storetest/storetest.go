// Package storetest is the contract every store.Store implementation must
// meet. Each implementation's tests call Run with a constructor for a fresh,
// empty store; the same assertions then hold for SQLite and PostgreSQL.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/store"
)

// NewStore returns a fresh, empty store. The suite closes it.
type NewStore func(t *testing.T) store.Store

// Run runs the contract suite.
func Run(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"EntryRoundTrip", testEntryRoundTrip},
		{"EntryDuplicateRejected", testEntryDuplicateRejected},
		{"EntryList", testEntryList},
		{"EntryUpdate", testEntryUpdate},
		{"EntryUpdateStaleRevision", testEntryUpdateStaleRevision},
		{"EntryDelete", testEntryDelete},
		{"EntryConcurrentCreate", testEntryConcurrentCreate},
		{"JoinTokenSingleUse", testJoinTokenSingleUse},
		{"JoinTokenPrune", testJoinTokenPrune},
		{"AgentLifecycle", testAgentLifecycle},
		{"AgentBanIsSticky", testAgentBanIsSticky},
		{"AgentRenewKeepsPendingCertificate", testAgentRenew},
		{"AttestConsumesJoinToken", testAttestConsumesJoinToken},
		{"ListManyParents", testListManyParents},
		{"BundleAuthorities", testBundleAuthorities},
		{"RevisionsTrackChanges", testRevisions},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			t.Cleanup(func() { s.Close() })
			tc.fn(t, s)
		})
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func sampleEntry(id string) store.Entry {
	return store.Entry{
		ID:          id,
		SPIFFEID:    "spiffe://example.org/ns/default/sa/" + id,
		ParentID:    "spiffe://example.org/trustmesh/agent/join_token/abc",
		Selectors:   []store.Selector{{Type: "unix", Value: "uid:1000"}, {Type: "unix", Value: "gid:1000"}},
		X509SVIDTTL: 90 * time.Second,
		JWTSVIDTTL:  30 * time.Second,
		DNSNames:    []string{"api.example.org", "api"},
		Admin:       true,
		Hint:        "external",
		ExpiresAt:   time.Date(2030, 1, 2, 3, 4, 5, 6000, time.UTC),
	}
}

func mustCreate(t *testing.T, s store.Store, e store.Entry) store.Entry {
	t.Helper()
	out, err := s.CreateEntry(ctx(t), e)
	if err != nil {
		t.Fatalf("CreateEntry(%s): %v", e.ID, err)
	}
	return out
}

func assertEntryEqual(t *testing.T, got, want store.Entry) {
	t.Helper()
	if fmt.Sprint(got.Selectors) != fmt.Sprint(want.Selectors) ||
		fmt.Sprint(got.DNSNames) != fmt.Sprint(want.DNSNames) ||
		got.ID != want.ID || got.SPIFFEID != want.SPIFFEID || got.ParentID != want.ParentID ||
		got.X509SVIDTTL != want.X509SVIDTTL || got.JWTSVIDTTL != want.JWTSVIDTTL ||
		got.Admin != want.Admin || got.Hint != want.Hint || !got.ExpiresAt.Equal(want.ExpiresAt) ||
		got.Revision != want.Revision || !got.CreatedAt.Equal(want.CreatedAt) || !got.UpdatedAt.Equal(want.UpdatedAt) {
		t.Fatalf("entry mismatch:\n got  %+v\n want %+v", got, want)
	}
}

func testEntryRoundTrip(t *testing.T, s store.Store) {
	created := mustCreate(t, s, sampleEntry("e1"))
	if created.Revision != 1 || created.CreatedAt.IsZero() {
		t.Fatalf("created entry: revision %d, created_at %v", created.Revision, created.CreatedAt)
	}
	// Selectors come back sorted whatever the insertion order.
	if created.Selectors[0].Value != "gid:1000" {
		t.Fatalf("selectors not sorted: %v", created.Selectors)
	}
	got, err := s.GetEntry(ctx(t), "e1")
	if err != nil {
		t.Fatal(err)
	}
	assertEntryEqual(t, got, created)

	// Zero values survive too.
	bare := store.Entry{ID: "bare", SPIFFEID: "spiffe://example.org/bare", ParentID: "spiffe://example.org/p",
		Selectors: []store.Selector{{Type: "unix", Value: "uid:0"}}}
	bareOut := mustCreate(t, s, bare)
	got, err = s.GetEntry(ctx(t), "bare")
	if err != nil {
		t.Fatal(err)
	}
	assertEntryEqual(t, got, bareOut)
	if !got.ExpiresAt.IsZero() || got.DNSNames != nil || got.Admin {
		t.Fatalf("zero fields not preserved: %+v", got)
	}

	if _, err := s.GetEntry(ctx(t), "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetEntry(missing) = %v, want ErrNotFound", err)
	}
}

func testEntryDuplicateRejected(t *testing.T, s store.Store) {
	mustCreate(t, s, sampleEntry("e1"))
	dup := sampleEntry("e2")
	dup.SPIFFEID = "spiffe://example.org/ns/default/sa/e1"
	// Same selectors in another order are the same set.
	dup.Selectors = []store.Selector{{Type: "unix", Value: "gid:1000"}, {Type: "unix", Value: "uid:1000"}}
	if _, err := s.CreateEntry(ctx(t), dup); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("duplicate entry: err = %v, want ErrAlreadyExists", err)
	}
	sameID := sampleEntry("e1")
	sameID.SPIFFEID = "spiffe://example.org/other"
	if _, err := s.CreateEntry(ctx(t), sameID); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("duplicate id: err = %v, want ErrAlreadyExists", err)
	}
	// A different selector set is a different entry.
	other := dup
	other.Selectors = []store.Selector{{Type: "unix", Value: "uid:1000"}}
	mustCreate(t, s, other)
}

func testEntryList(t *testing.T, s store.Store) {
	a := sampleEntry("a")
	b := sampleEntry("b")
	b.ParentID = "spiffe://example.org/other-parent"
	c := sampleEntry("c")
	c.SPIFFEID = a.SPIFFEID
	c.Selectors = []store.Selector{{Type: "unix", Value: "uid:5"}}
	for _, e := range []store.Entry{a, b, c} {
		mustCreate(t, s, e)
	}
	all, err := s.ListEntries(ctx(t), store.EntryFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(all); got != "[a c b]" {
		t.Fatalf("list all = %s, want [a c b] (ordered by SPIFFE ID, then id)", got)
	}
	byParent, err := s.ListEntries(ctx(t), store.EntryFilter{ParentIDs: []string{b.ParentID}})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(byParent); got != "[b]" {
		t.Fatalf("by parent = %s", got)
	}
	byParents, err := s.ListEntries(ctx(t), store.EntryFilter{ParentIDs: []string{b.ParentID, a.ParentID}})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(byParents); got != "[a c b]" {
		t.Fatalf("by parents = %s", got)
	}
	byID, err := s.ListEntries(ctx(t), store.EntryFilter{SPIFFEID: a.SPIFFEID, ParentIDs: []string{a.ParentID}})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(byID); got != "[a c]" {
		t.Fatalf("by SPIFFE ID = %s", got)
	}
}

func ids(es []store.Entry) string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return fmt.Sprint(out)
}

func testEntryUpdate(t *testing.T, s store.Store) {
	created := mustCreate(t, s, sampleEntry("e1"))
	upd := created
	upd.Revision = 0 // unconditional
	upd.Selectors = []store.Selector{{Type: "unix", Value: "uid:7"}}
	upd.DNSNames = nil
	upd.Admin = false
	upd.X509SVIDTTL = 10 * time.Second
	upd.ExpiresAt = time.Time{}
	out, err := s.UpdateEntry(ctx(t), upd)
	if err != nil {
		t.Fatal(err)
	}
	if out.Revision != 2 || !out.CreatedAt.Equal(created.CreatedAt) || out.UpdatedAt.Before(created.UpdatedAt) {
		t.Fatalf("update bookkeeping wrong: %+v", out)
	}
	got, err := s.GetEntry(ctx(t), "e1")
	if err != nil {
		t.Fatal(err)
	}
	assertEntryEqual(t, got, out)

	missing := sampleEntry("nope")
	if _, err := s.UpdateEntry(ctx(t), missing); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update missing: %v", err)
	}
	// Updating into another entry's identity triple is a duplicate.
	other := mustCreate(t, s, sampleEntry("e2"))
	other.SPIFFEID, other.ParentID, other.Selectors = out.SPIFFEID, out.ParentID, out.Selectors
	other.Revision = 0
	if _, err := s.UpdateEntry(ctx(t), other); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("update into duplicate: %v", err)
	}
}

func testEntryUpdateStaleRevision(t *testing.T, s store.Store) {
	created := mustCreate(t, s, sampleEntry("e1"))
	first := created
	first.Hint = "first"
	if _, err := s.UpdateEntry(ctx(t), first); err != nil {
		t.Fatal(err)
	}
	stale := created // still revision 1
	stale.Hint = "stale"
	if _, err := s.UpdateEntry(ctx(t), stale); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale update: err = %v, want ErrConflict", err)
	}
	got, _ := s.GetEntry(ctx(t), "e1")
	if got.Hint != "first" {
		t.Fatalf("stale update overwrote: hint %q", got.Hint)
	}
}

func testEntryDelete(t *testing.T, s store.Store) {
	created := mustCreate(t, s, sampleEntry("e1"))
	deleted, err := s.DeleteEntry(ctx(t), "e1")
	if err != nil {
		t.Fatal(err)
	}
	assertEntryEqual(t, deleted, created)
	if _, err := s.GetEntry(ctx(t), "e1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if _, err := s.DeleteEntry(ctx(t), "e1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	// The identity triple is free again.
	mustCreate(t, s, sampleEntry("e1"))
}

// testEntryConcurrentCreate races writers creating the same and distinct
// entries: exactly one of each duplicate group wins, none is lost.
func testEntryConcurrentCreate(t *testing.T, s store.Store) {
	const writers, perWriter = 4, 10
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		dupWins  int
		failures []error
	)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				e := sampleEntry(fmt.Sprintf("w%d-%d", w, i))
				_, err := s.CreateEntry(context.Background(), e)
				dup := sampleEntry(fmt.Sprintf("dup-%d-%d", w, i))
				dup.SPIFFEID = fmt.Sprintf("spiffe://example.org/dup/%d", i)
				_, dupErr := s.CreateEntry(context.Background(), dup)
				mu.Lock()
				if err != nil {
					failures = append(failures, err)
				}
				switch {
				case dupErr == nil:
					dupWins++
				case !errors.Is(dupErr, store.ErrAlreadyExists):
					failures = append(failures, dupErr)
				}
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("concurrent creates failed: %v", failures)
	}
	if dupWins != perWriter {
		t.Fatalf("duplicate groups: %d winners, want exactly %d", dupWins, perWriter)
	}
	all, err := s.ListEntries(ctx(t), store.EntryFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != writers*perWriter+perWriter {
		t.Fatalf("stored %d entries, want %d", len(all), writers*perWriter+perWriter)
	}
}

func testJoinTokenSingleUse(t *testing.T, s store.Store) {
	tok := store.JoinToken{ID: "t1", SecretHash: []byte{1, 2, 3}, ExpiresAt: time.Now().Add(time.Hour).Truncate(time.Microsecond)}
	if err := s.CreateJoinToken(ctx(t), tok); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateJoinToken(ctx(t), tok); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("duplicate token id: %v", err)
	}
	got, err := s.GetJoinToken(ctx(t), "t1")
	if err != nil {
		t.Fatal(err)
	}
	if string(got.SecretHash) != string(tok.SecretHash) || !got.ExpiresAt.Equal(tok.ExpiresAt) {
		t.Fatalf("token round trip: %+v", got)
	}
	// Many concurrent redeemers: exactly one deletes the row.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.DeleteJoinToken(context.Background(), "t1")
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				wins++
			} else if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("redeem: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("token redeemed %d times, want exactly once", wins)
	}
	if _, err := s.GetJoinToken(ctx(t), "t1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("token after redemption: %v", err)
	}
}

func testJoinTokenPrune(t *testing.T, s store.Store) {
	now := time.Now()
	for i, exp := range []time.Time{now.Add(-time.Hour), now.Add(-time.Minute), now.Add(time.Hour)} {
		if err := s.CreateJoinToken(ctx(t), store.JoinToken{ID: fmt.Sprint("t", i), SecretHash: []byte{byte(i)}, ExpiresAt: exp}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.PruneJoinTokens(ctx(t), now)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("pruned %d tokens, want 2", n)
	}
	if _, err := s.GetJoinToken(ctx(t), "t2"); err != nil {
		t.Fatalf("live token pruned: %v", err)
	}
}

func testAgentLifecycle(t *testing.T, s store.Store) {
	id := "spiffe://example.org/trustmesh/agent/join_token/t1"
	notAfter := time.Now().Add(time.Hour).Truncate(time.Microsecond).UTC()
	a, err := s.AttestAgent(ctx(t), store.Agent{SPIFFEID: id, AttestationType: "join_token",
		Selectors: []store.Selector{{Type: "join_token", Value: "t1"}}, CertSerial: "01", CertNotAfter: notAfter}, "")
	if err != nil {
		t.Fatal(err)
	}
	if a.CertSerial != "01" || !a.CertNotAfter.Equal(notAfter) || a.Banned || a.CreatedAt.IsZero() || len(a.Selectors) != 1 {
		t.Fatalf("attested agent: %+v", a)
	}
	// Re-attestation replaces the certificate, keeps created_at.
	again, err := s.AttestAgent(ctx(t), store.Agent{SPIFFEID: id, AttestationType: "join_token", CertSerial: "02", CertNotAfter: notAfter}, "")
	if err != nil {
		t.Fatal(err)
	}
	if again.CertSerial != "02" || !again.CreatedAt.Equal(a.CreatedAt) {
		t.Fatalf("re-attested agent: %+v", again)
	}
	list, err := s.ListAgents(ctx(t))
	if err != nil || len(list) != 1 {
		t.Fatalf("ListAgents = %v, %v", list, err)
	}
	if _, err := s.DeleteAgent(ctx(t), id); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetAgent(ctx(t), id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("evicted agent still present: %v", err)
	}
	if _, err := s.DeleteAgent(ctx(t), id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second evict: %v", err)
	}
	// Evicted agents may attest again.
	if _, err := s.AttestAgent(ctx(t), store.Agent{SPIFFEID: id, AttestationType: "join_token", CertSerial: "03"}, ""); err != nil {
		t.Fatalf("re-attest after evict: %v", err)
	}
}

func testAgentBanIsSticky(t *testing.T, s store.Store) {
	id := "spiffe://example.org/trustmesh/agent/x509pop/abc"
	if _, err := s.BanAgent(ctx(t), id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ban unknown agent: %v", err)
	}
	if _, err := s.AttestAgent(ctx(t), store.Agent{SPIFFEID: id, AttestationType: "x509pop", CertSerial: "01"}, ""); err != nil {
		t.Fatal(err)
	}
	banned, err := s.BanAgent(ctx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if !banned.Banned || banned.CertSerial != "" {
		t.Fatalf("banned agent: %+v", banned)
	}
	if _, err := s.AttestAgent(ctx(t), store.Agent{SPIFFEID: id, AttestationType: "x509pop", CertSerial: "02"}, ""); !errors.Is(err, store.ErrBanned) {
		t.Fatalf("banned agent re-attest: %v", err)
	}
	got, _ := s.GetAgent(ctx(t), id)
	if !got.Banned || got.CertSerial != "" {
		t.Fatalf("ban not sticky: %+v", got)
	}
	if err := s.RenewAgentCert(ctx(t), id, "", "03", time.Now()); !errors.Is(err, store.ErrBanned) {
		t.Fatalf("banned agent renew: %v", err)
	}
	// Evicting a banned agent lifts the ban (as in SPIRE: delete the record).
	if _, err := s.DeleteAgent(ctx(t), id); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AttestAgent(ctx(t), store.Agent{SPIFFEID: id, AttestationType: "x509pop", CertSerial: "04"}, ""); err != nil {
		t.Fatalf("attest after unban: %v", err)
	}
}

func testAgentRenew(t *testing.T, s store.Store) {
	id := "spiffe://example.org/trustmesh/agent/join_token/r"
	if _, err := s.AttestAgent(ctx(t), store.Agent{SPIFFEID: id, AttestationType: "join_token", CertSerial: "01"}, ""); err != nil {
		t.Fatal(err)
	}
	serials := func() (string, string) {
		a, err := s.GetAgent(ctx(t), id)
		if err != nil {
			t.Fatal(err)
		}
		return a.CertSerial, a.PrevCertSerial
	}
	if err := s.RenewAgentCert(ctx(t), id, "01", "02", time.Now()); err != nil {
		t.Fatal(err)
	}
	if cur, prev := serials(); cur != "02" || prev != "01" {
		t.Fatalf("after renewal: current %q previous %q, want 02 and 01", cur, prev)
	}
	// The answer was lost: the agent renews again with 01, still valid.
	if err := s.RenewAgentCert(ctx(t), id, "01", "03", time.Now()); err != nil {
		t.Fatalf("renew with the pending previous certificate: %v", err)
	}
	if cur, prev := serials(); cur != "03" || prev != "01" {
		t.Fatalf("after retried renewal: current %q previous %q, want 03 and 01", cur, prev)
	}
	// 02 was never delivered: it is neither current nor previous.
	if err := s.RenewAgentCert(ctx(t), id, "02", "04", time.Now()); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("renew with a superseded serial: %v", err)
	}
	// The agent uses 03: 01 is retired.
	if err := s.ConfirmAgentCert(ctx(t), id, "03"); err != nil {
		t.Fatal(err)
	}
	if cur, prev := serials(); cur != "03" || prev != "" {
		t.Fatalf("after confirmation: current %q previous %q", cur, prev)
	}
	if err := s.RenewAgentCert(ctx(t), id, "01", "05", time.Now()); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("renew with a retired serial: %v", err)
	}
	if err := s.RenewAgentCert(ctx(t), "spiffe://example.org/nobody", "01", "02", time.Now()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("renew unknown: %v", err)
	}
}

// testAttestConsumesJoinToken: the token and the agent record change
// together; a token already gone means no agent.
func testAttestConsumesJoinToken(t *testing.T, s store.Store) {
	if err := s.CreateJoinToken(ctx(t), store.JoinToken{ID: "tok", SecretHash: []byte{1}, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	a := store.Agent{SPIFFEID: "spiffe://example.org/trustmesh/agent/join_token/tok", AttestationType: "join_token", CertSerial: "01"}
	if _, err := s.AttestAgent(ctx(t), a, "tok"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetJoinToken(ctx(t), "tok"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("token survived attestation: %v", err)
	}
	b := a
	b.SPIFFEID = "spiffe://example.org/trustmesh/agent/join_token/other"
	if _, err := s.AttestAgent(ctx(t), b, "tok"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("attest with a used token: %v", err)
	}
	if _, err := s.GetAgent(ctx(t), b.SPIFFEID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("agent recorded without a token: %v", err)
	}
}

// testListManyParents: parent sets larger than one query's bind limit.
func testListManyParents(t *testing.T, s store.Store) {
	var parents []string
	for i := 0; i < 1200; i++ {
		parents = append(parents, fmt.Sprintf("spiffe://example.org/p/%d", i))
	}
	for _, i := range []int{3, 700, 1199} {
		e := sampleEntry(fmt.Sprint("e", i))
		e.ParentID = parents[i]
		mustCreate(t, s, e)
	}
	got, err := s.ListEntries(ctx(t), store.EntryFilter{ParentIDs: parents})
	if err != nil {
		t.Fatal(err)
	}
	if ids(got) != "[e1199 e3 e700]" {
		t.Fatalf("entries under 1200 parents = %s", ids(got))
	}
}

func testBundleAuthorities(t *testing.T, s store.Store) {
	b, err := s.FetchBundle(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(b.X509Authorities) != 0 || len(b.JWTKeys) != 0 {
		t.Fatalf("new store has authorities: %+v", b)
	}
	seq0 := b.Sequence
	now := time.Now()
	old := store.X509Authority{CertDER: []byte("old-ca"), NotAfter: now.Add(-time.Minute)}
	cur := store.X509Authority{CertDER: []byte("cur-ca"), NotAfter: now.Add(time.Hour)}
	for _, a := range []store.X509Authority{old, cur, cur} { // cur twice: idempotent
		if err := s.AddX509Authority(ctx(t), a); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddJWTKey(ctx(t), store.JWTKey{KeyID: "k-old", PublicKeyDER: []byte("pk1"), NotAfter: now.Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddJWTKey(ctx(t), store.JWTKey{KeyID: "k-cur", PublicKeyDER: []byte("pk2"), NotAfter: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	b, err = s.FetchBundle(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(b.X509Authorities) != 2 || len(b.JWTKeys) != 2 {
		t.Fatalf("bundle = %d CAs, %d keys; want 2, 2", len(b.X509Authorities), len(b.JWTKeys))
	}
	if b.Sequence != seq0+4 {
		t.Fatalf("sequence = %d, want %d (one bump per change, none for the duplicate)", b.Sequence, seq0+4)
	}
	n, err := s.PruneBundle(ctx(t), now)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("pruned %d, want 2", n)
	}
	b, err = s.FetchBundle(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(b.X509Authorities) != 1 || string(b.X509Authorities[0].CertDER) != "cur-ca" ||
		len(b.JWTKeys) != 1 || b.JWTKeys[0].KeyID != "k-cur" || string(b.JWTKeys[0].PublicKeyDER) != "pk2" {
		t.Fatalf("after prune: %+v", b)
	}
	if b.Sequence != seq0+5 {
		t.Fatalf("sequence after prune = %d, want %d", b.Sequence, seq0+5)
	}
	if n, _ := s.PruneBundle(ctx(t), now); n != 0 {
		t.Fatalf("second prune removed %d", n)
	}
}

// testRevisions: every change an agent's authorization depends on bumps the
// registry revision; reads do not; bundle changes bump the bundle sequence.
func testRevisions(t *testing.T, s store.Store) {
	rev := func() (int64, uint64) {
		t.Helper()
		r, b, err := s.Revisions(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		return r, b
	}
	r0, b0 := rev()
	step := func(what string, change func() error) {
		t.Helper()
		before, _ := rev()
		if err := change(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if after, _ := rev(); after <= before {
			t.Fatalf("%s did not bump the registry revision (%d -> %d)", what, before, after)
		}
	}
	e := sampleEntry("e1")
	step("create entry", func() error { _, err := s.CreateEntry(ctx(t), e); return err })
	step("update entry", func() error { _, err := s.UpdateEntry(ctx(t), e); return err })
	step("delete entry", func() error { _, err := s.DeleteEntry(ctx(t), "e1"); return err })
	id := "spiffe://example.org/trustmesh/agent/x509pop/rev"
	step("attest agent", func() error {
		_, err := s.AttestAgent(ctx(t), store.Agent{SPIFFEID: id, AttestationType: "x509pop"}, "")
		return err
	})
	step("ban agent", func() error { _, err := s.BanAgent(ctx(t), id); return err })
	step("evict agent", func() error { _, err := s.DeleteAgent(ctx(t), id); return err })
	before, _ := rev()
	_, _ = s.ListEntries(ctx(t), store.EntryFilter{})
	_, _ = s.ListAgents(ctx(t))
	if _, err := s.CreateEntry(ctx(t), e); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateEntry(ctx(t), e); err == nil {
		t.Fatal("duplicate accepted")
	}
	if after, _ := rev(); after != before+1 {
		t.Fatalf("reads or a failed create changed the revision: %d -> %d", before, after)
	}
	if err := s.AddJWTKey(ctx(t), store.JWTKey{KeyID: "k", PublicKeyDER: []byte{1}, NotAfter: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if r, b := rev(); b <= b0 || r < r0 {
		t.Fatalf("bundle change: sequence %d -> %d", b0, b)
	}
}
