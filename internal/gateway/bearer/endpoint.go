package bearer

import (
	"fmt"
	"net/netip"
	"net/url"
	"strings"
)

// CheckEndpoint accepts an identity provider endpoint (JWKS, token,
// authorization, end-session) only over https, or plain http to a
// loopback address: keys fetched, or codes and tokens sent, in clear over
// a network are as good as an attacker's. Discovery documents are
// checked with it too, since a provider served over https can still name
// an http endpoint.
func CheckEndpoint(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil {
		return fmt.Errorf("%q: want an absolute https URL", truncate(raw))
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%q: plain http is refused unless on a loopback address", truncate(raw))
	}
	return fmt.Errorf("%q: want an https URL", truncate(raw))
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && ip.IsLoopback()
}
