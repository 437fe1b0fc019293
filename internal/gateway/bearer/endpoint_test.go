package bearer

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

func TestCheckEndpoint(t *testing.T) {
	for raw, ok := range map[string]bool{
		"https://idp.example.com/keys": true, "http://127.0.0.1:5556/keys": true, "http://[::1]/k": true, "http://localhost/k": true,
		"http://idp.example.com/keys": false, "http://10.0.0.1/keys": false, "ftp://127.0.0.1/k": false, "/keys": false,
		"https://user:pw@idp.example.com/": false, "": false,
	} {
		if err := CheckEndpoint(raw); (err == nil) != ok {
			t.Errorf("CheckEndpoint(%q) = %v, want ok %v", raw, err, ok)
		}
	}
}

// TestDiscoveredPlainHTTPJWKSRefused: an issuer (on loopback, so allowed)
// whose discovery document names a plain-http jwks_uri elsewhere gets no
// key fetched from it. The document is served by hand: it is the attack
// input, which no real provider would emit.
func TestDiscoveredPlainHTTPJWKSRefused(t *testing.T) {
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": srv.URL, "jwks_uri": "http://keys.example.com/jwks"})
	}))
	defer srv.Close()
	v, err := New([]Issuer{{Issuer: srv.URL, Audiences: []string{"my-application"}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := keys(t)
	_, err = v.Verify(context.Background(), sign(t, jose.RS256, key, "k", goodClaims(srv.URL, time.Now())))
	if e, ok := AsError(err); !ok || e.Reason != ReasonKeysUnavailable || !strings.Contains(e.Error(), "plain http") {
		t.Fatalf("plain-http jwks_uri: %v", err)
	}
}
