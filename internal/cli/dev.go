package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/trustmesh/trustmesh/internal/dev"
)

func newDevCmd() *cobra.Command {
	var o dev.Options
	var color string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole zero-trust mesh on this machine: server, agent, and the seeds' demo services",
		Long: `Start a complete Trustmesh mesh on loopback, in one process tree:

  - the control plane (embedded SQLite in --data-dir) and a node agent;
  - unless --no-demo, the seeds' topology: ingress → frontend → api, auth;
    api → database, cache, auth; auth → database. Each service is a child
    process with a small built-in HTTP app and its own sidecar proxy.

Nothing takes a shortcut: every workload gets its SVID from the agent's
Workload API after workload attestation (each child runs from its own hard
link of this binary, and its entry selects unix:path and unix:uid — no root
needed), every hop crosses mTLS between two proxies, and every decision comes
from the policy engine reading the policy files in <data-dir>/policies
(seeded from examples/policies/matrix; edit them and the change applies
live). A traffic generator calls allowed and forbidden edges through the
ingress; the live feed shows each decision. Ctrl-C stops everything and
removes the sockets.`,
		Example: `  go run ./cmd/trustmesh dev                 # then, in another terminal:
  curl http://127.0.0.1:18000/                # the call tree, hop by hop over mTLS
  curl -i http://127.0.0.1:18000/call/database   # frontend → database: 403
  trustmesh dev status

  trustmesh dev --permissive                  # plaintext accepted, served as unauthenticated
  trustmesh dev --reset --base-port 28000`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch color {
			case "auto":
				o.Color = isTerminal(os.Stdout) && os.Getenv("NO_COLOR") == ""
			case "always":
				o.Color = true
			case "never":
			default:
				return usageErrorf(cmd, "--color %q: want auto, always or never", color)
			}
			if o.BasePort < 0 || o.BasePort > 65000 {
				return usageErrorf(cmd, "--base-port %d: want 0 (any free ports) or a port up to 65000", o.BasePort)
			}
			o.Out = cmd.OutOrStdout()
			return dev.Run(cmd.Context(), o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.DataDir, "data-dir", dev.DefaultDataDir, "data directory (SQLite datastore, keys, policies, logs)")
	fl.BoolVar(&o.Reset, "reset", false, "wipe the data directory first")
	fl.BoolVar(&o.NoDemo, "no-demo", false, "run only the server and the agent")
	fl.BoolVar(&o.Permissive, "permissive", false, "PERMISSIVE mTLS: plaintext accepted and served as unauthenticated")
	fl.IntVar(&o.BasePort, "base-port", dev.DefaultBasePort, "first of the demo's ports (ingress; the rest follow); 0 for any free ports")
	fl.StringVar(&o.PolicyDir, "policy", "", "policy directory (default <data-dir>/policies, seeded from examples/policies/matrix)")
	fl.DurationVar(&o.Interval, "traffic-interval", dev.DefaultInterval, "how often the traffic generator makes a call")
	fl.StringVar(&color, "color", "auto", "colour the feed: auto, always or never (NO_COLOR is honoured)")
	cmd.AddCommand(newDevStatusCmd(), newDevWorkloadCmd())
	return cmd
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func newDevStatusCmd() *cobra.Command {
	var dataDir string
	var out outputFlag
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a running dev mesh: services, identities and SVID expiry, requests per edge",
		Long: `Print the services of the dev mesh running in --data-dir, the SPIFFE ID and
SVID expiry each sidecar holds, and the requests allowed and denied per edge
(from the sidecars' metrics). Exits 1 when no dev mesh is running there.`,
		Example: `  trustmesh dev status
  trustmesh dev status --data-dir /tmp/mesh -o json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := noArgs(cmd, args); err != nil {
				return err
			}
			return out.check(cmd)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := dev.GetStatus(cmd.Context(), dataDir)
			if errors.Is(err, dev.ErrNotRunning) {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
				return errSilentFailure
			}
			if err != nil {
				return err
			}
			if out.json() {
				return printJSON(cmd.OutOrStdout(), st)
			}
			st.Print(cmd.OutOrStdout())
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", dev.DefaultDataDir, "the dev mesh's data directory")
	out.register(cmd)
	return cmd
}

// newDevWorkloadCmd is the child process of one demo service (started by
// `trustmesh dev`, not by people).
func newDevWorkloadCmd() *cobra.Command {
	var specFile string
	cmd := &cobra.Command{
		Use:     "workload --spec FILE",
		Short:   "Run one demo workload (its app and sidecar); started by trustmesh dev",
		Example: "  trustmesh dev workload --spec .trustmesh/dev/run/api.json",
		Hidden:  true,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := os.ReadFile(specFile)
			if err != nil {
				return err
			}
			var spec dev.WorkloadSpec
			if err := json.Unmarshal(data, &spec); err != nil {
				return fmt.Errorf("%s: %w", specFile, err)
			}
			return dev.RunWorkload(cmd.Context(), spec, newLogger("info", "text"), cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&specFile, "spec", "", "the workload spec written by trustmesh dev")
	return cmd
}
