package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/apiclient"
	"github.com/trustmesh/trustmesh/internal/ca"
	"github.com/trustmesh/trustmesh/internal/ca/keymanager"
)

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "token",
		Short:   "Manage join tokens for node attestation",
		Example: "  trustmesh token generate --ttl 10m\n  trustmesh token revoke 0123456789abcdef",
	}
	var conn adminConn
	var ttl time.Duration
	gen := &cobra.Command{
		Use:   "generate",
		Short: "Mint a single-use join token and print it",
		Long: `Mint a single-use join token. An agent attesting with it gets the SPIFFE ID
spiffe://<trust-domain>/trustmesh/agent/join_token/<token id>; register
workloads with that ID as their parent. The token is printed once: the
server keeps only a hash of its secret.`,
		Example: "  trustmesh token generate\n  trustmesh token generate --ttl 1h -o json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := wholeSeconds(cmd, "ttl", ttl); err != nil {
				return err
			}
			return conn.call(cmd, func(c *apiclient.Client) error {
				tok, err := c.GenerateToken(cmd.Context(), ttl)
				if err != nil {
					return err
				}
				return conn.emit(cmd, tok, func(w io.Writer) error {
					// The token alone on stdout, so TOKEN=$(trustmesh token generate) works.
					fmt.Fprintf(cmd.ErrOrStderr(), "agent SPIFFE ID: %s (token expires %s)\n", tok.AgentSPIFFEID, fmtTime(tok.ExpiresAt))
					_, err := fmt.Fprintln(w, tok.Token)
					return err
				})
			})
		},
	}
	gen.Flags().DurationVar(&ttl, "ttl", 0, "how long the token may be used (default: the server's join_token_ttl, 10m)")
	conn.register(gen, true)
	cmd.AddCommand(gen, newTokenRevokeCmd())
	return cmd
}

func newTokenRevokeCmd() *cobra.Command {
	var conn adminConn
	cmd := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an unused join token",
		Long: `Revoke a join token that has not been used yet, e.g. one that leaked. ID is the
token's public id: the part before the dot, as in the agent ID it would yield.`,
		Example: "  trustmesh token revoke 0123456789abcdef",
		Args:    exactArgs(1, "the token id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, _, _ := strings.Cut(args[0], ".") // accept the whole token too
			return conn.call(cmd, func(c *apiclient.Client) error {
				if err := c.RevokeToken(cmd.Context(), id); err != nil {
					return err
				}
				return conn.emit(cmd, apiv1.TokenRef{ID: id}, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "revoked join token %s\n", id)
					return err
				})
			})
		},
	}
	conn.register(cmd, true)
	return cmd
}

func newAgentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a node agent, and manage attested agents",
		Example: `  trustmesh agent run --server 127.0.0.1:8081 --trust-bundle bundle.pem --join-token TOKEN
  trustmesh agent list
  trustmesh agent evict spiffe://example.org/trustmesh/agent/join_token/0123456789abcdef`,
	}
	cmd.AddCommand(newAgentRunCmd(), newAgentValidateCmd(), newAgentListCmd(), newAgentActionCmd("evict", "Evict an agent: it must attest again (a banned agent is unbanned)"),
		newAgentActionCmd("ban", "Ban an agent: its SVID is refused and it may not attest again"))
	return cmd
}

func newAgentListCmd() *cobra.Command {
	var conn adminConn
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List attested agents",
		Example: "  trustmesh agent list -o json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return conn.call(cmd, func(c *apiclient.Client) error {
				agents, err := c.ListAgents(cmd.Context())
				if err != nil {
					return err
				}
				return conn.emit(cmd, apiv1.AgentList{Agents: agents}, func(w io.Writer) error {
					t := newTable(w, "SPIFFE ID", "ATTESTATION", "SERIAL", "SVID EXPIRES", "BANNED")
					for _, a := range agents {
						t.row(a.SPIFFEID, a.AttestationType, orDash(a.SerialNumber), fmtTime(a.ExpiresAt), fmt.Sprint(a.Banned))
					}
					return t.flush()
				})
			})
		},
	}
	conn.register(cmd, true)
	return cmd
}

func newAgentActionCmd(action, short string) *cobra.Command {
	var conn adminConn
	cmd := &cobra.Command{
		Use:     action + " SPIFFE_ID",
		Short:   short,
		Example: fmt.Sprintf("  trustmesh agent %s spiffe://example.org/trustmesh/agent/join_token/0123456789abcdef", action),
		Args:    exactArgs(1, "the agent's SPIFFE ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return conn.call(cmd, func(c *apiclient.Client) error {
				do := c.EvictAgent
				if action == "ban" {
					do = c.BanAgent
				}
				a, err := do(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return conn.emit(cmd, a, func(w io.Writer) error {
					past := map[string]string{"evict": "evicted", "ban": "banned"}[action]
					_, err := fmt.Fprintf(w, "%s agent %s\n", past, a.SPIFFEID)
					return err
				})
			})
		},
	}
	conn.register(cmd, true)
	return cmd
}

func newBundleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "bundle",
		Short:   "Show the trust bundle",
		Example: "  trustmesh bundle show --format spiffe",
	}
	var conn adminConn
	var format string
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the trust bundle as PEM or as a SPIFFE bundle (JWKS)",
		Long: `Print the trust bundle: the X.509 authorities as PEM (--format pem, the default),
or the SPIFFE bundle (--format spiffe): a JWKS holding the X.509 authorities
and the JWT-SVID signing keys with their key IDs.

With -o json (instead of --format), one JSON object with stable field names:
  {"trust_domain": "example.org", "sequence_number": 3, "refresh_hint": 300,
   "x509_authorities": ["-----BEGIN CERTIFICATE-----\n…"],
   "jwt_authorities": [{"key_id": "…", "public_key": "-----BEGIN PUBLIC KEY-----\n…"}]}
refresh_hint is in seconds; jwt_authorities are sorted by key_id.`,
		Example: "  trustmesh bundle show > bundle.pem\n  trustmesh bundle show --format spiffe | jq .\n  trustmesh bundle show -o json | jq -r '.x509_authorities[]'",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "pem" && format != "spiffe" {
				return usageErrorf(cmd, "--format %q: want pem or spiffe", format)
			}
			if conn.out.json() && cmd.Flags().Changed("format") {
				return usageErrorf(cmd, "--format and -o json are exclusive")
			}
			return conn.call(cmd, func(c *apiclient.Client) error {
				if conn.out.json() {
					b, err := trustBundle(cmd, c)
					if err != nil {
						return err
					}
					return printJSON(cmd.OutOrStdout(), b)
				}
				data, err := c.Bundle(cmd.Context(), format)
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(data)
				return err
			})
		},
	}
	show.Flags().StringVar(&format, "format", "pem", "pem or spiffe")
	conn.register(show, true)
	cmd.AddCommand(show)
	return cmd
}

// trustBundle fetches the SPIFFE bundle and the trust domain it is for.
func trustBundle(cmd *cobra.Command, c *apiclient.Client) (apiv1.TrustBundle, error) {
	name, err := c.TrustDomain(cmd.Context())
	if err != nil {
		return apiv1.TrustBundle{}, err
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return apiv1.TrustBundle{}, fmt.Errorf("server trust domain %q: %w", name, err)
	}
	data, err := c.Bundle(cmd.Context(), "spiffe")
	if err != nil {
		return apiv1.TrustBundle{}, err
	}
	sb, err := spiffebundle.Parse(td, data)
	if err != nil {
		return apiv1.TrustBundle{}, fmt.Errorf("parse the server's bundle: %w", err)
	}
	out := apiv1.TrustBundle{TrustDomain: td.Name(), X509Authorities: []string{}, JWTAuthorities: []apiv1.JWTAuthority{}}
	out.SequenceNumber, _ = sb.SequenceNumber()
	hint, _ := sb.RefreshHint()
	out.RefreshHint = int64(hint / time.Second)
	for _, cert := range sb.X509Authorities() {
		out.X509Authorities = append(out.X509Authorities, string(ca.EncodeCertificatesPEM(cert.Raw)))
	}
	for kid, key := range sb.JWTAuthorities() {
		der, err := x509.MarshalPKIXPublicKey(key)
		if err != nil {
			return apiv1.TrustBundle{}, fmt.Errorf("JWT authority %q: %w", kid, err)
		}
		out.JWTAuthorities = append(out.JWTAuthorities, apiv1.JWTAuthority{
			KeyID: kid, PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})),
		})
	}
	slices.SortFunc(out.JWTAuthorities, func(a, b apiv1.JWTAuthority) int { return strings.Compare(a.KeyID, b.KeyID) })
	return out, nil
}

func newX509Cmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "x509",
		Short:   "Mint X.509-SVIDs (admin)",
		Example: "  trustmesh x509 mint --spiffe-id spiffe://example.org/ops/me --write ./svid",
	}
	var conn adminConn
	var spiffeID, dir string
	var ttl time.Duration
	var dns []string
	mint := &cobra.Command{
		Use:   "mint",
		Short: "Mint an X.509-SVID and write svid.pem, svid.key and bundle.pem",
		Long: `Mint an X.509-SVID for any SPIFFE ID in the trust domain. The key is generated
here (ECDSA P-256) and never sent: the server signs a CSR. Writes to --write
DIR: svid.pem (leaf first, then intermediates), svid.key (PKCS#8, mode 0600)
and bundle.pem. Requires admin rights.`,
		Example: `  trustmesh x509 mint --spiffe-id spiffe://example.org/ops/admin --ttl 1h --write ./admin-svid
  trustmesh entry list --server 127.0.0.1:8081 --svid ./admin-svid/svid.pem \
      --svid-key ./admin-svid/svid.key --trust-bundle ./admin-svid/bundle.pem`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if spiffeID == "" || dir == "" {
				return usageErrorf(cmd, "--spiffe-id and --write are required")
			}
			secs, err := wholeSeconds(cmd, "ttl", ttl)
			if err != nil {
				return err
			}
			return conn.call(cmd, func(c *apiclient.Client) error {
				key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				if err != nil {
					return err
				}
				csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
				if err != nil {
					return err
				}
				resp, err := c.MintX509(cmd.Context(), apiv1.X509MintRequest{SPIFFEID: spiffeID, CSR: csr, TTL: secs, DNSNames: dns})
				if err != nil {
					return err
				}
				keyDER, err := x509.MarshalPKCS8PrivateKey(key)
				if err != nil {
					return err
				}
				if err := os.MkdirAll(dir, 0o700); err != nil {
					return err
				}
				files := map[string][]byte{
					"svid.pem":   ca.EncodeCertificatesPEM(resp.SVID.Chain...),
					"svid.key":   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
					"bundle.pem": []byte(resp.BundlePEM),
				}
				for _, name := range []string{"svid.key", "svid.pem", "bundle.pem"} {
					mode := os.FileMode(0o644)
					if name == "svid.key" {
						mode = 0o600
					}
					if err := keymanager.WriteFileAtomic(filepath.Join(dir, name), files[name], mode); err != nil {
						return fmt.Errorf("write %s: %w", name, err)
					}
				}
				summary := map[string]any{
					"spiffe_id": resp.SVID.SPIFFEID, "serial_number": resp.SVID.Serial, "expires_at": resp.SVID.ExpiresAt,
					"svid_file": filepath.Join(dir, "svid.pem"), "key_file": filepath.Join(dir, "svid.key"), "bundle_file": filepath.Join(dir, "bundle.pem"),
				}
				return conn.emit(cmd, summary, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "wrote svid.pem, svid.key and bundle.pem to %s (SPIFFE ID %s, expires %s)\n",
						dir, resp.SVID.SPIFFEID, fmtTime(resp.SVID.ExpiresAt))
					return err
				})
			})
		},
	}
	mint.Flags().StringVar(&spiffeID, "spiffe-id", "", "SPIFFE ID of the SVID")
	mint.Flags().DurationVar(&ttl, "ttl", 0, "lifetime (default: the server's default X.509-SVID TTL)")
	mint.Flags().StringArrayVar(&dns, "dns", nil, "DNS SAN; repeat for several")
	mint.Flags().StringVar(&dir, "write", "", "directory to write svid.pem, svid.key and bundle.pem to")
	conn.register(mint, true)
	cmd.AddCommand(mint)
	return cmd
}

func newJWTCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "jwt",
		Short:   "Mint JWT-SVIDs (admin)",
		Example: "  trustmesh jwt mint --spiffe-id spiffe://example.org/ops/me --audience api",
	}
	var conn adminConn
	var spiffeID string
	var audience []string
	var ttl time.Duration
	mint := &cobra.Command{
		Use:   "mint",
		Short: "Mint a JWT-SVID and print it",
		Example: `  trustmesh jwt mint --spiffe-id spiffe://example.org/ns/default/sa/api --audience spiffe://example.org/ns/default/sa/db
  TOKEN=$(trustmesh jwt mint --spiffe-id spiffe://example.org/ci --audience deploy --ttl 2m)`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if spiffeID == "" || len(audience) == 0 {
				return usageErrorf(cmd, "--spiffe-id and --audience are required")
			}
			secs, err := wholeSeconds(cmd, "ttl", ttl)
			if err != nil {
				return err
			}
			return conn.call(cmd, func(c *apiclient.Client) error {
				svid, err := c.MintJWT(cmd.Context(), apiv1.JWTMintRequest{SPIFFEID: spiffeID, Audience: audience, TTL: secs})
				if err != nil {
					return err
				}
				return conn.emit(cmd, svid, func(w io.Writer) error {
					_, err := fmt.Fprintln(w, strings.TrimSpace(svid.Token))
					return err
				})
			})
		},
	}
	mint.Flags().StringVar(&spiffeID, "spiffe-id", "", "SPIFFE ID (the sub claim)")
	mint.Flags().StringArrayVar(&audience, "audience", nil, "aud claim; repeat for several")
	mint.Flags().DurationVar(&ttl, "ttl", 0, "lifetime (default: the server's default JWT-SVID TTL)")
	conn.register(mint, true)
	cmd.AddCommand(mint)
	return cmd
}
