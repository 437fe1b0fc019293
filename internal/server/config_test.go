package server

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/ca/keymanager"
	"github.com/trustmesh/trustmesh/internal/configfile"
)

func TestDefaults(t *testing.T) {
	set, err := Config{}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	for got, want := range map[string]string{
		set.DataDir:               "./.trustmesh/server",
		set.AdminSocket:           ".trustmesh/server/admin.sock",
		set.Datastore:             "sqlite://.trustmesh/server/datastore.sqlite3",
		set.Listen:                "127.0.0.1:8081",
		set.TrustDomain.Name():    "example.org",
		set.MetricsAddr:           "",
		set.X509KeyType.String():  "ec-p256",
		set.JWTKeyType.String():   "ec-p256",
		set.CATTL.String():        "24h0m0s",
		set.X509SVIDTTL.String():  "1h0m0s",
		set.JWTSVIDTTL.String():   "5m0s",
		set.AgentSVIDTTL.String(): "1h0m0s",
	} {
		if got != want {
			t.Errorf("default %q, want %q", got, want)
		}
	}
	if len(set.Warnings) != 0 {
		t.Errorf("defaults warn: %v", set.Warnings)
	}
}

func TestDataDirDerivesPaths(t *testing.T) {
	set, err := Config{DataDir: "/srv/tm"}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if set.AdminSocket != "/srv/tm/admin.sock" || set.Datastore != "sqlite:///srv/tm/datastore.sqlite3" || set.AuditLog != "/srv/tm/audit.log" {
		t.Fatalf("derived paths: %+v", set)
	}
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "server.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadSettingsFileAndOverrides(t *testing.T) {
	p := writeConfig(t, `
trust_domain: corp.example
data_dir: /var/lib/tm
listen: 0.0.0.0:9000
ca:
  key_type: ec-p384
  jwt_key_type: rsa-2048
  ttl: 48h
default_x509_svid_ttl: 30m
default_jwt_svid_ttl: 2m
`)
	set, err := LoadSettings(p, func(c *Config) { c.Listen = "127.0.0.1:7000" })
	if err != nil {
		t.Fatal(err)
	}
	if set.TrustDomain.Name() != "corp.example" || set.Listen != "127.0.0.1:7000" || set.CATTL != 48*time.Hour ||
		set.X509KeyType != keymanager.ECP384 || set.JWTKeyType != keymanager.RSA2048 || set.X509SVIDTTL != 30*time.Minute ||
		set.JWTSVIDTTL != 2*time.Minute || set.DataDir != "/var/lib/tm" {
		t.Fatalf("settings = %+v", set)
	}
}

// TestValidationReportsEveryError: one pass names every problem, decoding
// ones (with line numbers) and semantic ones alike.
func TestValidationReportsEveryError(t *testing.T) {
	p := writeConfig(t, `
trust_domain: "Not Valid"
listen: nohostport
datastore: mysql://db
log_level: loud
log_format: xml
surprise: true
ca:
  key_type: dsa
  ttl: forever
  key_manager: hsm
  upstream:
    key_file: /nonexistent/key.pem
default_jwt_svid_ttl: 1s
join_token_ttl: 0s
metrics_addr: ":"
`)
	_, err := LoadSettings(p, nil)
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{
		"line 7: field surprise not found", `ca.ttl (line 10): invalid duration "forever"`,
		`trust_domain "Not Valid"`, `listen "nohostport"`, "scheme must be sqlite:// or postgres://",
		`log_level "loud"`, `log_format "xml"`, `ca.key_type`, `ca.key_manager "hsm"`,
		"cert_file and key_file are both required", "ca.upstream.key_file", "default_jwt_svid_ttl 1s is below the minimum",
		"join_token_ttl 0s",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not report %q:\n%v", want, err)
		}
	}
}

func TestSyntaxErrorAndMissingFile(t *testing.T) {
	if _, err := LoadSettings(writeConfig(t, "a: [\n"), nil); err == nil || !strings.Contains(err.Error(), "not valid YAML") {
		t.Fatalf("syntax error: %v", err)
	}
	if _, err := LoadSettings(filepath.Join(t.TempDir(), "none.yaml"), nil); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	// An empty file is an empty (all defaults) config.
	if _, err := LoadSettings(writeConfig(t, ""), nil); err != nil {
		t.Fatalf("empty file: %v", err)
	}
}

func TestShortCAWarns(t *testing.T) {
	set, err := Config{CA: CAConfig{TTL: D(2 * time.Hour)}}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Warnings) == 0 || !strings.Contains(set.Warnings[0], "sixth") {
		t.Fatalf("warnings = %v", set.Warnings)
	}
}

func TestSocketPathTooLong(t *testing.T) {
	_, err := Config{AdminSocket: "/" + strings.Repeat("a", 120)}.Resolve()
	if err == nil || !strings.Contains(err.Error(), "unix sockets allow at most") {
		t.Fatalf("long socket path: %v", err)
	}
}

// FuzzParseConfig: arbitrary bytes never panic the config path.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("trust_domain: example.org\nca:\n  ttl: 24h\n"))
	f.Add([]byte("listen: [\n"))
	f.Add([]byte("ca: {upstream: {cert_file: x}}\ndefault_x509_svid_ttl: 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if configfile.Fatal(err) {
			return
		}
		_, _ = c.Resolve()
	})
}
