package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/trustmesh/trustmesh/internal/agent"
)

// agentFlags override the agent's YAML config.
type agentFlags struct {
	config, server, trustDomain, trustBundle, joinToken string
	socket, dataDir, metricsAddr, logLevel, logFormat   string
	x509popCert, x509popKey                             string
}

func (f *agentFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "YAML config file (flags override its values)")
	fl.StringVar(&f.server, "server", "", "server HOST:PORT (its mTLS listener)")
	fl.StringVar(&f.trustBundle, "trust-bundle", "", "PEM trust bundle to verify the server with until the agent has its own (trustmesh bundle show)")
	fl.StringVar(&f.trustDomain, "trust-domain", "", "trust domain (default: read from the trust bundle's CA)")
	fl.StringVar(&f.joinToken, "join-token", "", "join token for the first attestation (trustmesh token generate)")
	fl.StringVar(&f.x509popCert, "x509pop-cert", "", "node certificate for x509pop attestation")
	fl.StringVar(&f.x509popKey, "x509pop-key", "", "private key of --x509pop-cert")
	fl.StringVar(&f.socket, "socket", "", "Workload API and SDS socket (default "+agent.DefaultSocket+")")
	fl.StringVar(&f.dataDir, "data-dir", "", "data directory (default "+agent.DefaultDataDir+")")
	fl.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on HOST:PORT (off unless set)")
	fl.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (default info)")
	fl.StringVar(&f.logFormat, "log-format", "", "text or json (default text)")
}

func (f *agentFlags) settings(cmd *cobra.Command) (agent.Settings, error) {
	return agent.LoadSettings(f.config, func(c *agent.Config) {
		set := func(flag string, dst *string, v string) {
			if cmd.Flags().Changed(flag) {
				*dst = v
			}
		}
		set("server", &c.Server, f.server)
		set("trust-bundle", &c.TrustBundle, f.trustBundle)
		set("trust-domain", &c.TrustDomain, f.trustDomain)
		set("join-token", &c.JoinToken, f.joinToken)
		set("socket", &c.Socket, f.socket)
		set("data-dir", &c.DataDir, f.dataDir)
		set("metrics-addr", &c.MetricsAddr, f.metricsAddr)
		set("log-level", &c.LogLevel, f.logLevel)
		set("log-format", &c.LogFormat, f.logFormat)
		if cmd.Flags().Changed("x509pop-cert") || cmd.Flags().Changed("x509pop-key") {
			if c.X509PoP == nil {
				c.X509PoP = &agent.X509PoPConfig{}
			}
			set("x509pop-cert", &c.X509PoP.CertFile, f.x509popCert)
			set("x509pop-key", &c.X509PoP.KeyFile, f.x509popKey)
		}
	})
}

func newAgentRunCmd() *cobra.Command {
	var f agentFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the node agent: Workload API and Envoy SDS for this node's workloads",
		Long: `Run the node agent. It attests this node to the server (join token or x509pop),
keeps the SVIDs of the node's registered workloads current (changes pushed by
the server, rotation at half-life), and serves them on a unix socket through
the SPIFFE Workload API and Envoy's SDS. Callers are identified by their
process credentials (unix:uid, unix:gid, unix:user, unix:group, unix:path,
unix:sha256 selectors). If the server is unreachable, cached SVIDs are served
until they expire. The agent's SVID is saved in the data dir, so a restart
needs no new token.`,
		Example: `  trustmesh bundle show > bundle.pem
  trustmesh agent run --server 127.0.0.1:8081 --trust-bundle bundle.pem \
      --join-token "$(trustmesh token generate)"

  # x509pop: the node's certificate must chain to a CA in the server's
  # node_attestation.x509pop.ca_bundle_file
  trustmesh agent run --server ca.internal:8081 --trust-bundle bundle.pem \
      --x509pop-cert /etc/node/cert.pem --x509pop-key /etc/node/key.pem`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := f.settings(cmd)
			if err != nil {
				return fmt.Errorf("invalid configuration:\n%w", indentErrors(err))
			}
			a, err := agent.New(set, newLogger(set.LogLevel, set.LogFormat))
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	f.register(cmd)
	return cmd
}

func newAgentValidateCmd() *cobra.Command {
	var f agentFlags
	cmd := &cobra.Command{
		Use:     "validate",
		Short:   "Check an agent config file and report every problem in it",
		Example: "  trustmesh agent validate --config agent.yaml",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.config == "" {
				return usageErrorf(cmd, "--config is required")
			}
			if _, err := f.settings(cmd); err != nil {
				return fmt.Errorf("%s is invalid:\n%w", f.config, indentErrors(err))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: configuration is valid\n", f.config)
			return nil
		},
	}
	f.register(cmd)
	return cmd
}
