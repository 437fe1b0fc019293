package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/trustmesh/trustmesh/internal/gateway"
	"github.com/trustmesh/trustmesh/internal/gctune"
)

func newGatewayCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run the identity-aware access gateway for people (OIDC, sessions, bearer JWTs)",
		Long: `The access gateway: OIDC login with server-side sessions, bearer JWT
validation, a reverse proxy that hands upstreams a signed identity, and an
nginx auth_request endpoint compatible with oauth2-proxy. See docs/gateway.md.`,
		Example: `  trustmesh gateway validate --config gateway.yaml
  trustmesh gateway run --config gateway.yaml`,
	}
	cmd.AddCommand(newGatewayRunCmd(), newGatewayValidateCmd())
	return cmd
}

type gatewayFlags struct {
	config, listen, auditLog, metricsAddr, logLevel, logFormat string
}

func (f *gatewayFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "YAML config file (required)")
	fl.StringVar(&f.listen, "listen", "", "override listen HOST:PORT")
	fl.StringVar(&f.auditLog, "audit-log", "", "decision audit log file (default stdout)")
	fl.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on HOST:PORT (off unless set)")
	fl.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (default info)")
	fl.StringVar(&f.logFormat, "log-format", "", "text or json (default text)")
}

func (f *gatewayFlags) settings(cmd *cobra.Command) (gateway.Settings, error) {
	if f.config == "" {
		return gateway.Settings{}, usageErrorf(cmd, "--config is required")
	}
	return gateway.LoadSettings(f.config, func(c *gateway.Config) {
		changed := cmd.Flags().Changed
		set := func(flag string, dst *string, v string) {
			if changed(flag) {
				*dst = v
			}
		}
		set("listen", &c.Listen, f.listen)
		set("audit-log", &c.AuditLog, f.auditLog)
		set("metrics-addr", &c.MetricsAddr, f.metricsAddr)
		set("log-level", &c.LogLevel, f.logLevel)
		set("log-format", &c.LogFormat, f.logFormat)
	})
}

func newGatewayRunCmd() *cobra.Command {
	var f gatewayFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the access gateway",
		Long: `Run the gateway. Browsers without a session are sent to the route's OIDC
identity provider (authorization code + PKCE S256, state and nonce) and come
back through /oauth2/callback to a server-side session (memory, sqlite:///path
or redis://host:port/db, shared by replicas); the cookie holds only an opaque
id. APIs present bearer JWTs, verified against the issuer's JWKS.

Requests for a route's host are proxied to its upstream (HTTP/1.1, WebSocket,
HTTP/2 and gRPC) with X-Auth-Request-User/-Email/-Groups and a signed
X-Trustmesh-Jwt-Assertion; identity headers a client sends are removed.
nginx's auth_request asks GET /oauth2/auth: 202 with the identity headers,
401 unauthenticated, 403 refused (oauth2-proxy's conventions).

Every decision is a JSON line in the audit log, in the proxy's format;
SIGUSR1 reopens the audit log file (rotation: rename it, then signal).
SIGTERM drains in-flight requests.`,
		Example: `  trustmesh gateway run --config examples/gateway/gateway.yaml

  # Decisions to a file, metrics on :9102
  trustmesh gateway run --config gateway.yaml --audit-log gateway-audit.log --metrics-addr 127.0.0.1:9102`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := f.settings(cmd)
			if err != nil {
				if _, ok := err.(*usageError); ok {
					return err
				}
				return fmt.Errorf("invalid configuration:\n%w", indentErrors(err))
			}
			// A small live heap would be collected every few MiB under
			// load; let it grow by 32 MiB first (GOGC/GOMEMLIMIT override).
			gctune.Start(cmd.Context(), gatewayGCHeadroom)
			log := newLogger(set.LogLevel, set.LogFormat)
			for _, w := range set.Warnings {
				log.Warn("configuration: " + w)
			}
			return gateway.New(set, log, gateway.Options{}).Run(cmd.Context())
		},
	}
	f.register(cmd)
	return cmd
}

func newGatewayValidateCmd() *cobra.Command {
	var f gatewayFlags
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a gateway config file and report every problem in it",
		Long: `Check a gateway config file without contacting any identity provider:
every key, value, file and route policy is checked and every problem
reported with its place, including what run would refuse on start (a
signing key file others may read, an audit log whose directory is
missing). It creates nothing.`,
		Example: "  trustmesh gateway validate --config gateway.yaml",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := f.settings(cmd)
			if err != nil {
				if _, ok := err.(*usageError); ok {
					return err
				}
				return fmt.Errorf("%s is invalid:\n%w", f.config, indentErrors(err))
			}
			if _, err := gateway.CompilePolicies(cmd.Context(), set); err != nil {
				return fmt.Errorf("%s: %w", f.config, err)
			}
			for _, w := range set.Warnings {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: warning: %s\n", f.config, w)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: configuration is valid\n", f.config)
			return nil
		},
	}
	f.register(cmd)
	// run's overrides are accepted (validate checks the config as run
	// would see it) but are not validate's business in --help.
	for _, name := range []string{"listen", "audit-log", "metrics-addr", "log-level", "log-format"} {
		_ = cmd.Flags().MarkHidden(name)
	}
	return cmd
}

// gatewayGCHeadroom is how far the gateway's heap may grow between
// collections at least (internal/gctune). In bench/gateway.sh it cut the
// gateway's CPU per request by a tenth (46 to 41 µs with a session);
// 16, 32 and 64 MiB measured alike.
const gatewayGCHeadroom = 32 << 20
