package gateway

import (
	"net/url"
	"strings"
)

// safeRedirect checks where rd= (or X-Auth-Request-Redirect) would send
// the browser after login or sign-out and returns it as an absolute URL.
// A path is taken relative to base (the request's own scheme and host);
// an absolute URL must be http(s) to the gateway's host, a route's host or
// an allowed_redirect_domains entry. Anything a browser could read as
// another host (//evil, /\evil, userinfo, control characters, other
// schemes) is refused.
func (g *Gateway) safeRedirect(rd string, base *url.URL) (string, bool) {
	if rd == "" {
		return base.Scheme + "://" + base.Host + "/", true
	}
	if len(rd) > 4096 {
		return "", false
	}
	for i := 0; i < len(rd); i++ {
		if c := rd[i]; c <= 0x20 || c == 0x7f || c == '\\' {
			return "", false
		}
	}
	if strings.HasPrefix(rd, "/") {
		if strings.HasPrefix(rd, "//") {
			return "", false
		}
		u, err := url.Parse(rd)
		if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" || hasControl(u.Path) {
			return "", false
		}
		return base.Scheme + "://" + base.Host + u.RequestURI() + fragment(u), true
	}
	u, err := url.Parse(rd)
	if err != nil || u.Opaque != "" || hasControl(u.Path) || u.User != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "", false
	}
	host := strings.ToLower(u.Hostname())
	if u.Scheme == "http" && g.set.ExternalURL.Scheme == "https" && !isLoopbackHost(host) {
		return "", false // no downgrade
	}
	if !g.redirectHostAllowed(host) {
		return "", false
	}
	if u.Path == "" {
		u.Path = "/"
	}
	return u.String(), true
}

// isOwnEndpoint: u is one of the gateway's /oauth2/ endpoints, on a host
// it serves (routes' hosts have them at /oauth2/, the gateway's own host
// under external_url's path too).
func (g *Gateway) isOwnEndpoint(u *url.URL) bool {
	if !g.servesHost(strings.ToLower(u.Hostname())) {
		return false
	}
	return strings.HasPrefix(u.Path, "/oauth2/") || strings.HasPrefix(u.Path, g.set.ExternalURL.Path+"/oauth2/")
}

func fragment(u *url.URL) string {
	if u.Fragment == "" {
		return ""
	}
	return "#" + u.EscapedFragment()
}

func (g *Gateway) redirectHostAllowed(host string) bool {
	if g.servesHost(host) {
		return true
	}
	if host == "" {
		return false
	}
	for _, d := range g.set.AllowedRedirectDomains {
		if strings.HasPrefix(d, ".") {
			if strings.HasSuffix(host, d) && len(host) > len(d) {
				return true
			}
		} else if host == d {
			return true
		}
	}
	return false
}

// servesHost: host (lowercase, no port) is the gateway's own or a route's,
// so requests for it reach this gateway. Only such hosts may receive a
// session hand-off; allowed_redirect_domains are places to send the
// browser, not parties to trust with a session.
func (g *Gateway) servesHost(host string) bool {
	if host == "" {
		return false
	}
	if host == g.set.ExternalURL.Hostname() {
		return true
	}
	for _, r := range g.set.Routes {
		if r.Host != "" && hostMatches(r.Host, host) {
			return true
		}
	}
	return false
}

// hostMatches matches a route host pattern (exact, or *.domain for any
// subdomain) against a lowercase host without port.
func hostMatches(pattern, host string) bool {
	if rest, ok := strings.CutPrefix(pattern, "*"); ok {
		return strings.HasSuffix(host, rest) && len(host) > len(rest)
	}
	return pattern == host
}

// hasControl: a decoded path with control characters or backslashes is
// refused too (%0d%0a, %5c).
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c == '\\' {
			return true
		}
	}
	return false
}
