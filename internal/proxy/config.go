package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustmesh/trustmesh/internal/auditfile"
	"github.com/trustmesh/trustmesh/internal/configfile"
	"github.com/trustmesh/trustmesh/internal/httpx"
	"github.com/trustmesh/trustmesh/internal/policy"
)

// Defaults for `trustmesh proxy run`.
const (
	DefaultSocket            = "/tmp/trustmesh/agent.sock"
	DefaultHeaderReadTimeout = 10 * time.Second
	DefaultIdleTimeout       = 60 * time.Second
	DefaultHandshakeTimeout  = 10 * time.Second
	DefaultShutdownTimeout   = 15 * time.Second
	// DefaultTunnelIdleTimeout is Envoy's tcp_proxy idle_timeout default.
	DefaultTunnelIdleTimeout = time.Hour
	DefaultMaxHeaderBytes    = 64 << 10
	DefaultMaxConnections    = 4096
	// firstByteTimeout: a client that connects sends its ClientHello (or
	// request line) at once; one that stays silent this long is closed,
	// well before handshake_timeout, so idle sockets cannot hold
	// connection slots for long.
	firstByteTimeout = 2 * time.Second
	DefaultSVIDWait  = 60 * time.Second
)

// Protocols a listener speaks.
const (
	ProtocolHTTP = "http"
	ProtocolTCP  = "tcp"
)

// Config is the proxy configuration as written in YAML; flags override it.
type Config struct {
	// Socket is the agent's Workload API socket (unix:///path or /path);
	// SPIFFE_ENDPOINT_SOCKET when unset, then DefaultSocket.
	Socket string `yaml:"socket"`
	// SVIDID picks one of several SVIDs the Workload API offers; the first
	// (default) one otherwise.
	SVIDID string `yaml:"svid_id"`
	// Namespace and Labels are the workload's: they select which policies
	// apply. The namespace defaults to the SVID's /ns/<ns>/ segment.
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
	// TrustDomains a peer may belong to; the SVID's own by default.
	TrustDomains []string       `yaml:"trust_domains"`
	Policy       PolicyConfig   `yaml:"policy"`
	Inbound      []ListenerSpec `yaml:"inbound"`
	Outbound     []ListenerSpec `yaml:"outbound"`
	Limits       LimitsConfig   `yaml:"limits"`
	// StripHeaders are removed from every inbound request before it is
	// forwarded, in addition to X-Forwarded-Client-Cert and X-Trustmesh-*.
	StripHeaders []string `yaml:"strip_headers"`
	// AuditLog is the decision log: "-" or empty for stdout, or a file.
	AuditLog    string `yaml:"audit_log"`
	MetricsAddr string `yaml:"metrics_addr"`
	LogLevel    string `yaml:"log_level"`
	LogFormat   string `yaml:"log_format"`
}

// PolicyConfig is where policy comes from and how it compiles.
type PolicyConfig struct {
	Paths              []string `yaml:"paths"`
	Data               []string `yaml:"data"`
	Query              string   `yaml:"query"`
	RegoVersion        string   `yaml:"rego_version"`
	RootNamespaces     []string `yaml:"root_namespaces"`
	TrustDomainAliases []string `yaml:"trust_domain_aliases"`
	// DefaultMTLS applies where no PeerAuthentication sets a mode.
	DefaultMTLS string `yaml:"default_mtls"`
}

// ListenerSpec is one inbound or outbound listener.
type ListenerSpec struct {
	Name     string `yaml:"name"`
	Listen   string `yaml:"listen"`
	Protocol string `yaml:"protocol"` // http (default) or tcp
	// Inbound: Forward is the application's address; Port is the workload
	// port policies and PeerAuthentication name (default: Forward's port);
	// Backend is how HTTP reaches the application: http1 (default) or h2c
	// (HTTP/2 without TLS, for gRPC).
	Forward string `yaml:"forward"`
	Port    uint32 `yaml:"port"`
	Backend string `yaml:"backend"`
	// Outbound: Upstream is the peer proxy's HOST:PORT, SPIFFEIDs the
	// identities it may present (one of them).
	Upstream  string   `yaml:"upstream"`
	SPIFFEIDs []string `yaml:"spiffe_ids"`
}

// LimitsConfig bounds what one client can hold.
type LimitsConfig struct {
	HeaderReadTimeout configfile.Duration `yaml:"header_read_timeout"`
	IdleTimeout       configfile.Duration `yaml:"idle_timeout"`
	HandshakeTimeout  configfile.Duration `yaml:"handshake_timeout"`
	ShutdownTimeout   configfile.Duration `yaml:"shutdown_timeout"`
	TunnelIdleTimeout configfile.Duration `yaml:"tunnel_idle_timeout"`
	MaxHeaderBytes    int                 `yaml:"max_header_bytes"`
	MaxConnections    int                 `yaml:"max_connections"`
}

// Settings is the validated configuration.
type Settings struct {
	Socket        string
	SVIDID        spiffeid.ID // zero: the default SVID
	Namespace     string
	Labels        map[string]string
	TrustDomains  []spiffeid.TrustDomain
	PolicyPaths   []string
	PolicyData    []string
	PolicyOptions policy.Options
	Inbound       []Listener
	Outbound      []Listener
	StripHeaders  []string // canonical names
	AuditLog      string
	MetricsAddr   string
	LogLevel      string
	LogFormat     string

	HeaderReadTimeout time.Duration
	IdleTimeout       time.Duration
	HandshakeTimeout  time.Duration
	ShutdownTimeout   time.Duration
	TunnelIdleTimeout time.Duration // TCP and WebSocket tunnels
	MaxHeaderBytes    int
	MaxConnections    int // per direction: inbound listeners together, outbound together
	SVIDWait          time.Duration
	// PolicyDebounce is how long policy file changes settle before a reload.
	PolicyDebounce time.Duration
}

// Listener is a validated ListenerSpec.
type Listener struct {
	Name      string
	Listen    string
	Protocol  string
	Forward   string
	Port      uint32
	H2C       bool
	Upstream  string
	SPIFFEIDs []spiffeid.ID
}

// LoadSettings decodes the config file (if path is set), applies override
// (the flags) and validates, reporting every problem.
func LoadSettings(path string, override func(*Config)) (Settings, error) {
	var (
		c       Config
		loadErr error
	)
	if path != "" {
		if loadErr = configfile.Load(path, &c); configfile.Fatal(loadErr) {
			return Settings{}, loadErr
		}
		// Policy paths in the file are relative to the file.
		dir := filepath.Dir(path)
		for _, l := range []*[]string{&c.Policy.Paths, &c.Policy.Data} {
			for i, p := range *l {
				if p != "" && !filepath.IsAbs(p) {
					(*l)[i] = filepath.Join(dir, p)
				}
			}
		}
	}
	if override != nil {
		override(&c)
	}
	set, err := c.Resolve()
	return set, errors.Join(loadErr, err)
}

// Resolve applies defaults and validates, reporting every problem.
func (c Config) Resolve() (Settings, error) {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	s := Settings{
		Socket:         c.Socket,
		Namespace:      c.Namespace,
		Labels:         c.Labels,
		PolicyPaths:    c.Policy.Paths,
		PolicyData:     c.Policy.Data,
		AuditLog:       c.AuditLog,
		MetricsAddr:    c.MetricsAddr,
		LogLevel:       strings.ToLower(orDefault(c.LogLevel, "info")),
		LogFormat:      strings.ToLower(orDefault(c.LogFormat, "text")),
		MaxHeaderBytes: c.Limits.MaxHeaderBytes,
		MaxConnections: c.Limits.MaxConnections,
		SVIDWait:       DefaultSVIDWait,
		PolicyDebounce: 200 * time.Millisecond,
	}
	if s.Socket == "" {
		s.Socket = os.Getenv("SPIFFE_ENDPOINT_SOCKET")
	}
	if s.Socket == "" {
		s.Socket = DefaultSocket
	}
	s.Socket = strings.TrimPrefix(s.Socket, "unix://")
	if !strings.HasPrefix(s.Socket, "/") {
		add("socket %q: want an absolute path or unix:///path", c.Socket)
	}
	if c.SVIDID != "" {
		id, err := spiffeid.FromString(c.SVIDID)
		if err != nil {
			add("svid_id %q: %v", c.SVIDID, err)
		}
		s.SVIDID = id
	}
	for k := range c.Labels {
		if k == "" {
			add("labels: empty label key")
		}
	}
	for _, td := range c.TrustDomains {
		t, err := spiffeid.TrustDomainFromString(td)
		if err != nil {
			add("trust_domains %q: %v", td, err)
			continue
		}
		s.TrustDomains = append(s.TrustDomains, t)
	}
	errs = append(errs, configfile.CheckLogging(s.LogLevel, s.LogFormat)...)
	// What run would refuse when it opens the audit log, validate reports
	// now (without creating anything).
	if err := auditfile.Check(s.AuditLog); err != nil {
		errs = append(errs, err)
	}

	// Policy.
	s.PolicyOptions = policy.Options{
		TrustDomainAliases: c.Policy.TrustDomainAliases,
		RootNamespaces:     c.Policy.RootNamespaces,
		RegoQuery:          c.Policy.Query,
		RegoVersion:        c.Policy.RegoVersion,
	}
	if c.Policy.DefaultMTLS != "" {
		m, err := policy.ParseMTLSMode(strings.ToUpper(c.Policy.DefaultMTLS))
		if err != nil {
			add("policy.default_mtls: %v", err)
		}
		s.PolicyOptions.DefaultMTLS = m
	}
	switch c.Policy.RegoVersion {
	case "", "auto", "v0", "v1":
	default:
		add("policy.rego_version %q: want auto, v0 or v1", c.Policy.RegoVersion)
	}
	for _, p := range append(append([]string{}, c.Policy.Paths...), c.Policy.Data...) {
		if _, err := os.Stat(p); err != nil {
			add("policy: %v", err)
		}
	}

	// Limits.
	dur := func(key string, d configfile.Duration, def time.Duration) time.Duration {
		v, err := d.Parse(key, def)
		if err != nil {
			errs = append(errs, err)
		} else if v <= 0 {
			add("%s: must be positive", key)
		}
		return v
	}
	s.HeaderReadTimeout = dur("limits.header_read_timeout", c.Limits.HeaderReadTimeout, DefaultHeaderReadTimeout)
	s.IdleTimeout = dur("limits.idle_timeout", c.Limits.IdleTimeout, DefaultIdleTimeout)
	s.HandshakeTimeout = dur("limits.handshake_timeout", c.Limits.HandshakeTimeout, DefaultHandshakeTimeout)
	s.ShutdownTimeout = dur("limits.shutdown_timeout", c.Limits.ShutdownTimeout, DefaultShutdownTimeout)
	s.TunnelIdleTimeout = dur("limits.tunnel_idle_timeout", c.Limits.TunnelIdleTimeout, DefaultTunnelIdleTimeout)
	if s.MaxHeaderBytes == 0 {
		s.MaxHeaderBytes = DefaultMaxHeaderBytes
	} else if s.MaxHeaderBytes < 1024 || s.MaxHeaderBytes > 1<<20 {
		add("limits.max_header_bytes %d: want 1024 to 1048576", s.MaxHeaderBytes)
	}
	if s.MaxConnections == 0 {
		s.MaxConnections = DefaultMaxConnections
	} else if s.MaxConnections < 1 {
		add("limits.max_connections %d: must be positive", s.MaxConnections)
	}

	// Headers: the identity headers are always stripped.
	s.StripHeaders = []string{"X-Forwarded-Client-Cert"}
	for _, h := range c.StripHeaders {
		if h == "" || strings.ContainsAny(h, " :\t") {
			add("strip_headers %q: not a header name", h)
			continue
		}
		s.StripHeaders = append(s.StripHeaders, httpx.CanonicalName(http.CanonicalHeaderKey(h)))
	}

	// Listeners.
	if len(c.Inbound) == 0 && len(c.Outbound) == 0 {
		add("no listeners: configure inbound and/or outbound (or --inbound-listen/--outbound-listen)")
	}
	names := map[string]bool{}
	addrs := map[string]string{}
	for i, l := range c.Inbound {
		key := fmt.Sprintf("inbound[%d]", i)
		out := Listener{Name: orDefault(l.Name, fmt.Sprintf("inbound-%d", i)), Listen: l.Listen, Protocol: orDefault(strings.ToLower(l.Protocol), ProtocolHTTP), Forward: l.Forward, Port: l.Port}
		checkListener(key, out, names, addrs, add)
		if err := configfile.CheckHostPort(key+".forward", l.Forward); err != nil {
			errs = append(errs, err)
		} else if out.Port == 0 {
			_, p, _ := net.SplitHostPort(l.Forward)
			n, _ := strconv.ParseUint(p, 10, 16)
			out.Port = uint32(n)
		}
		if out.Port > 65535 {
			add("%s.port %d: not a port number", key, out.Port)
		}
		switch strings.ToLower(l.Backend) {
		case "", "http1":
		case "h2c":
			out.H2C = true
		default:
			add("%s.backend %q: want http1 or h2c", key, l.Backend)
		}
		if l.Upstream != "" || len(l.SPIFFEIDs) > 0 {
			add("%s: upstream and spiffe_ids are outbound settings", key)
		}
		s.Inbound = append(s.Inbound, out)
	}
	for i, l := range c.Outbound {
		key := fmt.Sprintf("outbound[%d]", i)
		out := Listener{Name: orDefault(l.Name, fmt.Sprintf("outbound-%d", i)), Listen: l.Listen, Protocol: orDefault(strings.ToLower(l.Protocol), ProtocolHTTP), Upstream: l.Upstream}
		checkListener(key, out, names, addrs, add)
		if err := configfile.CheckHostPort(key+".upstream", l.Upstream); err != nil {
			errs = append(errs, err)
		}
		if len(l.SPIFFEIDs) == 0 {
			add("%s.spiffe_ids: name the SPIFFE ID(s) the upstream must present", key)
		}
		for _, v := range l.SPIFFEIDs {
			id, err := spiffeid.FromString(v)
			if err != nil {
				add("%s.spiffe_ids %q: %v", key, v, err)
				continue
			}
			out.SPIFFEIDs = append(out.SPIFFEIDs, id)
		}
		if l.Forward != "" || l.Port != 0 || l.Backend != "" {
			add("%s: forward, port and backend are inbound settings", key)
		}
		s.Outbound = append(s.Outbound, out)
	}
	return s, errors.Join(errs...)
}

func checkListener(key string, l Listener, names map[string]bool, addrs map[string]string, add func(string, ...any)) {
	if names[l.Name] {
		add("%s.name %q: used twice", key, l.Name)
	}
	names[l.Name] = true
	switch l.Protocol {
	case ProtocolHTTP, ProtocolTCP:
	default:
		add("%s.protocol %q: want http or tcp", key, l.Protocol)
	}
	if err := configfile.CheckHostPort(key+".listen", l.Listen); err != nil {
		add("%v", err)
		return
	}
	if _, p, _ := net.SplitHostPort(l.Listen); p != "0" {
		if prev, dup := addrs[l.Listen]; dup {
			add("%s.listen %q: also used by %s", key, l.Listen, prev)
		}
		addrs[l.Listen] = key
	}
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
