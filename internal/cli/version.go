package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/trustmesh/trustmesh/internal/buildinfo"
)

func newVersionCmd() *cobra.Command {
	var out outputFlag
	cmd := &cobra.Command{
		Use:     "version",
		Short:   "Print the version of this binary",
		Example: "  trustmesh version\n  trustmesh version -o json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			i := buildinfo.Get()
			if out.json() {
				return printJSON(cmd.OutOrStdout(), i)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "trustmesh %s (commit %s, %s, %s)\n", i.Version, i.Commit, i.GoVersion, i.Platform)
			return nil
		},
	}
	out.register(cmd)
	return cmd
}
