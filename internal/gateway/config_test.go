package gateway

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/configfile"
)

// minimalConfig is a gateway configuration that Resolve accepts; each
// case of TestResolveRefuses breaks one thing in it.
func minimalConfig() Config {
	return Config{
		ExternalURL: "https://gw.example.com",
		IdentityProviders: []ProviderConfig{{
			Name: "corp", Issuer: "https://idp.example.com", ClientID: "app", ClientSecret: "s3cret",
		}},
		Routes: []RouteConfig{{Name: "tool", Upstream: "http://127.0.0.1:8080", Allow: &AllowConfig{Groups: []string{"eng"}}}},
	}
}

func TestResolveAcceptsMinimal(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"as is":                        func(*Config) {},
		"__Host- on https":             func(c *Config) { c.Session.CookieName = "__Host-tm" },
		"__Secure- with cookie_domain": func(c *Config) { c.Session.CookieName = "__Secure-tm"; c.Session.CookieDomain = ".example.com" },
		"loopback http issuer":         func(c *Config) { c.IdentityProviders[0].Issuer = "http://127.0.0.1:5556/dex" },
	} {
		c := minimalConfig()
		mutate(&c)
		if _, err := c.Resolve(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestResolveRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"__Host- over http", func(c *Config) { c.ExternalURL = "http://127.0.0.1:4180"; c.Session.CookieName = "__Host-tm" }, "needs an https external_url"},
		{"__secure- (any case) over http", func(c *Config) { c.ExternalURL = "http://127.0.0.1:4180"; c.Session.CookieName = "__secure-tm" }, "needs an https external_url"},
		{"__Host- with a domain", func(c *Config) { c.Session.CookieName = "__Host-tm"; c.Session.CookieDomain = ".example.com" }, "cannot have session.cookie_domain"},
		{"cookie name with a space", func(c *Config) { c.Session.CookieName = "a b" }, "not a cookie name"},
		{"cookie_domain not a parent", func(c *Config) { c.Session.CookieDomain = "example.com" }, "want a parent domain"},
		{"cookie_domain elsewhere", func(c *Config) { c.Session.CookieDomain = ".example.org" }, "does not cover"},
		{"plain http issuer", func(c *Config) { c.IdentityProviders[0].Issuer = "http://idp.example.com" }, "plain http is refused"},
		{"plain http external_url", func(c *Config) { c.ExternalURL = "http://gw.example.com" }, "plain http outside loopback"},
		{"no openid scope", func(c *Config) { c.IdentityProviders[0].Scopes = []string{"email"} }, "must include openid"},
		{"idle longer than lifetime", func(c *Config) {
			c.Session.IdleTimeout = configfile.D(2 * time.Hour)
			c.Session.MaxLifetime = configfile.D(time.Hour)
		}, "longer than session.max_lifetime"},
	} {
		c := minimalConfig()
		tc.mutate(&c)
		_, err := c.Resolve()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// TestRelativeSQLiteStore: sqlite://sessions.db is next to the config
// file, also when --config itself is a relative path.
func TestRelativeSQLiteStore(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "conf"), 0o700); err != nil {
		t.Fatal(err)
	}
	yaml := `external_url: https://gw.example.com
identity_providers: [{name: corp, issuer: "https://idp.example.com", client_id: app, client_secret: s3cret}]
session: {store: "sqlite://sessions.db"}
routes: [{name: tool, upstream: "http://127.0.0.1:8080", allow: {groups: [eng]}}]
`
	if err := os.WriteFile(filepath.Join(dir, "conf", "gateway.yaml"), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	s, err := LoadSettings(filepath.Join("conf", "gateway.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := "sqlite://" + filepath.Join(dir, "conf", "sessions.db"); s.Store != want {
		t.Fatalf("store %q, want %q", s.Store, want)
	}
}

// TestPathHasPrefix: a route's path_prefix matches at segment
// boundaries, ';' and its escape included (normalized paths upper-case
// escapes).
func TestPathHasPrefix(t *testing.T) {
	for _, tc := range []struct {
		path, prefix string
		want         bool
	}{
		{"/admin", "/admin", true}, {"/admin/x", "/admin", true}, {"/admin;jsessionid=1", "/admin", true},
		{"/admin%3Bx", "/admin", true}, {"/adminx", "/admin", false}, {"/admi", "/admin", false},
		{"/api/v1", "/api/", true}, {"/api", "/api/", false}, {"/anything", "/", true},
	} {
		if got := pathHasPrefix(tc.path, tc.prefix); got != tc.want {
			t.Errorf("pathHasPrefix(%q, %q) = %v, want %v", tc.path, tc.prefix, got, tc.want)
		}
	}
}

// TestBearerAudienceOfLoginClientWarns: a bearer audience that is a login
// client's ID accepts that client's ID tokens; valid, but said. Whatever
// the audiences, a bearer issuer that is a login provider's, without
// token_types, lists the login clients whose ID tokens sign-out revokes
// (an ID token may carry the API's audience too).
func TestBearerAudienceOfLoginClientWarns(t *testing.T) {
	c := minimalConfig()
	c.BearerTokens = []BearerConfig{{Issuer: "https://idp.example.com", Audiences: []string{"api", "app"}}}
	set, err := c.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Warnings) != 1 || !strings.Contains(set.Warnings[0], "bearer_tokens[0]: audiences include identity provider corp's client_id") {
		t.Fatalf("warnings %q", set.Warnings)
	}
	if got := set.Bearer[0].LoginClientIDs; !slices.Equal(got, []string{"app"}) {
		t.Fatalf("login client IDs %q", got)
	}
	for name, tc := range map[string]struct {
		mutate       func(*Config)
		loginClients []string
	}{
		"typed tokens only":  {func(c *Config) { c.BearerTokens[0].TokenTypes = []string{"at+jwt"} }, nil},
		"the API's audience": {func(c *Config) { c.BearerTokens[0].Audiences = []string{"api"} }, []string{"app"}},
		"another issuer":     {func(c *Config) { c.BearerTokens[0].Issuer = "https://other.example.com" }, nil},
	} {
		c := minimalConfig()
		c.BearerTokens = []BearerConfig{{Issuer: "https://idp.example.com", Audiences: []string{"api", "app"}}}
		tc.mutate(&c)
		set, err := c.Resolve()
		if err != nil || len(set.Warnings) != 0 {
			t.Errorf("%s: %v %q", name, err, set.Warnings)
		} else if got := set.Bearer[0].LoginClientIDs; !slices.Equal(got, tc.loginClients) {
			t.Errorf("%s: login client IDs %q, want %q", name, got, tc.loginClients)
		}
	}
}

// TestRouteOrigin: a route's origin names its own host, over http(s),
// with nothing after; it is kept normalized (default port dropped).
func TestRouteOrigin(t *testing.T) {
	for _, tc := range []struct {
		host, origin, want string
		ok                 bool
	}{
		{"app.example.com", "https://app.example.com", "https://app.example.com", true},
		{"app.example.com", "https://APP.example.com:443/", "https://app.example.com", true},
		{"app.example.com", "https://app.example.com:8443", "https://app.example.com:8443", true},
		{"app.localhost", "http://app.localhost:4180", "http://app.localhost:4180", false}, // not loopback: app.localhost is a name
		{"127.0.0.1", "http://127.0.0.1:4180", "http://127.0.0.1:4180", true},
		{"app.example.com", "https://other.example.com", "", false},
		{"app.example.com", "https://app.example.com/path", "", false},
		{"app.example.com", "ftp://app.example.com", "", false},
		{"app.example.com", "http://app.example.com", "", false}, // http under an https external_url
		{"*.example.com", "https://a.example.com", "", false},
		{"*.example.com", "https://*.example.com:8443", "https://*.example.com:8443", true},
		{"app.example.com", "https://app.example.com:08443", "", false},
		{"app.example.com", "https://app.example.com:99999", "", false},
		{"", "https://app.example.com", "", false},
	} {
		c := minimalConfig()
		c.Routes[0].Host, c.Routes[0].Origin = tc.host, tc.origin
		set, err := c.Resolve()
		if tc.ok != (err == nil) {
			t.Errorf("host %q origin %q: %v", tc.host, tc.origin, err)
			continue
		}
		if err == nil && set.Routes[0].Origin != tc.want {
			t.Errorf("host %q origin %q: kept as %q, want %q", tc.host, tc.origin, set.Routes[0].Origin, tc.want)
		}
	}
}

// TestHandoffOrigin: where a hand-off for a host goes: its route's origin
// (a *.domain route's with the host in it; an exact route first), or
// external_url's scheme and port with the host. Two routes on one host
// must agree.
func TestHandoffOrigin(t *testing.T) {
	c := minimalConfig()
	c.ExternalURL = "https://gw.example.com:8443"
	c.Routes = []RouteConfig{
		{Name: "a", Host: "a.example.com", Upstream: "http://127.0.0.1:8080", Allow: &AllowConfig{Authenticated: true}, Origin: "https://a.example.com"},
		{Name: "apps", Host: "*.apps.example.com", Upstream: "http://127.0.0.1:8080", Allow: &AllowConfig{Authenticated: true}, Origin: "https://*.apps.example.com"},
		{Name: "x", Host: "x.apps.example.com", Upstream: "http://127.0.0.1:8080", Allow: &AllowConfig{Authenticated: true}, Origin: "https://x.apps.example.com:9443"},
		{Name: "b", Host: "b.example.com", Upstream: "http://127.0.0.1:8080", Allow: &AllowConfig{Authenticated: true}},
		{Name: "z", Host: "z.apps.example.com", Upstream: "http://127.0.0.1:8080", Allow: &AllowConfig{Authenticated: true}},
	}
	set, err := c.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	g := &Gateway{set: set}
	for host, want := range map[string]string{
		"a.example.com":      "https://a.example.com",
		"y.apps.example.com": "https://y.apps.example.com",
		"x.apps.example.com": "https://x.apps.example.com:9443",
		"b.example.com":      "https://b.example.com:8443",
		"z.apps.example.com": "https://z.apps.example.com:8443", // its own route, no origin: the default, not the *.apps one
	} {
		if got := g.handoffOrigin(host); got != want {
			t.Errorf("%s: %q, want %q", host, got, want)
		}
	}
	c.Routes = append(c.Routes, RouteConfig{Name: "a2", Host: "a.example.com", PathPrefix: "/two", Upstream: "http://127.0.0.1:8080", Allow: &AllowConfig{Authenticated: true}, Origin: "https://a.example.com:8443"})
	if _, err := c.Resolve(); err == nil || !strings.Contains(err.Error(), "another route on host") {
		t.Fatalf("two origins for one host: %v", err)
	}
}
