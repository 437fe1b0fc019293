package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/trustmesh/trustmesh/internal/apiclient"
	"github.com/trustmesh/trustmesh/internal/server"
)

func newServerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run and check the control plane (CA, registry, admin and agent APIs)",
		Example: `  trustmesh server run --trust-domain example.org
  trustmesh server validate --config server.yaml`,
	}
	cmd.AddCommand(newServerRunCmd(), newServerValidateCmd(), newServerHealthcheckCmd())
	return cmd
}

// serverFlags are the flags that override the YAML config.
type serverFlags struct {
	config      string
	dataDir     string
	trustDomain string
	listen      string
	datastore   string
	adminSocket string
	metricsAddr string
	logLevel    string
	logFormat   string
}

func (f *serverFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "YAML config file (flags override its values)")
	fl.StringVar(&f.dataDir, "data-dir", "", "data directory (default "+server.DefaultDataDir+")")
	fl.StringVar(&f.trustDomain, "trust-domain", "", "trust domain (default "+server.DefaultTrustDomain+")")
	fl.StringVar(&f.listen, "listen", "", "mTLS listener for agents and remote admins (default "+server.DefaultListen+")")
	fl.StringVar(&f.datastore, "datastore", "", "sqlite:///path or postgres://... (default sqlite://<data-dir>/datastore.sqlite3)")
	fl.StringVar(&f.adminSocket, "admin-socket", "", "admin unix socket (default <data-dir>/admin.sock)")
	fl.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on HOST:PORT (off unless set)")
	fl.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (default info)")
	fl.StringVar(&f.logFormat, "log-format", "", "text or json (default text)")
}

// settings loads the config file, if any, applies the flags that were set
// and resolves the result, reporting every problem at once.
func (f *serverFlags) settings(cmd *cobra.Command) (server.Settings, error) {
	return server.LoadSettings(f.config, func(c *server.Config) {
		set := func(flag string, dst *string, v string) {
			if cmd.Flags().Changed(flag) {
				*dst = v
			}
		}
		set("data-dir", &c.DataDir, f.dataDir)
		set("trust-domain", &c.TrustDomain, f.trustDomain)
		set("listen", &c.Listen, f.listen)
		set("datastore", &c.Datastore, f.datastore)
		set("admin-socket", &c.AdminSocket, f.adminSocket)
		set("metrics-addr", &c.MetricsAddr, f.metricsAddr)
		set("log-level", &c.LogLevel, f.logLevel)
		set("log-format", &c.LogFormat, f.logFormat)
	})
}

func newServerRunCmd() *cobra.Command {
	var f serverFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the control plane",
		Long: `Run the control plane: the CA (self-signed or under an upstream CA, rotated
automatically), the registration and agent registry in SQLite or PostgreSQL,
the admin API on a local unix socket (mode 0600), and the agent and remote
admin APIs over mTLS on --listen. Several servers may share one PostgreSQL
database. SIGUSR1 reopens the audit log file (rotation: rename it, then
signal). Stops cleanly on SIGINT/SIGTERM.`,
		Example: `  # Embedded datastore in ./.trustmesh/server
  trustmesh server run --trust-domain example.org

  # One of several replicas on PostgreSQL, with metrics
  trustmesh server run --config server.yaml \
      --datastore 'postgres://trustmesh@db:5432/trustmesh' --metrics-addr 127.0.0.1:9090`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := f.settings(cmd)
			if err != nil {
				return fmt.Errorf("invalid configuration:\n%w", indentErrors(err))
			}
			log := newLogger(set.LogLevel, set.LogFormat)
			return server.New(set, log).Run(cmd.Context())
		},
	}
	f.register(cmd)
	return cmd
}

func newServerValidateCmd() *cobra.Command {
	var f serverFlags
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a server config file and report every problem in it",
		Example: `  trustmesh server validate --config server.yaml
  trustmesh server validate --config server.yaml --datastore postgres://db/trustmesh`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.config == "" {
				return usageErrorf(cmd, "--config is required")
			}
			set, err := f.settings(cmd)
			for _, w := range set.Warnings {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", w)
			}
			if err != nil {
				return fmt.Errorf("%s is invalid:\n%w", f.config, indentErrors(err))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: configuration is valid\n", f.config)
			return nil
		},
	}
	f.register(cmd)
	return cmd
}

func newServerHealthcheckCmd() *cobra.Command {
	var conn adminConn
	cmd := &cobra.Command{
		Use:     "healthcheck",
		Short:   "Exit 0 if the server answers on its admin socket",
		Example: "  trustmesh server healthcheck --admin-socket ./.trustmesh/server/admin.sock",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return conn.call(cmd, func(c *apiclient.Client) error {
				if err := c.Health(cmd.Context()); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "server is healthy")
				return nil
			})
		},
	}
	conn.register(cmd, false)
	return cmd
}

// indentErrors puts each joined error on its own indented line.
func indentErrors(err error) error {
	var lines []string
	for _, l := range strings.Split(err.Error(), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, "  - "+l)
		}
	}
	return errors.New(strings.Join(lines, "\n"))
}

func newLogger(level, format string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
