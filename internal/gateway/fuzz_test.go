package gateway

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/trustmesh/trustmesh/internal/configfile"
)

// FuzzConfig: no config file makes decoding or validation panic.
func FuzzConfig(f *testing.F) {
	f.Add([]byte("listen: 127.0.0.1:4180\nexternal_url: http://127.0.0.1:4180\nroutes: [{name: a, upstream: 'http://x:1', allow: {authenticated: true}}]\n"))
	f.Add([]byte("identity_providers: [{name: corp, issuer: 'http://127.0.0.1/x', client_id: a, client_secret: b}]\nsession: {store: 'redis://h:1/2', idle_timeout: 1m}\n"))
	f.Add([]byte("routes:\n  - name: r\n    policy: [a, b]\n    host: '*.example.com'\n"))
	f.Add([]byte("bearer_tokens: [{issuer: 'https://i', audiences: [a], leeway: 5s, algorithms: [HS256]}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c Config
		if err := configfile.Decode(data, &c); configfile.Fatal(err) {
			return
		}
		_, _ = c.Resolve()
	})
}

// FuzzSessionCookie: any cookie value either parses to a 32-byte secret
// or is refused; parsing never panics.
func FuzzSessionCookie(f *testing.F) {
	_, v, _ := newSessionID()
	f.Add(v)
	f.Add("")
	f.Add(strings.Repeat("A", 43))
	f.Add(strings.Repeat("=", 44))
	f.Fuzz(func(t *testing.T, v string) {
		id, ok := parseSessionCookie(v)
		if ok && (len(id.secret) != cookieSecretLen || len(id.key) != 64) {
			t.Fatalf("parsed %q to a %d-byte secret", v, len(id.secret))
		}
		if ok {
			// A sealed record opens only with its own cookie.
			sealed, err := id.sealData(&sessionData{Subject: "s"})
			if err != nil {
				t.Fatal(err)
			}
			other, _, _ := newSessionID()
			if _, err := other.openData(sealed); err == nil {
				t.Fatal("a record opened with another cookie")
			}
		}
	})
}

// FuzzRedirect: whatever rd is, an accepted one is an absolute http(s)
// URL to an allowed host.
func FuzzRedirect(f *testing.F) {
	g := &Gateway{set: Settings{
		ExternalURL:            &url.URL{Scheme: "https", Host: "gw.example.com"},
		Routes:                 []Route{{Name: "a", Host: "app.example.com"}, {Name: "w", Host: "*.tools.example.com"}},
		AllowedRedirectDomains: []string{".corp.example.com", "exact.example.net"},
	}}
	base := &url.URL{Scheme: "https", Host: "gw.example.com"}
	for _, s := range []string{"/", "/a?b=c#d", "//evil", "/\\evil", "https://evil", "https://app.example.com/x", "https://x.tools.example.com",
		"https://a@app.example.com", "javascript:x", "https://app.example.com.evil", "http://app.example.com/", "/%2f%2fevil", "https://exact.example.net/"} {
		f.Add(s)
	}
	allowed := func(host string) bool {
		return host == "gw.example.com" || host == "app.example.com" || host == "exact.example.net" ||
			strings.HasSuffix(host, ".tools.example.com") || strings.HasSuffix(host, ".corp.example.com")
	}
	f.Fuzz(func(t *testing.T, rd string) {
		out, ok := g.safeRedirect(rd, base)
		if !ok {
			return
		}
		u, err := url.Parse(out)
		if err != nil || u.Scheme != "https" || u.User != nil || !allowed(strings.ToLower(u.Hostname())) {
			t.Fatalf("rd %q accepted as %q", rd, out)
		}
		if strings.ContainsAny(out, "\\\r\n\t ") {
			t.Fatalf("rd %q accepted as %q with a control character", rd, out)
		}
		// What a browser does with the Location header must agree.
		req, _ := http.NewRequest(http.MethodGet, "https://gw.example.com/", nil)
		if loc, err := req.URL.Parse(out); err != nil || !allowed(strings.ToLower(loc.Hostname())) {
			t.Fatalf("rd %q resolves to %v", rd, loc)
		}
	})
}

// FuzzBearerHeader: the Authorization header parser never panics and only
// takes the Bearer scheme.
func FuzzBearerHeader(f *testing.F) {
	f.Add("Bearer abc")
	f.Add("bearer  x.y.z ")
	f.Add("Basic dXNlcjpwYXNz")
	f.Add("Bearer")
	f.Fuzz(func(t *testing.T, v string) {
		r, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
		r.Header.Set("Authorization", v)
		tok, ok := bearerToken(r)
		if ok && !strings.EqualFold(strings.TrimSpace(r.Header.Get("Authorization"))[:6], "bearer") {
			t.Fatalf("%q taken as a bearer token %q", v, tok)
		}
	})
}
