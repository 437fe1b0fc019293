package server

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustmesh/trustmesh/internal/ca"
	"github.com/trustmesh/trustmesh/internal/ca/keymanager"
	"github.com/trustmesh/trustmesh/internal/configfile"
	"github.com/trustmesh/trustmesh/internal/registry"
	"github.com/trustmesh/trustmesh/internal/store/sqlstore"
)

// Defaults for `trustmesh server run`.
const (
	DefaultDataDir        = "./.trustmesh/server"
	DefaultListen         = "127.0.0.1:8081"
	DefaultTrustDomain    = "example.org"
	DefaultJoinTokenTTL   = 10 * time.Minute
	defaultRotateInterval = 10 * time.Second
	defaultBundleRefresh  = 5 * time.Second
	defaultWatchPoll      = 200 * time.Millisecond
	defaultWatchHeartbeat = 10 * time.Second
	defaultReadTimeout    = 30 * time.Second
	maxUnixSocketPath     = 107 // sun_path minus the terminating NUL
)

// Config is the server configuration as written in YAML. Every key is
// optional; flags override the file; Resolve fills defaults and checks
// everything.
type Config struct {
	TrustDomain string `yaml:"trust_domain"`
	DataDir     string `yaml:"data_dir"`
	Listen      string `yaml:"listen"`
	AdminSocket string `yaml:"admin_socket"`
	Datastore   string `yaml:"datastore"`
	MetricsAddr string `yaml:"metrics_addr"`
	LogLevel    string `yaml:"log_level"`
	LogFormat   string `yaml:"log_format"`
	// AuditLog is the audit trail file; "-" writes it to standard error.
	AuditLog string `yaml:"audit_log"`

	CA CAConfig `yaml:"ca"`

	NodeAttestation NodeAttestationConfig `yaml:"node_attestation"`

	DefaultX509SVIDTTL Duration `yaml:"default_x509_svid_ttl"`
	DefaultJWTSVIDTTL  Duration `yaml:"default_jwt_svid_ttl"`
	AgentSVIDTTL       Duration `yaml:"agent_svid_ttl"`
	JoinTokenTTL       Duration `yaml:"join_token_ttl"`
}

// CAConfig configures the certificate authority.
type CAConfig struct {
	KeyType    string          `yaml:"key_type"`     // ec-p256 (default), ec-p384, rsa-2048
	JWTKeyType string          `yaml:"jwt_key_type"` // ec-p256 (ES256, default), ec-p384 (ES384), rsa-2048 (RS256)
	TTL        Duration        `yaml:"ttl"`
	KeyManager string          `yaml:"key_manager"` // disk (default) | memory
	Upstream   *UpstreamConfig `yaml:"upstream"`
}

// NodeAttestationConfig enables node attestation methods beyond join
// tokens (always on).
type NodeAttestationConfig struct {
	X509PoP *X509PoPConfig `yaml:"x509pop"`
}

// X509PoPConfig trusts agents holding a certificate (and its key) that
// chains to one of the CAs in CABundleFile.
type X509PoPConfig struct {
	CABundleFile string `yaml:"ca_bundle_file"`
}

// UpstreamConfig names an upstream CA on disk.
type UpstreamConfig struct {
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	BundleFile string `yaml:"bundle_file"`
}

// Duration is a config duration (see configfile).
type Duration = configfile.Duration

// D returns a Duration for d, for configs built in code.
func D(d time.Duration) Duration { return configfile.D(d) }

// ParseConfig decodes YAML config bytes strictly (see configfile.Decode).
func ParseConfig(data []byte) (Config, error) {
	var c Config
	err := configfile.Decode(data, &c)
	return c, err
}

// LoadSettings decodes the config file (if path is not empty), applies
// override (the command-line flags) and resolves it, reporting every
// problem found in one error.
func LoadSettings(path string, override func(*Config)) (Settings, error) {
	var (
		c       Config
		loadErr error
	)
	if path != "" {
		if loadErr = configfile.Load(path, &c); configfile.Fatal(loadErr) {
			return Settings{}, loadErr
		}
	}
	if override != nil {
		override(&c)
	}
	set, err := c.Resolve()
	return set, errors.Join(loadErr, err)
}

// Settings is the validated, defaulted, immutable configuration the server
// runs with.
type Settings struct {
	TrustDomain  spiffeid.TrustDomain
	DataDir      string
	Listen       string
	AdminSocket  string
	Datastore    string
	MetricsAddr  string
	LogLevel     string
	LogFormat    string
	AuditLog     string
	CATTL        time.Duration
	X509KeyType  keymanager.KeyType
	JWTKeyType   keymanager.KeyType
	KeyManager   string
	Upstream     *UpstreamConfig
	X509SVIDTTL  time.Duration
	JWTSVIDTTL   time.Duration
	AgentSVIDTTL time.Duration
	JoinTokenTTL time.Duration

	// X509PoPRoots is set when x509pop node attestation is enabled.
	X509PoPRoots *x509.CertPool

	RotateInterval time.Duration
	BundleRefresh  time.Duration
	// WatchPoll is how often the registry revision is polled to push
	// changes to connected agents.
	WatchPoll time.Duration
	// WatchHeartbeat is how often an idle watch stream says it is alive.
	WatchHeartbeat time.Duration
	// ReadTimeout bounds reading a request on the TLS listener (watch
	// streams lift it for themselves).
	ReadTimeout time.Duration
	// Warnings are non-fatal observations (e.g. SVIDs cut short by the CA).
	Warnings []string
}

// Resolve applies defaults, derives paths from the data dir and validates
// everything, reporting every problem at once.
func (c Config) Resolve() (Settings, error) {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	s := Settings{
		DataDir:        orDefault(c.DataDir, DefaultDataDir),
		Listen:         orDefault(c.Listen, DefaultListen),
		MetricsAddr:    c.MetricsAddr,
		LogLevel:       strings.ToLower(orDefault(c.LogLevel, "info")),
		LogFormat:      strings.ToLower(orDefault(c.LogFormat, "text")),
		KeyManager:     strings.ToLower(orDefault(c.CA.KeyManager, "disk")),
		Upstream:       c.CA.Upstream,
		RotateInterval: defaultRotateInterval,
		BundleRefresh:  defaultBundleRefresh,
		WatchPoll:      defaultWatchPoll,
		WatchHeartbeat: defaultWatchHeartbeat,
		ReadTimeout:    defaultReadTimeout,
	}
	var err error
	durations := []struct {
		key string
		in  Duration
		def time.Duration
		out *time.Duration
	}{
		{"ca.ttl", c.CA.TTL, ca.DefaultCATTL, &s.CATTL},
		{"default_x509_svid_ttl", c.DefaultX509SVIDTTL, ca.DefaultX509SVIDTTL, &s.X509SVIDTTL},
		{"default_jwt_svid_ttl", c.DefaultJWTSVIDTTL, ca.DefaultJWTSVIDTTL, &s.JWTSVIDTTL},
		{"join_token_ttl", c.JoinTokenTTL, DefaultJoinTokenTTL, &s.JoinTokenTTL},
	}
	for _, d := range durations {
		if *d.out, err = d.in.Parse(d.key, d.def); err != nil {
			errs = append(errs, err)
		}
	}
	if s.AgentSVIDTTL, err = c.AgentSVIDTTL.Parse("agent_svid_ttl", s.X509SVIDTTL); err != nil {
		errs = append(errs, err)
	}
	s.AdminSocket = orDefault(c.AdminSocket, filepath.Join(s.DataDir, "admin.sock"))
	s.Datastore = orDefault(c.Datastore, "sqlite://"+filepath.Join(s.DataDir, "datastore.sqlite3"))
	s.AuditLog = orDefault(c.AuditLog, filepath.Join(s.DataDir, "audit.log"))

	td, tdErr := spiffeid.TrustDomainFromString(orDefault(c.TrustDomain, DefaultTrustDomain))
	if tdErr != nil {
		add("trust_domain %q: %v", c.TrustDomain, tdErr)
	} else if strings.HasPrefix(c.TrustDomain, "spiffe://") {
		add("trust_domain %q: give the bare name (%s), not a SPIFFE ID", c.TrustDomain, td.Name())
	}
	s.TrustDomain = td
	if err := configfile.CheckHostPort("listen", s.Listen); err != nil {
		errs = append(errs, err)
	}
	if s.MetricsAddr != "" {
		if err := configfile.CheckHostPort("metrics_addr", s.MetricsAddr); err != nil {
			errs = append(errs, err)
		}
	}
	if len(s.AdminSocket) > maxUnixSocketPath {
		add("admin_socket %q: path is %d bytes, unix sockets allow at most %d", s.AdminSocket, len(s.AdminSocket), maxUnixSocketPath)
	}
	if _, _, err := sqlstore.ParseURL(s.Datastore); err != nil {
		add("datastore: %v", err)
	}
	errs = append(errs, configfile.CheckLogging(s.LogLevel, s.LogFormat)...)
	switch s.KeyManager {
	case "disk", "memory":
	default:
		add("ca.key_manager %q: want disk or memory", c.CA.KeyManager)
	}
	if s.X509KeyType, err = keymanager.ParseKeyType(orDefault(c.CA.KeyType, "ec-p256")); err != nil {
		add("ca.key_type: %v", err)
	}
	if s.JWTKeyType, err = keymanager.ParseKeyType(orDefault(c.CA.JWTKeyType, "ec-p256")); err != nil {
		add("ca.jwt_key_type: %v", err)
	}
	if s.CATTL < time.Minute {
		add("ca.ttl %s: must be at least 1m", s.CATTL)
	}
	for name, d := range map[string]time.Duration{
		"default_x509_svid_ttl": s.X509SVIDTTL, "default_jwt_svid_ttl": s.JWTSVIDTTL, "agent_svid_ttl": s.AgentSVIDTTL,
	} {
		if err := registry.CheckTTL(name, d); err != nil {
			add("%v", err)
		}
	}
	if s.JoinTokenTTL < registry.MinJoinTokenTTL || s.JoinTokenTTL > registry.MaxJoinTokenTTL {
		add("join_token_ttl %s: must be between %s and %s", s.JoinTokenTTL, registry.MinJoinTokenTTL, registry.MaxJoinTokenTTL)
	}
	if u := c.CA.Upstream; u != nil {
		if u.CertFile == "" || u.KeyFile == "" {
			add("ca.upstream: cert_file and key_file are both required")
		}
		for key, f := range map[string]string{"cert_file": u.CertFile, "key_file": u.KeyFile, "bundle_file": u.BundleFile} {
			if f == "" {
				continue
			}
			if _, err := os.Stat(f); err != nil {
				add("ca.upstream.%s: %v", key, err)
			}
		}
	}
	if p := c.NodeAttestation.X509PoP; p != nil {
		if p.CABundleFile == "" {
			add("node_attestation.x509pop.ca_bundle_file is required")
		} else if data, err := os.ReadFile(p.CABundleFile); err != nil {
			add("node_attestation.x509pop.ca_bundle_file: %v", err)
		} else if certs, err := ca.ParseCertificatesPEM(data); err != nil {
			add("node_attestation.x509pop.ca_bundle_file %s: %v", p.CABundleFile, err)
		} else {
			s.X509PoPRoots = x509.NewCertPool()
			for _, c := range certs {
				s.X509PoPRoots.AddCert(c)
			}
		}
	}
	// As SPIRE: the CA must live six times as long as an SVID, or SVIDs
	// are cut short at the CA's expiry.
	for name, d := range map[string]time.Duration{"default_x509_svid_ttl": s.X509SVIDTTL, "agent_svid_ttl": s.AgentSVIDTTL} {
		if d*6 > s.CATTL {
			s.Warnings = append(s.Warnings, fmt.Sprintf("%s %s is more than a sixth of ca.ttl %s: SVIDs issued late in a CA's life will be shortened to its expiry", name, d, s.CATTL))
		}
	}
	if len(errs) > 0 {
		return s, errors.Join(errs...)
	}
	return s, nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
