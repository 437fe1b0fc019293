package proxy

import (
	"testing"

	"github.com/trustmesh/trustmesh/internal/configfile"
)

// FuzzConfig: no config file makes decoding or validation panic, and a
// file that validates yields settings the listeners can run with (what
// Resolve promises the rest of the proxy).
func FuzzConfig(f *testing.F) {
	f.Add([]byte("socket: unix:///tmp/agent.sock\ninbound: [{listen: '127.0.0.1:15006', forward: '127.0.0.1:8080'}]\n"))
	f.Add([]byte("outbound: [{listen: '127.0.0.1:15001', upstream: 'api:15006', spiffe_ids: ['spiffe://example.org/ns/a/sa/b']}]\nlimits: {idle_timeout: 1m, max_header_bytes: 4096}\n"))
	f.Add([]byte("inbound:\n  - {name: a, listen: ':1', forward: ':2', protocol: TCP, port: 70000, backend: h2c}\n  - {name: a, listen: ':1', forward: ':3'}\npolicy: {default_mtls: permissive, rego_version: v1}\nstrip_headers: [x-user, 'bad name']\n"))
	f.Add([]byte("svid_id: spiffe://x/y\ntrust_domains: [example.org, 'Bad!']\nlabels: {'': v}\nlog_level: DEBUG\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c Config
		if err := configfile.Decode(data, &c); configfile.Fatal(err) {
			return
		}
		s, err := c.Resolve()
		if err != nil {
			return
		}
		if len(s.Inbound)+len(s.Outbound) == 0 {
			t.Fatal("valid settings without a listener")
		}
		if s.MaxHeaderBytes < 1024 || s.MaxHeaderBytes > 1<<20 || s.MaxConnections < 1 {
			t.Fatalf("limits out of range: max_header_bytes %d, max_connections %d", s.MaxHeaderBytes, s.MaxConnections)
		}
		for _, d := range []int64{int64(s.HeaderReadTimeout), int64(s.IdleTimeout), int64(s.HandshakeTimeout), int64(s.ShutdownTimeout)} {
			if d <= 0 {
				t.Fatalf("a timeout of %d", d)
			}
		}
		names := map[string]bool{}
		for _, l := range append(append([]Listener{}, s.Inbound...), s.Outbound...) {
			if names[l.Name] {
				t.Fatalf("listener name %q twice", l.Name)
			}
			names[l.Name] = true
			if l.Protocol != ProtocolHTTP && l.Protocol != ProtocolTCP {
				t.Fatalf("listener %q: protocol %q", l.Name, l.Protocol)
			}
			if configfile.CheckHostPort("listen", l.Listen) != nil {
				t.Fatalf("listener %q: listen %q", l.Name, l.Listen)
			}
		}
		for _, l := range s.Inbound {
			if l.Port > 65535 || configfile.CheckHostPort("forward", l.Forward) != nil {
				t.Fatalf("inbound %q: forward %q, port %d", l.Name, l.Forward, l.Port)
			}
		}
		for _, l := range s.Outbound {
			if len(l.SPIFFEIDs) == 0 || configfile.CheckHostPort("upstream", l.Upstream) != nil {
				t.Fatalf("outbound %q: upstream %q, %d SPIFFE IDs", l.Name, l.Upstream, len(l.SPIFFEIDs))
			}
		}
		if s.StripHeaders[0] != "X-Forwarded-Client-Cert" {
			t.Fatalf("strip_headers lost the XFCC header: %q", s.StripHeaders)
		}
	})
}
