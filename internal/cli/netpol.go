package cli

import (
	"github.com/spf13/cobra"
)

func newNetpolCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "netpol",
		Short: "Analyze, explain, lint and generate Kubernetes NetworkPolicies offline",
		Long: `Work with Kubernetes NetworkPolicy (networking.k8s.io/v1) offline, from the
YAML you already have (kubectl get ns,pods,networkpolicies -A -o yaml, or a
Git repository of manifests), with the upstream API's semantics.`,
		Example: `  kubectl get ns,pods,networkpolicies -A -o yaml > cluster.yaml
  trustmesh netpol matrix -f cluster.yaml`,
	}
	return cmd
}
