// Package cli builds trustmesh's command tree. Every command has help with
// an example; admin commands share the connection and output flags.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// Main runs the CLI with args and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := NewRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		if errors.Is(err, errSilentFailure) {
			return 1 // the command printed its own report
		}
		var ue *usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "Error: %v\nRun '%s --help' for usage.\n", ue.err, ue.cmd)
			return 2
		}
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return 1
	}
	return 0
}

// usageError is a mistake in how a command was called (exit code 2).
type usageError struct {
	cmd string
	err error
}

func (e *usageError) Error() string { return e.err.Error() }

func usageErrorf(cmd *cobra.Command, format string, a ...any) error {
	return &usageError{cmd: cmd.CommandPath(), err: fmt.Errorf(format, a...)}
}

// NewRoot builds the command tree.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "trustmesh",
		Short: "Zero-trust networking: workload identity, mTLS and policy in one binary",
		Long: `Trustmesh gives every workload a SPIFFE identity, authenticates and encrypts every
connection with mTLS, authorizes every request against explicit policy and
records every decision.

Roles run as subcommands of this one binary; admin commands talk to the
server's admin socket (or, with --server, to its mTLS listener).`,
		Example: `  # Start a control plane with an embedded datastore
  trustmesh server run --trust-domain example.org

  # Register a workload and mint a join token for a node agent
  trustmesh entry create --spiffe-id spiffe://example.org/ns/default/sa/api \
      --parent-id spiffe://example.org/trustmesh/agent/join_token/<id> --selector unix:uid:1000
  trustmesh token generate --ttl 10m`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &usageError{cmd: c.CommandPath(), err: err}
	})
	root.AddCommand(
		newVersionCmd(),
		newServerCmd(),
		newEntryCmd(),
		newTokenCmd(),
		newAgentCmd(),
		newBundleCmd(),
		newX509Cmd(),
		newJWTCmd(),
		newAPICmd(),
		newPolicyCmd(),
		newProxyCmd(),
		newGatewayCmd(),
		newNetpolCmd(),
		newDevCmd(),
	)
	return root
}

// noArgs rejects positional arguments with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf(cmd, "unexpected argument %q", args[0])
	}
	return nil
}

// exactArgs requires n positional arguments, named in the message.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErrorf(cmd, "want %s, got %d argument(s)", what, len(args))
		}
		return nil
	}
}
