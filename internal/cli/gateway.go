package cli

import (
	"github.com/spf13/cobra"
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
	return cmd
}
