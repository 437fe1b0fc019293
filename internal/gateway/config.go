package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/trustmesh/trustmesh/internal/auditfile"
	"github.com/trustmesh/trustmesh/internal/configfile"
	"github.com/trustmesh/trustmesh/internal/gateway/assertion"
	"github.com/trustmesh/trustmesh/internal/gateway/bearer"
	"github.com/trustmesh/trustmesh/internal/gateway/session"
	"github.com/trustmesh/trustmesh/internal/policy"
)

// Defaults for `trustmesh gateway run`.
const (
	DefaultListen            = "127.0.0.1:4180"
	DefaultCookieName        = "_trustmesh_session"
	DefaultIdleTimeout       = 15 * time.Minute
	DefaultMaxLifetime       = 12 * time.Hour
	DefaultRefreshBefore     = time.Minute
	DefaultLoginTimeout      = 10 * time.Minute
	DefaultLeeway            = 30 * time.Second
	DefaultAssertionTTL      = 60 * time.Second
	DefaultHeaderReadTimeout = 10 * time.Second
	DefaultIdleConnTimeout   = 120 * time.Second
	DefaultUpstreamTimeout   = 60 * time.Second
	DefaultShutdownTimeout   = 15 * time.Second
	// DefaultTunnelIdleTimeout is Envoy's tcp_proxy idle_timeout default,
	// as the proxy's.
	DefaultTunnelIdleTimeout = time.Hour
	DefaultMaxHeaderBytes    = 32 << 10
	DefaultMaxBodyBytes      = 10 << 20
	DefaultMaxTokenBytes     = 16 << 10
	DefaultLoginsPerMinute   = 30
)

// Config is the gateway configuration as written in YAML. The keys of
// the issue (listen, external_url, identity_providers, bearer_tokens,
// session, routes and theirs) are fixed: external checks rely on them.
type Config struct {
	Listen            string           `yaml:"listen"`
	ExternalURL       string           `yaml:"external_url"`
	TLS               *TLSConfig       `yaml:"tls"`
	IdentityProviders []ProviderConfig `yaml:"identity_providers"`
	BearerTokens      []BearerConfig   `yaml:"bearer_tokens"`
	Session           SessionConfig    `yaml:"session"`
	Routes            []RouteConfig    `yaml:"routes"`
	Assertion         AssertionConfig  `yaml:"assertion"`
	// AllowedRedirectDomains are hosts (or ".example.com" for every
	// subdomain) that rd= may send the browser to, besides the gateway's
	// own host and the routes' hosts.
	AllowedRedirectDomains []string `yaml:"allowed_redirect_domains"`
	// TrustedProxies (IPs or CIDRs) may set X-Forwarded-For/-Proto/-Host
	// for the client's address and scheme (default loopback).
	TrustedProxies []string     `yaml:"trusted_proxies"`
	Limits         LimitsConfig `yaml:"limits"`
	AuditLog       string       `yaml:"audit_log"`
	MetricsAddr    string       `yaml:"metrics_addr"`
	LogLevel       string       `yaml:"log_level"`
	LogFormat      string       `yaml:"log_format"`
}

// TLSConfig makes the gateway terminate TLS itself.
type TLSConfig struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// ProviderConfig is one OIDC identity provider.
type ProviderConfig struct {
	Name             string   `yaml:"name"`
	Issuer           string   `yaml:"issuer"`
	ClientID         string   `yaml:"client_id"`
	ClientSecret     string   `yaml:"client_secret"`
	ClientSecretFile string   `yaml:"client_secret_file"`
	Scopes           []string `yaml:"scopes"`
	// Claims the identity headers come from (defaults sub, email, groups).
	UserClaim   string `yaml:"user_claim"`
	EmailClaim  string `yaml:"email_claim"`
	GroupsClaim string `yaml:"groups_claim"`
	// AllowUnverifiedEmail lets an email with email_verified=false match
	// emails/domains rules (default: it does not).
	AllowUnverifiedEmail bool `yaml:"allow_unverified_email"`
	// EndSessionURL overrides the discovered end_session_endpoint for
	// RP-initiated logout.
	EndSessionURL string `yaml:"end_session_url"`
}

// BearerConfig is one issuer whose JWTs APIs may present.
type BearerConfig struct {
	Issuer      string              `yaml:"issuer"`
	Audiences   []string            `yaml:"audiences"`
	JWKSURL     string              `yaml:"jwks_url"`
	Algorithms  []string            `yaml:"algorithms"`
	Leeway      configfile.Duration `yaml:"leeway"`
	UserClaim   string              `yaml:"user_claim"`
	EmailClaim  string              `yaml:"email_claim"`
	GroupsClaim string              `yaml:"groups_claim"`
	// AllowUnverifiedEmail lets a token's email match emails/domains rules
	// without email_verified=true (default: it does not; an access token
	// that carries no email_verified claim matches no email rule).
	AllowUnverifiedEmail bool `yaml:"allow_unverified_email"`
	// TokenTypes, when set, are the JOSE "typ" headers a token must carry:
	// [at+jwt] accepts only RFC 9068 JWT access tokens, so an ID token
	// of the same issuer and audience is refused (default: any typ, as
	// oauth2-proxy accepts ID tokens as bearer tokens).
	TokenTypes []string `yaml:"token_types"`
}

// SessionConfig is where sessions live and how long.
type SessionConfig struct {
	Store         string              `yaml:"store"`
	IdleTimeout   configfile.Duration `yaml:"idle_timeout"`
	MaxLifetime   configfile.Duration `yaml:"max_lifetime"`
	RefreshBefore configfile.Duration `yaml:"refresh_before"`
	LoginTimeout  configfile.Duration `yaml:"login_timeout"`
	CookieName    string              `yaml:"cookie_name"`
	// CookieDomain shares one login across subdomains (".example.com").
	CookieDomain string `yaml:"cookie_domain"`
}

// RouteConfig is one protected application.
type RouteConfig struct {
	Name             string       `yaml:"name"`
	Host             string       `yaml:"host"`
	PathPrefix       string       `yaml:"path_prefix"`
	Upstream         string       `yaml:"upstream"`
	IdentityProvider string       `yaml:"identity_provider"`
	Allow            *AllowConfig `yaml:"allow"`
	Policy           StringList   `yaml:"policy"`
	// PolicyNamespace and PolicyLabels are the destination the route's
	// policies select (default namespace "default", labels
	// {app: <route name>}).
	PolicyNamespace string            `yaml:"policy_namespace"`
	PolicyLabels    map[string]string `yaml:"policy_labels"`
	// UpstreamCAFile verifies an https:// upstream (default: system roots).
	UpstreamCAFile string `yaml:"upstream_ca_file"`
	// PreserveHost sends the client's Host upstream (default true).
	PreserveHost *bool `yaml:"preserve_host"`
	// Bearer accepts bearer JWTs on this route (default true when
	// bearer_tokens are configured).
	Bearer *bool `yaml:"bearer"`
	// Origin is where browsers reach this route's host (scheme://host, a
	// port if not the scheme's): the only place a session hand-off code is
	// sent. Default: external_url's scheme and port with the route's host.
	Origin string `yaml:"origin"`
}

// AllowConfig: the lists are ORed within a key and ANDed across keys; an
// empty list does not constrain.
type AllowConfig struct {
	Groups  []string `yaml:"groups"`
	Emails  []string `yaml:"emails"`
	Domains []string `yaml:"domains"`
	Scopes  []string `yaml:"scopes"`
	Users   []string `yaml:"users"`
	// Authenticated: any signed-in user (when no list is set).
	Authenticated bool `yaml:"authenticated"`
}

func (a *AllowConfig) empty() bool {
	return a == nil || len(a.Groups)+len(a.Emails)+len(a.Domains)+len(a.Scopes)+len(a.Users) == 0
}

// AssertionConfig is the signed identity handed to upstreams.
type AssertionConfig struct {
	SigningKeyFile string              `yaml:"signing_key_file"`
	TTL            configfile.Duration `yaml:"ttl"`
}

// LimitsConfig bounds what one client can hold.
type LimitsConfig struct {
	MaxHeaderBytes    int                 `yaml:"max_header_bytes"`
	MaxBodyBytes      int64               `yaml:"max_body_bytes"`
	MaxTokenBytes     int                 `yaml:"max_token_bytes"`
	HeaderReadTimeout configfile.Duration `yaml:"header_read_timeout"`
	IdleTimeout       configfile.Duration `yaml:"idle_timeout"`
	UpstreamTimeout   configfile.Duration `yaml:"upstream_timeout"`
	ShutdownTimeout   configfile.Duration `yaml:"shutdown_timeout"`
	// TunnelIdleTimeout closes a WebSocket in which nothing has moved
	// either way for that long.
	TunnelIdleTimeout configfile.Duration `yaml:"tunnel_idle_timeout"`
	// LoginsPerMinute bounds the logins one client (an IPv4 address, an
	// IPv6 /64) may start per minute: each is a pending ticket in the
	// session store until it completes or login_timeout passes. -1: no
	// limit.
	LoginsPerMinute int `yaml:"logins_per_minute"`
}

// StringList is a YAML string or list of strings.
type StringList []string

// UnmarshalYAML implements yaml.Unmarshaler.
func (l *StringList) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Value != "" {
			*l = StringList{n.Value}
		}
		return nil
	case yaml.SequenceNode:
		var v []string
		if err := n.Decode(&v); err != nil {
			return err
		}
		*l = v
		return nil
	}
	return fmt.Errorf("line %d: want a path or a list of paths", n.Line)
}

// Settings is the validated configuration.
type Settings struct {
	Listen                                                string
	ExternalURL                                           *url.URL
	TLSCert                                               string
	TLSKey                                                string
	Providers                                             []Provider
	Bearer                                                []BearerIssuer
	Store                                                 string
	IdleTimeout, MaxLifetime, RefreshBefore, LoginTimeout time.Duration
	CookieName                                            string
	CookieDomain                                          string
	Routes                                                []Route

	AssertionKeyFile string
	AssertionTTL     time.Duration

	AllowedRedirectDomains []string
	TrustedProxies         []netip.Prefix

	MaxHeaderBytes    int
	MaxBodyBytes      int64
	MaxTokenBytes     int
	HeaderReadTimeout time.Duration
	IdleConnTimeout   time.Duration
	UpstreamTimeout   time.Duration
	ShutdownTimeout   time.Duration
	TunnelIdleTimeout time.Duration
	LoginsPerMinute   int // 0: no limit

	AuditLog, MetricsAddr, LogLevel, LogFormat string

	// Warnings are settings that are valid but weaker than they look;
	// run logs them at start and validate prints them.
	Warnings []string
}

// Provider is a validated identity provider.
type Provider struct {
	Name, Issuer, ClientID, ClientSecret string
	Scopes                               []string
	UserClaim, EmailClaim, GroupsClaim   string
	AllowUnverifiedEmail                 bool
	EndSessionURL                        string
}

// BearerIssuer is a validated bearer_tokens entry.
type BearerIssuer struct {
	bearer.Issuer
	UserClaim, EmailClaim, GroupsClaim string
	AllowUnverifiedEmail               bool
	// LoginClientIDs are the client IDs of the login providers with this
	// issuer, when no token_types refuses ID tokens: those clients' ID
	// tokens may pass as bearer tokens, so sign-out revokes them, and a
	// bearer token whose aud names one of them is checked against the
	// revocations (a session store lookup; revoke.go).
	LoginClientIDs []string
}

// Route is a validated route.
type Route struct {
	Name            string
	Host            string // lowercase; "" any host; "*.example.com" any subdomain
	PathPrefix      string
	Upstream        *url.URL // nil: forward-auth only
	H2C             bool
	Provider        string // "" when the route takes bearer tokens only
	Allow           *AllowConfig
	PolicyPaths     []string
	PolicyNamespace string
	PolicyLabels    map[string]string
	UpstreamCAFile  string
	PreserveHost    bool
	Bearer          bool
	Origin          string // normalized (normalOrigin); "" the default
}

// LoadSettings decodes the file at path, applies override and validates,
// reporting every problem. Relative paths in the file are relative to it.
func LoadSettings(path string, override func(*Config)) (Settings, error) {
	var c Config
	var loadErr error
	if path != "" {
		if loadErr = configfile.Load(path, &c); configfile.Fatal(loadErr) {
			return Settings{}, loadErr
		}
		c.relativeTo(filepath.Dir(path))
	}
	if override != nil {
		override(&c)
	}
	s, err := c.Resolve()
	return s, errors.Join(loadErr, err)
}

func (c *Config) relativeTo(dir string) {
	fix := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	if c.TLS != nil {
		fix(&c.TLS.CertFile)
		fix(&c.TLS.KeyFile)
	}
	for i := range c.IdentityProviders {
		fix(&c.IdentityProviders[i].ClientSecretFile)
	}
	for i := range c.Routes {
		for j := range c.Routes[i].Policy {
			fix(&c.Routes[i].Policy[j])
		}
		fix(&c.Routes[i].UpstreamCAFile)
	}
	fix(&c.Assertion.SigningKeyFile)
	// sqlite://sessions.db is next to the config file. The store URL needs
	// an absolute path (sqlite:///…): with a relative --config the
	// directory's first element would read as the URL's host.
	if strings.HasPrefix(c.Session.Store, "sqlite://") && !strings.HasPrefix(c.Session.Store, "sqlite:///") {
		if abs, err := filepath.Abs(dir); err == nil {
			c.Session.Store = "sqlite://" + filepath.Join(abs, strings.TrimPrefix(c.Session.Store, "sqlite://"))
		}
	}
	if c.AuditLog != "" && c.AuditLog != "-" {
		fix(&c.AuditLog)
	}
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$`)

// isLoopbackHost reports whether a URL host (no port) is a loopback address.
func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(strings.Trim(h, "[]"))
	return err == nil && ip.IsLoopback()
}

// checkIssuer validates an issuer URL: https, or http on loopback only.
func checkIssuer(key, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%s %q: want an absolute https URL without query, fragment or userinfo", key, raw)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopbackHost(u.Hostname()) {
			return fmt.Errorf("%s %q: plain http is refused unless the issuer is on a loopback address", key, raw)
		}
	default:
		return fmt.Errorf("%s %q: want an https URL", key, raw)
	}
	return nil
}

// Resolve applies defaults and validates, reporting every problem.
func (c Config) Resolve() (Settings, error) {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	s := Settings{
		Listen:       orDefault(c.Listen, DefaultListen),
		Store:        orDefault(c.Session.Store, "memory"),
		CookieName:   orDefault(c.Session.CookieName, DefaultCookieName),
		CookieDomain: strings.ToLower(c.Session.CookieDomain),
		AuditLog:     c.AuditLog,
		MetricsAddr:  c.MetricsAddr,
		LogLevel:     strings.ToLower(orDefault(c.LogLevel, "info")),
		LogFormat:    strings.ToLower(orDefault(c.LogFormat, "text")),

		AssertionKeyFile: c.Assertion.SigningKeyFile,
		MaxHeaderBytes:   c.Limits.MaxHeaderBytes,
		MaxBodyBytes:     c.Limits.MaxBodyBytes,
		MaxTokenBytes:    c.Limits.MaxTokenBytes,
	}
	errs = append(errs, configfile.CheckLogging(s.LogLevel, s.LogFormat)...)
	if err := configfile.CheckHostPort("listen", s.Listen); err != nil {
		errs = append(errs, err)
	}
	if s.MetricsAddr != "" {
		if err := configfile.CheckHostPort("metrics_addr", s.MetricsAddr); err != nil {
			errs = append(errs, err)
		}
	}
	if c.TLS != nil {
		if c.TLS.CertFile == "" || c.TLS.KeyFile == "" {
			add("tls: set both cert_file and key_file")
		} else {
			for _, f := range []string{c.TLS.CertFile, c.TLS.KeyFile} {
				if _, err := os.Stat(f); err != nil {
					add("tls: %v", err)
				}
			}
		}
		s.TLSCert, s.TLSKey = c.TLS.CertFile, c.TLS.KeyFile
	}

	// external_url: where browsers reach the gateway; the OIDC callback is
	// external_url + /oauth2/callback.
	if c.ExternalURL == "" {
		scheme := "http"
		if s.TLSCert != "" {
			scheme = "https"
		}
		c.ExternalURL = scheme + "://" + s.Listen
	}
	if u, err := url.Parse(c.ExternalURL); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		add("external_url %q: want an absolute http(s) URL such as https://gateway.example.com", c.ExternalURL)
	} else {
		if u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
			add("external_url %q: plain http outside loopback would send session cookies in clear: use https (a TLS terminator in front, or tls:)", c.ExternalURL)
		}
		u.Path = strings.TrimSuffix(u.Path, "/")
		u.Host = strings.ToLower(u.Host)
		s.ExternalURL = u
	}

	dur := func(key string, d configfile.Duration, def time.Duration) time.Duration {
		v, err := d.Parse(key, def)
		if err != nil {
			errs = append(errs, err)
		} else if v <= 0 {
			add("%s: must be positive", key)
		}
		return v
	}
	s.IdleTimeout = dur("session.idle_timeout", c.Session.IdleTimeout, DefaultIdleTimeout)
	s.MaxLifetime = dur("session.max_lifetime", c.Session.MaxLifetime, DefaultMaxLifetime)
	s.RefreshBefore = dur("session.refresh_before", c.Session.RefreshBefore, DefaultRefreshBefore)
	s.LoginTimeout = dur("session.login_timeout", c.Session.LoginTimeout, DefaultLoginTimeout)
	if s.IdleTimeout > s.MaxLifetime {
		add("session.idle_timeout %s is longer than session.max_lifetime %s", s.IdleTimeout, s.MaxLifetime)
	}
	if _, err := session.CheckURL(s.Store); err != nil {
		add("session.store: %v", err)
	}
	if !validCookieName(s.CookieName) {
		add("session.cookie_name %q: not a cookie name", s.CookieName)
	}
	// Browsers drop a __Secure- cookie that is not Secure, and a __Host-
	// cookie that is not Secure, has a Domain, or a Path other than /
	// (RFC 6265bis 4.1.3): refuse settings that would make logins fail.
	if p := cookiePrefix(s.CookieName); p != "" {
		if s.ExternalURL != nil && s.ExternalURL.Scheme != "https" {
			add("session.cookie_name %q: a %s cookie needs an https external_url", s.CookieName, p)
		}
		if p == hostCookiePrefix && s.CookieDomain != "" {
			add("session.cookie_name %q: a __Host- cookie cannot have session.cookie_domain", s.CookieName)
		}
	}
	if d := s.CookieDomain; d != "" {
		host := ""
		if s.ExternalURL != nil {
			host = s.ExternalURL.Hostname()
		}
		if !strings.HasPrefix(d, ".") || strings.Count(d, ".") < 2 {
			add("session.cookie_domain %q: want a parent domain such as .example.com", c.Session.CookieDomain)
		} else if host != "" && !strings.HasSuffix(host, d) {
			add("session.cookie_domain %q does not cover external_url's host %q", c.Session.CookieDomain, host)
		}
	}
	// What `run` would refuse on start, validate reports too.
	if err := assertion.CheckKeyFile(s.AssertionKeyFile); err != nil {
		add("assertion.signing_key_file: %v", err)
	}
	if err := auditfile.Check(s.AuditLog); err != nil {
		add("audit_log: %v", err)
	}
	s.AssertionTTL = dur("assertion.ttl", c.Assertion.TTL, DefaultAssertionTTL)
	s.HeaderReadTimeout = dur("limits.header_read_timeout", c.Limits.HeaderReadTimeout, DefaultHeaderReadTimeout)
	s.IdleConnTimeout = dur("limits.idle_timeout", c.Limits.IdleTimeout, DefaultIdleConnTimeout)
	s.UpstreamTimeout = dur("limits.upstream_timeout", c.Limits.UpstreamTimeout, DefaultUpstreamTimeout)
	s.ShutdownTimeout = dur("limits.shutdown_timeout", c.Limits.ShutdownTimeout, DefaultShutdownTimeout)
	s.TunnelIdleTimeout = dur("limits.tunnel_idle_timeout", c.Limits.TunnelIdleTimeout, DefaultTunnelIdleTimeout)
	if s.MaxHeaderBytes == 0 {
		s.MaxHeaderBytes = DefaultMaxHeaderBytes
	} else if s.MaxHeaderBytes < 4096 || s.MaxHeaderBytes > 1<<20 {
		add("limits.max_header_bytes %d: want 4096 to 1048576", s.MaxHeaderBytes)
	}
	if s.MaxBodyBytes == 0 {
		s.MaxBodyBytes = DefaultMaxBodyBytes
	} else if s.MaxBodyBytes < -1 {
		add("limits.max_body_bytes %d: want a byte count, or -1 for no limit", s.MaxBodyBytes)
	}
	switch n := c.Limits.LoginsPerMinute; {
	case n == 0:
		s.LoginsPerMinute = DefaultLoginsPerMinute
	case n == -1:
	case n < 0:
		add("limits.logins_per_minute %d: want a count, or -1 for no limit", n)
	default:
		s.LoginsPerMinute = n
	}
	if s.MaxTokenBytes == 0 {
		s.MaxTokenBytes = DefaultMaxTokenBytes
	} else if s.MaxTokenBytes < 1024 || s.MaxTokenBytes > s.MaxHeaderBytes {
		add("limits.max_token_bytes %d: want 1024 up to limits.max_header_bytes", s.MaxTokenBytes)
	}

	for _, d := range c.AllowedRedirectDomains {
		d = strings.ToLower(strings.TrimSpace(d))
		if d == "" || strings.ContainsAny(d, "/:@*\\ ") {
			add("allowed_redirect_domains %q: want a host name or .parent.domain", d)
			continue
		}
		s.AllowedRedirectDomains = append(s.AllowedRedirectDomains, d)
	}
	proxies := c.TrustedProxies
	if proxies == nil {
		proxies = []string{"127.0.0.0/8", "::1/128"}
	}
	for _, p := range proxies {
		if pfx, err := netip.ParsePrefix(p); err == nil {
			s.TrustedProxies = append(s.TrustedProxies, pfx.Masked())
		} else if a, err := netip.ParseAddr(p); err == nil {
			s.TrustedProxies = append(s.TrustedProxies, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
		} else {
			add("trusted_proxies %q: want an IP or CIDR", p)
		}
	}

	// Identity providers.
	providers := map[string]bool{}
	for i, p := range c.IdentityProviders {
		key := fmt.Sprintf("identity_providers[%d]", i)
		out := Provider{
			Name: p.Name, Issuer: p.Issuer, ClientID: p.ClientID, ClientSecret: p.ClientSecret, Scopes: p.Scopes,
			UserClaim: orDefault(p.UserClaim, "sub"), EmailClaim: orDefault(p.EmailClaim, "email"), GroupsClaim: orDefault(p.GroupsClaim, "groups"),
			AllowUnverifiedEmail: p.AllowUnverifiedEmail, EndSessionURL: p.EndSessionURL,
		}
		if !nameRE.MatchString(p.Name) {
			add("%s.name %q: want lowercase letters, digits, '.', '_' or '-'", key, p.Name)
		} else if providers[p.Name] {
			add("%s.name %q: used twice", key, p.Name)
		}
		providers[p.Name] = true
		if err := checkIssuer(key+".issuer", p.Issuer); err != nil {
			errs = append(errs, err)
		}
		if p.ClientID == "" {
			add("%s.client_id: required", key)
		}
		switch {
		case p.ClientSecret != "" && p.ClientSecretFile != "":
			add("%s: set client_secret or client_secret_file, not both", key)
		case p.ClientSecretFile != "":
			secret, err := readSecretFile(p.ClientSecretFile)
			if err != nil {
				add("%s.client_secret_file: %v", key, err)
			}
			out.ClientSecret = secret
		case p.ClientSecret == "":
			add("%s: client_secret or client_secret_file is required", key)
		}
		if len(out.Scopes) == 0 {
			out.Scopes = []string{"openid", "profile", "email"}
		}
		hasOpenID := false
		for _, sc := range out.Scopes {
			hasOpenID = hasOpenID || sc == "openid"
			if sc == "" || strings.ContainsAny(sc, " \t\"\\") {
				add("%s.scopes %q: not a scope", key, sc)
			}
		}
		if !hasOpenID {
			add("%s.scopes: must include openid", key)
		}
		if p.EndSessionURL != "" {
			if err := bearer.CheckEndpoint(p.EndSessionURL); err != nil {
				add("%s.end_session_url %v", key, err)
			}
		}
		s.Providers = append(s.Providers, out)
	}

	// Bearer tokens.
	for i, b := range c.BearerTokens {
		key := fmt.Sprintf("bearer_tokens[%d]", i)
		if err := checkIssuer(key+".issuer", b.Issuer); err != nil {
			errs = append(errs, err)
		}
		if len(b.Audiences) == 0 {
			add("%s.audiences: name at least one audience (exact match)", key)
		}
		for _, a := range b.Algorithms {
			ok := false
			for _, x := range bearer.AsymmetricAlgorithms {
				ok = ok || a == x
			}
			if !ok {
				add("%s.algorithms %q: want asymmetric algorithms only (%s)", key, a, strings.Join(bearer.AsymmetricAlgorithms, ", "))
			}
		}
		for _, t := range b.TokenTypes {
			if bearer.NormalizeTokenType(t) == "" {
				add("%s.token_types: an empty type (want e.g. at+jwt)", key)
			}
		}
		if b.JWKSURL != "" {
			if err := bearer.CheckEndpoint(b.JWKSURL); err != nil {
				add("%s.jwks_url %v", key, err)
			}
		}
		for j := 0; j < i; j++ {
			if c.BearerTokens[j].Issuer == b.Issuer {
				add("%s.issuer %q: configured twice", key, b.Issuer)
			}
		}
		leeway, err := b.Leeway.Parse(key+".leeway", DefaultLeeway)
		if err != nil {
			errs = append(errs, err)
		} else if leeway < 0 || leeway > 5*time.Minute {
			add("%s.leeway %s: want 0 to 5m", key, leeway)
		}
		var loginClients []string
		if len(b.TokenTypes) == 0 {
			for _, p := range c.IdentityProviders {
				if p.Issuer != b.Issuer {
					continue
				}
				// Every login client of this issuer: its ID tokens may
				// carry an API's audience besides the client's own.
				loginClients = append(loginClients, p.ClientID)
				if slices.Contains(b.Audiences, p.ClientID) {
					s.Warnings = append(s.Warnings, fmt.Sprintf("%s: audiences include identity provider %s's client_id, so the ID tokens its logins issue "+
						"are accepted as bearer tokens; sign-out, which hands the ID token back to the provider in a URL, revokes it, "+
						"at the cost of a session store lookup for every bearer token with that audience. "+
						"Set token_types: [at+jwt] if the provider types its access tokens, or give the API its own audience", key, p.Name))
				}
			}
		}
		s.Bearer = append(s.Bearer, BearerIssuer{
			Issuer:    bearer.Issuer{Issuer: b.Issuer, Audiences: b.Audiences, JWKSURL: b.JWKSURL, Algorithms: b.Algorithms, Leeway: leeway, TokenTypes: b.TokenTypes},
			UserClaim: orDefault(b.UserClaim, "sub"), EmailClaim: orDefault(b.EmailClaim, "email"), GroupsClaim: orDefault(b.GroupsClaim, "groups"),
			AllowUnverifiedEmail: b.AllowUnverifiedEmail, LoginClientIDs: loginClients,
		})
	}

	// Routes.
	if len(c.Routes) == 0 {
		add("routes: configure at least one route")
	}
	origins := map[string]string{} // host → origin, one per host
	names := map[string]bool{}
	places := map[string]string{}
	for i, r := range c.Routes {
		key := fmt.Sprintf("routes[%d]", i)
		if r.Name != "" {
			key = fmt.Sprintf("routes[%d] (%s)", i, r.Name)
		}
		out := Route{
			Name: r.Name, Host: strings.ToLower(strings.TrimSuffix(r.Host, ".")), PathPrefix: orDefault(r.PathPrefix, "/"),
			Provider: r.IdentityProvider, Allow: r.Allow, PolicyPaths: r.Policy,
			PolicyNamespace: orDefault(r.PolicyNamespace, policy.DefaultNamespace), PolicyLabels: r.PolicyLabels,
			UpstreamCAFile: r.UpstreamCAFile, PreserveHost: r.PreserveHost == nil || *r.PreserveHost,
			Bearer: len(s.Bearer) > 0 && (r.Bearer == nil || *r.Bearer),
		}
		if out.PolicyLabels == nil {
			out.PolicyLabels = map[string]string{"app": r.Name}
		}
		if !nameRE.MatchString(r.Name) {
			add("%s.name %q: want lowercase letters, digits, '.', '_' or '-'", key, r.Name)
		} else if names[r.Name] {
			add("%s.name: used twice", key)
		}
		names[r.Name] = true
		if h := out.Host; h != "" {
			if strings.Contains(h, ":") && !strings.HasPrefix(h, "[") {
				add("%s.host %q: a host without a port (routes match the Host header without its port)", key, r.Host)
			} else if !validHostPattern(h) {
				add("%s.host %q: want a host name, or *.domain for its subdomains", key, r.Host)
			}
		}
		if r.Origin != "" {
			u, err := url.Parse(r.Origin)
			switch {
			case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
				add("%s.origin %q: want scheme://host or scheme://host:port (http or https, nothing after)", key, r.Origin)
			case out.Host == "":
				add("%s.origin: only for a route with a host", key)
			case hostOnly(u.Host) != hostOnly(out.Host):
				add("%s.origin %q: its host is not the route's %q (for *.domain: scheme://*.domain:port)", key, r.Origin, out.Host)
			case u.Port() != "" && !validPort(u.Port()):
				add("%s.origin %q: port %q is not 1 to 65535 as browsers write it", key, r.Origin, u.Port())
			case u.Scheme == "http" && s.ExternalURL != nil && s.ExternalURL.Scheme == "https" && !isLoopbackHost(out.Host):
				add("%s.origin %q: plain http under an https external_url", key, r.Origin)
			default:
				out.Origin = normalOrigin(u)
				if prev, ok := origins[out.Host]; ok && prev != out.Origin {
					add("%s.origin %q: another route on host %q has origin %q", key, r.Origin, out.Host, prev)
				}
				origins[out.Host] = out.Origin
			}
		}
		if !strings.HasPrefix(out.PathPrefix, "/") {
			add("%s.path_prefix %q: must start with /", key, r.PathPrefix)
		} else if np, err := policy.NormalizePath(out.PathPrefix); err != nil || (np != out.PathPrefix && np+"/" != out.PathPrefix) {
			add("%s.path_prefix %q: not a normalized path", key, r.PathPrefix)
		}
		place := out.Host + " " + out.PathPrefix
		if prev, dup := places[place]; dup {
			add("%s: host %q and path_prefix %q are also %s's", key, out.Host, out.PathPrefix, prev)
		}
		places[place] = key
		if r.Upstream != "" {
			u, err := url.Parse(r.Upstream)
			switch {
			case err != nil || u.Host == "":
				add("%s.upstream %q: want http://host:port, https://host:port or h2c://host:port", key, r.Upstream)
			case u.Scheme == "http" || u.Scheme == "https":
				out.Upstream = u
			case u.Scheme == "h2c":
				out.H2C = true
				v := *u
				v.Scheme = "http"
				out.Upstream = &v
			default:
				add("%s.upstream %q: want http://, https:// or h2c:// (HTTP/2 without TLS, for gRPC)", key, r.Upstream)
			}
			if u != nil && (u.User != nil || u.RawQuery != "" || u.Fragment != "") {
				add("%s.upstream %q: no userinfo, query or fragment", key, r.Upstream)
			}
		}
		if r.UpstreamCAFile != "" {
			if out.Upstream == nil || out.Upstream.Scheme != "https" {
				add("%s.upstream_ca_file: only for an https:// upstream", key)
			} else if _, err := os.Stat(r.UpstreamCAFile); err != nil {
				add("%s.upstream_ca_file: %v", key, err)
			}
		}
		switch {
		case out.Provider != "":
			if !providers[out.Provider] {
				add("%s.identity_provider %q: no identity provider has that name", key, out.Provider)
			}
		case len(c.IdentityProviders) == 1:
			out.Provider = c.IdentityProviders[0].Name
		case len(c.IdentityProviders) > 1:
			add("%s.identity_provider: required when several identity providers are configured", key)
		case !out.Bearer:
			add("%s: no way to sign in: configure identity_providers or bearer_tokens", key)
		}
		if r.Allow.empty() && (r.Allow == nil || !r.Allow.Authenticated) && len(r.Policy) == 0 {
			add("%s: allows nobody: set allow (groups, emails, domains, scopes, users; or authenticated: true for any signed-in user) and/or policy", key)
		}
		if r.Allow != nil {
			for _, d := range r.Allow.Domains {
				if d == "" || strings.ContainsAny(d, "@/ ") {
					add("%s.allow.domains %q: want an email domain such as example.com", key, d)
				}
			}
		}
		for _, p := range r.Policy {
			if _, err := os.Stat(p); err != nil {
				add("%s.policy: %v", key, err)
			}
		}
		s.Routes = append(s.Routes, out)
	}
	return s, errors.Join(errs...)
}

func readSecretFile(path string) (string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if info.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s: mode %04o lets others read it: chmod 600 it", path, info.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return v, nil
}

func validHostPattern(h string) bool {
	h = strings.TrimPrefix(h, "*.")
	if h == "" || len(h) > 253 {
		return false
	}
	if _, err := netip.ParseAddr(strings.Trim(h, "[]")); err == nil {
		return true
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

const (
	secureCookiePrefix = "__Secure-"
	hostCookiePrefix   = "__Host-"
)

// cookiePrefix is the RFC 6265bis name prefix of a cookie name, if any.
// Browsers match the prefixes case-insensitively.
func cookiePrefix(name string) string {
	for _, p := range []string{hostCookiePrefix, secureCookiePrefix} {
		if len(name) >= len(p) && strings.EqualFold(name[:len(p)], p) {
			return p
		}
	}
	return ""
}

func validCookieName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	c := &http.Cookie{Name: n, Value: "x"}
	return c.Valid() == nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// validPort: p is a port number as browsers write it (no leading zero).
func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535 && strconv.Itoa(n) == p
}

// normalOrigin is u's origin as one string (origin).
func normalOrigin(u *url.URL) string { return origin(u.Scheme, hostOnly(u.Host), u.Port()) }

// origin is scheme, host (no brackets) and port as one origin string:
// scheme and host lowercase, the port only when it is not the scheme's
// default.
func origin(scheme, host, port string) string {
	scheme, host = strings.ToLower(scheme), strings.ToLower(host)
	if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		port = ""
	}
	if port != "" {
		return scheme + "://" + net.JoinHostPort(host, port)
	}
	if strings.Contains(host, ":") { // IPv6
		host = "[" + host + "]"
	}
	return scheme + "://" + host
}

// hostOnly strips a port from a Host header value and lowercases it.
func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return strings.ToLower(strings.TrimSuffix(strings.Trim(h, "[]"), "."))
}
