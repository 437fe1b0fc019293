// Package server is the Trustmesh control plane: it runs the CA and its
// rotation, serves the admin API on a local unix socket and, over mTLS on
// its TCP listener, the remote admin API (for admin SVIDs) and the agent
// API, and keeps the trust bundle of every replica in the shared datastore.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/audit"
	"github.com/trustmesh/trustmesh/internal/ca"
	"github.com/trustmesh/trustmesh/internal/ca/keymanager"
	"github.com/trustmesh/trustmesh/internal/identity"
	"github.com/trustmesh/trustmesh/internal/registry"
	"github.com/trustmesh/trustmesh/internal/store"
	"github.com/trustmesh/trustmesh/internal/store/sqlstore"
	"github.com/trustmesh/trustmesh/internal/telemetry"
	"github.com/trustmesh/trustmesh/internal/unixsock"
)

// Server is one control-plane replica.
type Server struct {
	set     Settings
	log     *slog.Logger
	now     func() time.Time
	audit   *audit.Logger
	store   store.Store
	ca      *ca.CA
	caMgr   *ca.Manager
	bundle  *bundleCache
	metrics *telemetry.ServerMetrics

	changes  *changeHub
	stopping <-chan struct{} // closed when Run is stopping: long-lived streams end

	certMu     sync.Mutex
	serverCert atomic.Pointer[serverCert]

	ready     chan struct{}
	listen    net.Addr
	metricsLn net.Addr
}

// New returns a server for set. Run starts it.
func New(set Settings, log *slog.Logger) *Server {
	return &Server{set: set, log: log, now: time.Now, ready: make(chan struct{})}
}

// Ready is closed once every listener accepts connections.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr is the bound TCP listen address (valid after Ready).
func (s *Server) Addr() net.Addr { return s.listen }

// MetricsAddr is the bound metrics address, or nil (valid after Ready).
func (s *Server) MetricsAddr() net.Addr { return s.metricsLn }

// Run starts the server and blocks until ctx is cancelled or a component
// fails; it then stops everything and removes the admin socket.
func (s *Server) Run(ctx context.Context) error {
	for _, w := range s.set.Warnings {
		s.log.Warn(w)
	}
	if err := os.MkdirAll(s.set.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	unlock, err := lockDataDir(s.set.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
	closeAudit, err := s.openAudit(ctx)
	if err != nil {
		return err
	}
	defer closeAudit.Close()

	st, err := sqlstore.Open(ctx, s.set.Datastore)
	if err != nil {
		return err
	}
	defer st.Close()
	s.store = st
	s.log.Info("datastore ready", "datastore", s.redactedDatastore(), "schema_version", sqlstore.SchemaVersion())

	if err := s.startCA(ctx); err != nil {
		return err
	}
	s.metrics = telemetry.NewServerMetrics(func() (time.Time, time.Time) {
		var x, j time.Time
		if a := s.ca.X509Authority(); a != nil {
			x = a.Cert.NotAfter
		}
		if k := s.ca.JWTKey(); k != nil {
			j = k.NotAfter
		}
		return x, j
	}, s.audit.Failures)
	if _, err := s.currentServerCert(); err != nil {
		return err
	}

	adminLn, err := listenUnix(s.set.AdminSocket)
	if err != nil {
		return err
	}
	defer os.Remove(s.set.AdminSocket)
	tcpLn, err := net.Listen("tcp", s.set.Listen)
	if err != nil {
		adminLn.Close()
		return fmt.Errorf("listen on %s: %w", s.set.Listen, err)
	}
	s.listen = tcpLn.Addr()
	var metricsLn net.Listener
	if s.set.MetricsAddr != "" {
		if metricsLn, err = net.Listen("tcp", s.set.MetricsAddr); err != nil {
			adminLn.Close()
			tcpLn.Close()
			return fmt.Errorf("listen for metrics on %s: %w", s.set.MetricsAddr, err)
		}
		s.metricsLn = metricsLn.Addr()
	}

	g, gctx := errgroup.WithContext(ctx)
	s.stopping = gctx.Done()
	s.changes = newChangeHub()
	adminSrv := &http.Server{
		Handler:           s.socketHandler(),
		ConnContext:       withUnixPeerCred,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	tlsSrv := &http.Server{
		Handler:           s.tcpHandler(),
		TLSConfig:         identity.ServerTLSConfig(s.currentServerCert, s.bundle, s.now, s.refreshBundleOnMiss),
		ReadHeaderTimeout: 10 * time.Second,
		// Bounds reading a request (headers and body) so a slow client
		// cannot hold the unauthenticated attestation endpoint open.
		ReadTimeout: s.set.ReadTimeout,
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	serve := func(name string, srv *http.Server, run func() error) {
		g.Go(func() error {
			if err := run(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(shutdownCtx)
		})
	}
	serve("admin socket", adminSrv, func() error { return adminSrv.Serve(adminLn) })
	serve("TLS listener", tlsSrv, func() error { return tlsSrv.ServeTLS(tcpLn, "", "") })
	if metricsLn != nil {
		g.Go(func() error { return telemetry.Serve(gctx, metricsLn, s.metrics.Registry) })
	}
	g.Go(func() error { return s.caMgr.Run(gctx, s.set.RotateInterval) })
	g.Go(func() error { return s.maintain(gctx) })
	g.Go(func() error { return s.pollChanges(gctx) })

	s.log.Info("server ready", "trust_domain", s.set.TrustDomain.Name(), "listen", s.listen.String(),
		"admin_socket", s.set.AdminSocket, "metrics", addrString(s.metricsLn), "data_dir", s.set.DataDir)
	close(s.ready)
	err = g.Wait()
	s.log.Info("server stopped")
	return err
}

func addrString(a net.Addr) string {
	if a == nil {
		return "off"
	}
	return a.String()
}

func (s *Server) openAudit(ctx context.Context) (io.Closer, error) {
	if s.set.AuditLog == "-" {
		s.audit = audit.New(os.Stderr)
		return io.NopCloser(nil), nil
	}
	l, f, err := audit.Open(s.set.AuditLog)
	if err != nil {
		return nil, err
	}
	f.ReopenOnSignal(ctx, s.log) // log rotation: rename, then SIGUSR1
	s.audit = l
	return f, nil
}

func (s *Server) startCA(ctx context.Context) error {
	var km keymanager.KeyManager = keymanager.NewMemory()
	if s.set.KeyManager == "disk" {
		d, err := keymanager.NewDisk(filepath.Join(s.set.DataDir, "keys"))
		if err != nil {
			return err
		}
		km = d
	}
	var up *ca.Upstream
	if u := s.set.Upstream; u != nil {
		var err error
		if up, err = ca.LoadUpstream(u.CertFile, u.KeyFile, u.BundleFile); err != nil {
			return err
		}
	}
	s.ca = ca.New(ca.Config{TrustDomain: s.set.TrustDomain, X509SVIDTTL: s.set.X509SVIDTTL, JWTSVIDTTL: s.set.JWTSVIDTTL, Clock: s.now})
	s.bundle = newBundleCache(s.set.TrustDomain, s.store)
	journal := filepath.Join(s.set.DataDir, "ca", "journal.json")
	if s.set.KeyManager == "memory" {
		journal = "" // keys die with the process; so must the journal
	}
	mgr, err := ca.NewManager(ca.ManagerConfig{
		CA: s.ca, TrustDomain: s.set.TrustDomain, CATTL: s.set.CATTL,
		X509KeyType: s.set.X509KeyType, JWTKeyType: s.set.JWTKeyType,
		KeyManager: km, Publisher: s.store, Upstream: up, JournalPath: journal,
		Clock: s.now, Logger: s.log.With("component", "ca"),
		OnChange: func() {
			if err := s.bundle.Refresh(context.Background()); err != nil {
				s.log.Warn("refresh bundle after CA change", "error", err)
			}
		},
	})
	if err != nil {
		return err
	}
	if err := mgr.Initialize(ctx); err != nil {
		return fmt.Errorf("initialize CA: %w", err)
	}
	s.caMgr = mgr
	return s.bundle.Refresh(ctx)
}

// maintain refreshes the bundle view and prunes expired join tokens.
func (s *Server) maintain(ctx context.Context) error {
	t := time.NewTicker(s.set.BundleRefresh)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := s.bundle.Refresh(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("refresh bundle", "error", err)
		}
		if i%60 == 0 {
			if n, err := s.store.PruneJoinTokens(ctx, s.now()); err != nil && ctx.Err() == nil {
				s.log.Warn("prune join tokens", "error", err)
			} else if n > 0 {
				s.log.Info("pruned expired join tokens", "count", n)
			}
		}
	}
}

// currentServerCert returns the server's own SVID for its TLS listener,
// re-issuing it at half-life or when the CA that signed it is no longer
// active.
// serverCert is the server's TLS certificate and the authority that
// signed it.
type serverCert struct {
	cert   *tls.Certificate
	issuer *ca.X509Authority
	renew  time.Time // half-life
}

func (s *Server) currentServerCert() (*tls.Certificate, error) {
	if c := s.serverCert.Load(); c != nil && !s.serverCertDue(c) {
		return c.cert, nil
	}
	s.certMu.Lock()
	defer s.certMu.Unlock()
	if c := s.serverCert.Load(); c != nil && !s.serverCertDue(c) {
		return c.cert, nil
	}
	issuer := s.ca.X509Authority()
	key, err := keymanager.ECP256.Generate()
	if err != nil {
		return nil, err
	}
	id := registry.ServerID(s.set.TrustDomain)
	issued, err := s.ca.SignX509SVID(ca.X509SVIDParams{SPIFFEID: id, PublicKey: key.Public(), TTL: s.set.X509SVIDTTL})
	if err != nil {
		return nil, fmt.Errorf("issue server certificate: %w", err)
	}
	cert, err := identity.TLSCertificate(issued.Chain, key)
	if err != nil {
		return nil, err
	}
	half := cert.Leaf.NotBefore.Add(cert.Leaf.NotAfter.Sub(cert.Leaf.NotBefore) / 2)
	s.serverCert.Store(&serverCert{cert: cert, issuer: issuer, renew: half})
	s.metrics.SVIDsIssued.WithLabelValues("x509", "server").Inc()
	s.audit.Record(context.Background(), audit.Event{Actor: "server", Operation: "x509svid.issue", Target: id.String(), Outcome: audit.Success,
		Attrs: []slog.Attr{slog.String("serial_number", issued.Serial.Text(16)), slog.Time("expires_at", issued.NotAfter)}})
	return cert, nil
}

// serverCertDue: past half-life, or signed by an authority no longer active.
func (s *Server) serverCertDue(c *serverCert) bool {
	return !s.now().Before(c.renew) || c.issuer != s.ca.X509Authority()
}

// refreshBundleOnMiss is called when a client's SVID does not verify
// against the cached bundle: it re-reads the datastore (rate-limited) so an
// authority another replica just published is honoured at once. It
// reports whether verification is worth retrying.
func (s *Server) refreshBundleOnMiss() bool {
	return s.bundle.RefreshOnMiss(context.Background())
}

func (s *Server) socketHandler() http.Handler {
	mux := http.NewServeMux()
	s.registerCommon(mux)
	s.registerAdmin(mux, s.authSocketAdmin)
	return mux
}

func (s *Server) tcpHandler() http.Handler {
	mux := http.NewServeMux()
	s.registerCommon(mux)
	s.registerAdmin(mux, s.authSVIDAdmin)
	s.registerAgent(mux)
	return mux
}

// registerCommon mounts the unauthenticated, public endpoints: health and
// the trust bundle (public keys only).
func (s *Server) registerCommon(mux *http.ServeMux) {
	mux.HandleFunc("GET "+apiv1.PathHealth, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "trust_domain": s.set.TrustDomain.Name()})
	})
	mux.HandleFunc("GET "+apiv1.PathBundle, func(w http.ResponseWriter, r *http.Request) {
		switch f := r.URL.Query().Get("format"); f {
		case "", "pem":
			w.Header().Set("Content-Type", "application/x-pem-file")
			_, _ = w.Write(s.bundlePEM())
		case "spiffe":
			data, err := s.bundle.Bundle().Marshal()
			if err != nil {
				writeError(w, internal(err))
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(data)
		default:
			writeError(w, badRequest(fmt.Errorf("unknown bundle format %q: want pem or spiffe", f)))
		}
	})
}

func (s *Server) bundlePEM() []byte {
	var ders [][]byte
	for _, c := range s.bundle.Bundle().X509Authorities() {
		ders = append(ders, c.Raw)
	}
	return ca.EncodeCertificatesPEM(ders...)
}

// listenUnix opens the admin socket: mode 0600 in a 0700 directory (every
// request is also checked with SO_PEERCRED).
func listenUnix(path string) (net.Listener, error) {
	return unixsock.Listen(path, 0o700, 0o600)
}
