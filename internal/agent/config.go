package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustmesh/trustmesh/internal/apiclient"
	"github.com/trustmesh/trustmesh/internal/configfile"
	"github.com/trustmesh/trustmesh/internal/registry"
)

// Defaults for `trustmesh agent run`.
const (
	DefaultSocket          = "/tmp/trustmesh/agent.sock"
	DefaultDataDir         = "./.trustmesh/agent"
	DefaultResync          = 5 * time.Minute
	DefaultSVIDName        = "default"
	DefaultBundleName      = "ROOTCA"
	defaultBackoffBase     = 500 * time.Millisecond
	defaultBackoffMax      = 30 * time.Second
	defaultWatchSilence    = 35 * time.Second // three missed server heartbeats
	maxUnixSocketPathAgent = 107
)

// Config is the agent configuration as written in YAML; flags override it.
type Config struct {
	Server      string `yaml:"server"`
	TrustDomain string `yaml:"trust_domain"`
	// TrustBundle is the PEM bundle used to verify the server until the
	// agent has the server's own (bootstrap trust).
	TrustBundle string         `yaml:"trust_bundle"`
	JoinToken   string         `yaml:"join_token"`
	X509PoP     *X509PoPConfig `yaml:"x509pop"`
	Socket      string         `yaml:"socket"`
	DataDir     string         `yaml:"data_dir"`
	MetricsAddr string         `yaml:"metrics_addr"`
	LogLevel    string         `yaml:"log_level"`
	LogFormat   string         `yaml:"log_format"`
	// ResyncInterval is the full resync safety net on top of the watch
	// stream.
	ResyncInterval configfile.Duration `yaml:"resync_interval"`
	SDS            SDSConfig           `yaml:"sds"`
}

// X509PoPConfig is the node certificate and key for x509pop attestation.
type X509PoPConfig struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// SDSConfig names the secrets Envoy asks for.
type SDSConfig struct {
	// DefaultSVIDName is the secret name for the workload's default
	// (first) SVID; "default" as in SPIRE.
	DefaultSVIDName string `yaml:"default_svid_name"`
	// DefaultBundleName is the secret name for the trust bundle as a
	// validation context; "ROOTCA" as in SPIRE.
	DefaultBundleName string `yaml:"default_bundle_name"`
}

// Settings is the validated agent configuration.
type Settings struct {
	Server         string
	TrustDomain    spiffeid.TrustDomain
	TrustBundle    string
	JoinToken      string
	X509PoP        *X509PoPConfig
	Socket         string
	DataDir        string
	MetricsAddr    string
	LogLevel       string
	LogFormat      string
	ResyncInterval time.Duration
	SVIDName       string
	BundleName     string

	// Tuning, settable by tests.
	BackoffBase  time.Duration
	BackoffMax   time.Duration
	WatchSilence time.Duration
	// ServerTimeouts bound every call to the server, the watch stream's
	// opening included (zero fields: apiclient.DefaultTimeouts).
	ServerTimeouts apiclient.Timeouts
}

// LoadSettings decodes the config file (if path is set), applies
// override (the flags) and validates, reporting every problem.
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

// Resolve applies defaults and validates.
func (c Config) Resolve() (Settings, error) {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	s := Settings{
		Server:       c.Server,
		TrustBundle:  c.TrustBundle,
		JoinToken:    strings.TrimSpace(c.JoinToken),
		X509PoP:      c.X509PoP,
		Socket:       orDefault(c.Socket, DefaultSocket),
		DataDir:      orDefault(c.DataDir, DefaultDataDir),
		MetricsAddr:  c.MetricsAddr,
		LogLevel:     strings.ToLower(orDefault(c.LogLevel, "info")),
		LogFormat:    strings.ToLower(orDefault(c.LogFormat, "text")),
		SVIDName:     orDefault(c.SDS.DefaultSVIDName, DefaultSVIDName),
		BundleName:   orDefault(c.SDS.DefaultBundleName, DefaultBundleName),
		BackoffBase:  defaultBackoffBase,
		BackoffMax:   defaultBackoffMax,
		WatchSilence: defaultWatchSilence,
	}
	var err error
	if s.ResyncInterval, err = c.ResyncInterval.Parse("resync_interval", DefaultResync); err != nil {
		errs = append(errs, err)
	} else if s.ResyncInterval < time.Second {
		add("resync_interval %s: must be at least 1s", s.ResyncInterval)
	}
	if s.Server == "" {
		add("server is required (HOST:PORT of trustmesh server's listener)")
	} else if err := configfile.CheckHostPort("server", s.Server); err != nil {
		errs = append(errs, err)
	}
	if s.TrustBundle == "" {
		add("trust_bundle is required (PEM file with the server's trust bundle: trustmesh bundle show > bundle.pem)")
	} else if _, err := os.Stat(s.TrustBundle); err != nil {
		add("trust_bundle: %v", err)
	}
	if c.TrustDomain != "" {
		if s.TrustDomain, err = spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
			add("trust_domain %q: %v", c.TrustDomain, err)
		}
	}
	if s.JoinToken != "" {
		if _, _, err := registry.ParseJoinToken(s.JoinToken); err != nil {
			add("join_token: %v", err)
		}
	}
	if p := s.X509PoP; p != nil {
		if p.CertFile == "" || p.KeyFile == "" {
			add("x509pop: cert_file and key_file are both required")
		}
		for key, f := range map[string]string{"cert_file": p.CertFile, "key_file": p.KeyFile} {
			if f != "" {
				if _, err := os.Stat(f); err != nil {
					add("x509pop.%s: %v", key, err)
				}
			}
		}
	}
	if s.JoinToken != "" && s.X509PoP != nil {
		add("join_token and x509pop are exclusive: give one attestation method")
	}
	if !filepath.IsAbs(s.Socket) {
		if abs, err := filepath.Abs(s.Socket); err == nil {
			s.Socket = abs
		}
	}
	if len(s.Socket) > maxUnixSocketPathAgent {
		add("socket %q: path is %d bytes, unix sockets allow at most %d", s.Socket, len(s.Socket), maxUnixSocketPathAgent)
	}
	if s.MetricsAddr != "" {
		if err := configfile.CheckHostPort("metrics_addr", s.MetricsAddr); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, configfile.CheckLogging(s.LogLevel, s.LogFormat)...)
	if s.SVIDName == s.BundleName {
		add("sds: default_svid_name and default_bundle_name must differ")
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
