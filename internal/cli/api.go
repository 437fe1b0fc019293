package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/trustmesh/trustmesh/internal/agent"
	"github.com/trustmesh/trustmesh/internal/ca"
	"github.com/trustmesh/trustmesh/internal/ca/keymanager"
)

// EndpointSocketEnv is the SPIFFE-standard variable naming the Workload
// API address (unix:///path).
const EndpointSocketEnv = "SPIFFE_ENDPOINT_SOCKET"

// workloadConn is how an `api` command reaches the Workload API.
type workloadConn struct {
	socket  string
	timeout time.Duration
	out     outputFlag
}

func (w *workloadConn) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&w.socket, "socket", "", "Workload API socket path or unix:// address (default $"+EndpointSocketEnv+", else "+agent.DefaultSocket+")")
	cmd.Flags().DurationVar(&w.timeout, "timeout", 10*time.Second, "how long to wait for an answer")
	w.out.register(cmd)
}

// addr resolves the Workload API address: --socket, then
// SPIFFE_ENDPOINT_SOCKET, then the agent's default socket.
func (w *workloadConn) addr() string {
	s := w.socket
	if s == "" {
		s = os.Getenv(EndpointSocketEnv)
	}
	if s == "" {
		s = agent.DefaultSocket
	}
	if !strings.Contains(s, "://") {
		abs, err := filepath.Abs(s)
		if err == nil {
			s = abs
		}
		s = "unix://" + s
	}
	return s
}

func (w *workloadConn) client(cmd *cobra.Command) (*workloadapi.Client, error) {
	if err := w.out.check(cmd); err != nil {
		return nil, err
	}
	return workloadapi.New(cmd.Context(), workloadapi.WithAddr(w.addr()))
}

func newAPICmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "api",
		Short: "Talk to the Workload API as a workload (fetch, validate, watch)",
		Long: `Talk to the SPIFFE Workload API of the local agent, as the calling process:
what you get is what this process is entitled to. The address comes from
--socket, then $SPIFFE_ENDPOINT_SOCKET (unix:///path), then the agent's
default socket.`,
		Example: `  trustmesh api fetch x509 --write ./svid
  trustmesh api fetch jwt --audience spiffe://example.org/ns/default/sa/db
  trustmesh api validate jwt --audience db --token "$TOKEN"
  trustmesh api watch`,
	}
	fetch := &cobra.Command{
		Use:     "fetch",
		Short:   "Fetch X.509-SVIDs or JWT-SVIDs",
		Example: "  trustmesh api fetch x509\n  trustmesh api fetch jwt --audience db",
	}
	fetch.AddCommand(newAPIFetchX509Cmd(), newAPIFetchJWTCmd())
	validate := &cobra.Command{
		Use:     "validate",
		Short:   "Validate credentials with the Workload API",
		Example: "  trustmesh api validate jwt --audience db --token \"$TOKEN\"",
	}
	validate.AddCommand(newAPIValidateJWTCmd())
	cmd.AddCommand(fetch, validate, newAPIWatchCmd())
	return cmd
}

// svidJSON is one X.509-SVID in -o json output.
type svidJSON struct {
	SPIFFEID     string    `json:"spiffe_id"`
	Hint         string    `json:"hint,omitempty"`
	SerialNumber string    `json:"serial_number"`
	NotBefore    time.Time `json:"not_before"`
	NotAfter     time.Time `json:"not_after"`
	DNSNames     []string  `json:"dns_names,omitempty"`
	SVIDFile     string    `json:"svid_file,omitempty"`
	KeyFile      string    `json:"key_file,omitempty"`
	BundleFile   string    `json:"bundle_file,omitempty"`
}

type x509JSON struct {
	SVIDs []svidJSON `json:"svids"`
}

func describeSVIDs(svids []*x509svid.SVID) x509JSON {
	out := x509JSON{SVIDs: []svidJSON{}}
	for _, s := range svids {
		leaf := s.Certificates[0]
		out.SVIDs = append(out.SVIDs, svidJSON{SPIFFEID: s.ID.String(), Hint: s.Hint, SerialNumber: leaf.SerialNumber.Text(16),
			NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, DNSNames: leaf.DNSNames})
	}
	return out
}

// printSVIDs writes SPIRE's `api fetch x509` layout.
func printSVIDs(w io.Writer, ctx *workloadapi.X509Context, elapsed time.Duration) error {
	fmt.Fprintf(w, "Received %d svid after %s\n", len(ctx.SVIDs), elapsed.Round(time.Microsecond*100))
	for _, s := range ctx.SVIDs {
		leaf := s.Certificates[0]
		fmt.Fprintln(w)
		kv := []string{"SPIFFE ID", s.ID.String(), "SVID Valid After", fmtTime(leaf.NotBefore), "SVID Valid Until", fmtTime(leaf.NotAfter)}
		if s.Hint != "" {
			kv = append(kv, "Hint", s.Hint)
		}
		for i, c := range s.Certificates[1:] {
			kv = append(kv, fmt.Sprintf("Intermediate #%d Valid After", i+1), fmtTime(c.NotBefore), fmt.Sprintf("Intermediate #%d Valid Until", i+1), fmtTime(c.NotAfter))
		}
		if b, err := ctx.Bundles.GetX509BundleForTrustDomain(s.ID.TrustDomain()); err == nil {
			for i, c := range b.X509Authorities() {
				kv = append(kv, fmt.Sprintf("CA #%d Valid After", i+1), fmtTime(c.NotBefore), fmt.Sprintf("CA #%d Valid Until", i+1), fmtTime(c.NotAfter))
			}
		}
		if err := details(w, kv...); err != nil {
			return err
		}
	}
	return nil
}

func newAPIFetchX509Cmd() *cobra.Command {
	var conn workloadConn
	var dir string
	cmd := &cobra.Command{
		Use:   "x509",
		Short: "Fetch this process's X.509-SVIDs (and write them with --write)",
		Long: `Fetch the X.509-SVIDs this process is entitled to. With --write DIR, writes
svid.N.pem (leaf first, then intermediates), svid.N.key (PKCS#8, mode 0600) and
bundle.N.pem (the trust bundle of SVID N's trust domain) for each SVID N,
as spire-agent api fetch x509 does.`,
		Example: "  trustmesh api fetch x509\n  trustmesh api fetch x509 --write /tmp/svid -o json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := conn.client(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), conn.timeout)
			defer cancel()
			start := time.Now()
			x509ctx, err := c.FetchX509Context(ctx)
			if err != nil {
				return fmt.Errorf("fetch X.509-SVIDs from %s: %w", conn.addr(), err)
			}
			elapsed := time.Since(start)
			desc := describeSVIDs(x509ctx.SVIDs)
			if dir != "" {
				if err := writeSVIDs(dir, x509ctx, &desc); err != nil {
					return err
				}
			}
			if conn.out.json() {
				return printJSON(cmd.OutOrStdout(), desc)
			}
			if err := printSVIDs(cmd.OutOrStdout(), x509ctx, elapsed); err != nil {
				return err
			}
			if dir != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "\nWrote %d SVID(s) to %s\n", len(x509ctx.SVIDs), dir)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "write", "", "directory to write svid.N.pem, svid.N.key and bundle.N.pem to")
	conn.register(cmd)
	return cmd
}

func writeSVIDs(dir string, x509ctx *workloadapi.X509Context, desc *x509JSON) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for i, s := range x509ctx.SVIDs {
		certPEM, keyPEM, err := s.Marshal()
		if err != nil {
			return err
		}
		var bundlePEM []byte
		if b, err := x509ctx.Bundles.GetX509BundleForTrustDomain(s.ID.TrustDomain()); err == nil {
			var ders [][]byte
			for _, c := range b.X509Authorities() {
				ders = append(ders, c.Raw)
			}
			bundlePEM = ca.EncodeCertificatesPEM(ders...)
		}
		files := []struct {
			name string
			data []byte
			mode os.FileMode
			dst  *string
		}{
			{fmt.Sprintf("svid.%d.key", i), keyPEM, 0o600, &desc.SVIDs[i].KeyFile},
			{fmt.Sprintf("svid.%d.pem", i), certPEM, 0o644, &desc.SVIDs[i].SVIDFile},
			{fmt.Sprintf("bundle.%d.pem", i), bundlePEM, 0o644, &desc.SVIDs[i].BundleFile},
		}
		for _, f := range files {
			p := filepath.Join(dir, f.name)
			if err := keymanager.WriteFileAtomic(p, f.data, f.mode); err != nil {
				return fmt.Errorf("write %s: %w", p, err)
			}
			*f.dst = p
		}
	}
	return nil
}

func newAPIFetchJWTCmd() *cobra.Command {
	var conn workloadConn
	var audience []string
	var spiffeID string
	cmd := &cobra.Command{
		Use:   "jwt",
		Short: "Fetch JWT-SVIDs for an audience",
		Example: `  trustmesh api fetch jwt --audience spiffe://example.org/ns/default/sa/db
  TOKEN=$(trustmesh api fetch jwt --audience db -o json | jq -r '.svids[0].token')`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(audience) == 0 {
				return usageErrorf(cmd, "--audience is required")
			}
			c, err := conn.client(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), conn.timeout)
			defer cancel()
			p := jwtsvid.Params{Audience: audience[0], ExtraAudiences: audience[1:]}
			if spiffeID != "" {
				id, err := parseSPIFFEID(cmd, spiffeID)
				if err != nil {
					return err
				}
				p.Subject = id
			}
			svids, err := c.FetchJWTSVIDs(ctx, p)
			if err != nil {
				return fmt.Errorf("fetch JWT-SVIDs from %s: %w", conn.addr(), err)
			}
			type jwtJSON struct {
				SPIFFEID  string    `json:"spiffe_id"`
				Token     string    `json:"token"`
				ExpiresAt time.Time `json:"expires_at"`
				Hint      string    `json:"hint,omitempty"`
			}
			out := struct {
				SVIDs []jwtJSON `json:"svids"`
			}{SVIDs: []jwtJSON{}}
			for _, s := range svids {
				out.SVIDs = append(out.SVIDs, jwtJSON{SPIFFEID: s.ID.String(), Token: s.Marshal(), ExpiresAt: s.Expiry, Hint: s.Hint})
			}
			if conn.out.json() {
				return printJSON(cmd.OutOrStdout(), out)
			}
			for _, s := range out.SVIDs {
				fmt.Fprintf(cmd.OutOrStdout(), "token(%s):\n\t%s\n", s.SPIFFEID, s.Token)
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&audience, "audience", nil, "aud claim; repeat for several")
	cmd.Flags().StringVar(&spiffeID, "spiffe-id", "", "only this identity's JWT-SVID")
	conn.register(cmd)
	return cmd
}

func newAPIValidateJWTCmd() *cobra.Command {
	var conn workloadConn
	var audience, token string
	cmd := &cobra.Command{
		Use:     "jwt",
		Short:   "Validate a JWT-SVID for an audience",
		Example: `  trustmesh api validate jwt --audience db --token "$TOKEN"`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if audience == "" || token == "" {
				return usageErrorf(cmd, "--audience and --token are required")
			}
			c, err := conn.client(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), conn.timeout)
			defer cancel()
			svid, err := c.ValidateJWTSVID(ctx, strings.TrimSpace(token), audience)
			if err != nil {
				return fmt.Errorf("JWT-SVID is not valid: %w", err)
			}
			if conn.out.json() {
				return printJSON(cmd.OutOrStdout(), map[string]any{"spiffe_id": svid.ID.String(), "claims": svid.Claims})
			}
			claims, _ := json.Marshal(svid.Claims)
			fmt.Fprintf(cmd.OutOrStdout(), "SVID is valid.\nSPIFFE ID : %s\nClaims    : %s\n", svid.ID, claims)
			return nil
		},
	}
	cmd.Flags().StringVar(&audience, "audience", "", "the audience the token must be for")
	cmd.Flags().StringVar(&token, "token", "", "the JWT-SVID")
	conn.register(cmd)
	return cmd
}

// x509Printer is a workloadapi.X509ContextWatcher printing each update.
type x509Printer struct {
	w     io.Writer
	json  bool
	start time.Time
	err   func(error)
}

func (p *x509Printer) OnX509ContextUpdate(c *workloadapi.X509Context) {
	if p.json {
		desc := describeSVIDs(c.SVIDs)
		_ = json.NewEncoder(p.w).Encode(struct {
			Time time.Time `json:"time"`
			x509JSON
		}{time.Now().UTC(), desc})
		return
	}
	_ = printSVIDs(p.w, c, time.Since(p.start))
	fmt.Fprintln(p.w)
	p.start = time.Now()
}

func (p *x509Printer) OnX509ContextWatchError(err error) { p.err(err) }

func newAPIWatchCmd() *cobra.Command {
	var conn workloadConn
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print every X.509-SVID update until interrupted",
		Long: `Watch the Workload API and print every X.509-SVID update (rotation, entry
change) as it arrives, until Ctrl-C. With -o json each update is one line.`,
		Example: "  trustmesh api watch\n  trustmesh api watch -o json | jq .svids[0].serial_number",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := conn.client(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			p := &x509Printer{w: cmd.OutOrStdout(), json: conn.out.json(), start: time.Now(), err: func(err error) {
				if cmd.Context().Err() == nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "watch: %v (retrying)\n", err)
				}
			}}
			err = c.WatchX509Context(cmd.Context(), p)
			if cmd.Context().Err() != nil {
				return nil // interrupted: a normal end
			}
			return err
		},
	}
	conn.register(cmd)
	return cmd
}
