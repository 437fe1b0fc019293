package cli

import (
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustmesh/trustmesh/internal/apiclient"
	"github.com/trustmesh/trustmesh/internal/ca"
	"github.com/trustmesh/trustmesh/internal/identity"
	"github.com/trustmesh/trustmesh/internal/registry"
	"github.com/trustmesh/trustmesh/internal/server"
)

// AdminSocketEnv overrides the default admin socket path.
const AdminSocketEnv = "TRUSTMESH_ADMIN_SOCKET"

// adminConn holds how an admin command reaches the server: the local admin
// socket (default) or the server's mTLS listener with an admin SVID.
type adminConn struct {
	socket   string
	server   string
	svid     string
	svidKey  string
	bundle   string
	out      outputFlag
	hasOuput bool
}

func defaultAdminSocket() string {
	if s := os.Getenv(AdminSocketEnv); s != "" {
		return s
	}
	return filepath.Join(server.DefaultDataDir, "admin.sock")
}

// register adds the connection flags (and -o unless noOutput) to cmd.
func (a *adminConn) register(cmd *cobra.Command, withOutput bool) {
	f := cmd.Flags()
	f.StringVar(&a.socket, "admin-socket", defaultAdminSocket(), "server admin socket (env "+AdminSocketEnv+")")
	f.StringVar(&a.server, "server", "", "reach the server over mTLS at HOST:PORT instead of the admin socket (needs --svid, --svid-key, --trust-bundle)")
	f.StringVar(&a.svid, "svid", "", "with --server: PEM X.509-SVID (leaf first) of an entry with the admin flag")
	f.StringVar(&a.svidKey, "svid-key", "", "with --server: private key of --svid")
	f.StringVar(&a.bundle, "trust-bundle", "", "with --server: PEM trust bundle to verify the server with")
	if withOutput {
		a.out.register(cmd)
		a.hasOuput = true
	}
}

// client connects as configured.
func (a *adminConn) client(cmd *cobra.Command) (*apiclient.Client, error) {
	if a.hasOuput {
		if err := a.out.check(cmd); err != nil {
			return nil, err
		}
	}
	if a.server == "" {
		if a.svid != "" || a.svidKey != "" || a.bundle != "" {
			return nil, usageErrorf(cmd, "--svid, --svid-key and --trust-bundle only apply with --server")
		}
		return apiclient.NewSocket(a.socket), nil
	}
	if a.svid == "" || a.svidKey == "" || a.bundle == "" {
		return nil, usageErrorf(cmd, "--server needs --svid, --svid-key and --trust-bundle")
	}
	svid, err := x509svid.Load(a.svid, a.svidKey)
	if err != nil {
		return nil, fmt.Errorf("load admin SVID: %w", err)
	}
	data, err := os.ReadFile(a.bundle)
	if err != nil {
		return nil, fmt.Errorf("read trust bundle: %w", err)
	}
	roots, err := ca.ParseCertificatesPEM(data)
	if err != nil {
		return nil, fmt.Errorf("trust bundle %s: %w", a.bundle, err)
	}
	td := svid.ID.TrustDomain()
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	cfg := identity.ClientTLSConfig(func() (*tls.Certificate, error) { return cert, nil },
		x509bundle.FromX509Authorities(td, roots), registry.ServerID(td))
	return apiclient.NewTLS(a.server, cfg), nil
}

// call connects as configured, runs fn with the client and closes it.
func (a *adminConn) call(cmd *cobra.Command, fn func(*apiclient.Client) error) error {
	c, err := a.client(cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

// emit prints v as JSON with -o json, and through text otherwise.
func (a *adminConn) emit(cmd *cobra.Command, v any, text func(w io.Writer) error) error {
	if a.out.json() {
		return printJSON(cmd.OutOrStdout(), v)
	}
	return text(cmd.OutOrStdout())
}

func parseSPIFFEID(cmd *cobra.Command, s string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return id, usageErrorf(cmd, "invalid SPIFFE ID %q: %v", s, err)
	}
	return id, nil
}
