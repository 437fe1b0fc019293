package bearer

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// FuzzVerify: no input panics, and nothing not signed by the issuer's key
// verifies.
func FuzzVerify(f *testing.F) {
	p := startIdP(f)
	now := time.Now()
	good := sign(f, jose.RS256, p.key, p.kid, goodClaims(p.m.Issuer(), now))
	parts := strings.Split(good, ".")
	f.Add(good)
	f.Add(parts[0] + "." + parts[1] + ".")
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("a.b.c")
	f.Add("")
	v, err := New([]Issuer{{Issuer: p.m.Issuer(), Audiences: []string{"my-application"}}}, Options{CacheSize: -1})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		tok, err := v.Verify(context.Background(), raw)
		if err == nil {
			if raw != good {
				// Only re-encodings of the good token's signed bytes can
				// verify; the claims must then be the good token's.
				if tok.Subject != "user-1" {
					t.Fatalf("a token not signed by the issuer verified: %q", raw)
				}
			}
			return
		}
		if _, ok := AsError(err); !ok {
			t.Fatalf("untyped error: %v", err)
		}
	})
}
