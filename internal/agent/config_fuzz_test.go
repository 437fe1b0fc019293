package agent

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/configfile"
)

// FuzzConfig: no config file makes decoding or validation panic, and one
// that validates names a server, a bundle and an absolute socket path that
// fits a unix socket.
func FuzzConfig(f *testing.F) {
	f.Add([]byte("server: 127.0.0.1:8081\ntrust_bundle: /etc/hosts\njoin_token: x\n"))
	f.Add([]byte("server: 127.0.0.1:8081\ntrust_bundle: /etc/hosts\nx509pop: {cert_file: /etc/hosts, key_file: /etc/hosts}\nsocket: rel/agent.sock\nresync_interval: 10s\n"))
	f.Add([]byte("server: h\ntrust_domain: 'Bad Domain'\nsds: {default_svid_name: a, default_bundle_name: a}\nresync_interval: 1ms\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c Config
		if err := configfile.Decode(data, &c); configfile.Fatal(err) {
			return
		}
		s, err := c.Resolve()
		if err != nil {
			return
		}
		if configfile.CheckHostPort("server", s.Server) != nil || s.TrustBundle == "" {
			t.Fatalf("valid settings with server %q, trust_bundle %q", s.Server, s.TrustBundle)
		}
		if !filepath.IsAbs(s.Socket) || len(s.Socket) > maxUnixSocketPathAgent {
			t.Fatalf("socket %q", s.Socket)
		}
		if s.ResyncInterval < time.Second || s.SVIDName == s.BundleName {
			t.Fatalf("resync %s, SDS names %q/%q", s.ResyncInterval, s.SVIDName, s.BundleName)
		}
		if s.JoinToken != "" && s.X509PoP != nil {
			t.Fatal("two attestation methods accepted")
		}
	})
}
