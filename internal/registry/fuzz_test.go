package registry

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FuzzParseWorkloadID: never panics, and anything accepted round-trips and
// stays inside the trust domain and outside the reserved namespace.
func FuzzParseWorkloadID(f *testing.F) {
	for _, s := range []string{"spiffe://example.org/a", "spiffe://example.org", "spiffe://example.org/trustmesh/x",
		"spiffe://other.org/a", "spiffe://example.org/a/../b", "spiffe://example.org/%41", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseWorkloadID(td, s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("accepted %q but it renders as %q", s, id.String())
		}
		if id.TrustDomain() != td || id.Path() == "" || strings.HasPrefix(id.Path()+"/", ReservedPathPrefix) {
			t.Fatalf("accepted %q outside the rules", s)
		}
		if _, err := spiffeid.FromString(id.String()); err != nil {
			t.Fatalf("accepted %q that go-spiffe rejects: %v", s, err)
		}
	})
}

// FuzzParseSelector: never panics; accepted selectors round-trip.
func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{"unix:uid:1000", "k8s:ns:default", ":", "a:", ":b", "A:b", "unix:\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelector(s)
		if err != nil {
			return
		}
		if sel.String() != s {
			t.Fatalf("selector %q renders as %q", s, sel.String())
		}
		again, err := ParseSelector(sel.String())
		if err != nil || again != sel {
			t.Fatalf("round trip of %q: %+v, %v", s, again, err)
		}
	})
}

// FuzzParseJoinToken: never panics; accepted tokens have the documented shape.
func FuzzParseJoinToken(f *testing.F) {
	f.Add("0011223344556677.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("x.y")
	f.Fuzz(func(t *testing.T, s string) {
		id, secret, err := ParseJoinToken(s)
		if err != nil {
			return
		}
		if len(id) != 16 || len(secret) != 43 {
			t.Fatalf("accepted %q with id %q secret %q", s, id, secret)
		}
	})
}
