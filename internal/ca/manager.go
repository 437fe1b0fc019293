package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustmesh/trustmesh/internal/ca/keymanager"
	"github.com/trustmesh/trustmesh/internal/store"
)

// Publisher is where authorities are published for relying parties: the
// datastore's bundle, shared by every server replica.
type Publisher interface {
	AddX509Authority(ctx context.Context, a store.X509Authority) error
	AddJWTKey(ctx context.Context, k store.JWTKey) error
	PruneBundle(ctx context.Context, expiredBefore time.Time) (int64, error)
}

// ManagerConfig configures a Manager.
type ManagerConfig struct {
	CA          *CA
	TrustDomain spiffeid.TrustDomain
	CATTL       time.Duration
	X509KeyType keymanager.KeyType
	JWTKeyType  keymanager.KeyType
	KeyManager  keymanager.KeyManager
	Publisher   Publisher
	Upstream    *Upstream // nil: self-signed root
	// JournalPath records which key and certificate sit in which slot, so
	// a restart resumes the same CA. Empty: nothing persisted.
	JournalPath string
	Clock       func() time.Time
	Logger      *slog.Logger
	// OnChange runs after an authority is prepared or activated.
	OnChange func()
}

// Manager owns the CA's authorities: it loads them at start, prepares a
// successor at half-life (published in the bundle at once), activates it
// at five-sixths of the current one's life, and prunes expired authorities
// from the bundle. X.509 CAs and JWT keys rotate independently, each in two
// slots, as SPIRE's CA manager does.
type Manager struct {
	cfg  ManagerConfig
	mu   sync.Mutex
	x509 slotPair[*X509Authority]
	jwt  slotPair[*JWTKey]
	// dirty: slot state changed but is not yet in the journal (or the
	// change was not yet announced through OnChange).
	dirty bool
}

// NewManager validates cfg and returns a manager; call Initialize next.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	if cfg.CA == nil || cfg.KeyManager == nil || cfg.Publisher == nil {
		return nil, errors.New("ca manager: CA, KeyManager and Publisher are required")
	}
	if cfg.CATTL <= 0 {
		cfg.CATTL = DefaultCATTL
	}
	if cfg.X509KeyType == 0 {
		cfg.X509KeyType = keymanager.ECP256
	}
	if cfg.JWTKeyType == 0 {
		cfg.JWTKeyType = keymanager.ECP256
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{cfg: cfg}, nil
}

// Initialize restores the journal, publishes what it restored and makes
// sure an active X.509 CA and JWT key exist.
func (m *Manager) Initialize(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.loadJournal(ctx); err != nil {
		return err
	}
	if m.cfg.Upstream != nil {
		for _, r := range m.cfg.Upstream.Roots {
			if err := m.cfg.Publisher.AddX509Authority(ctx, store.X509Authority{CertDER: r.Raw, NotAfter: r.NotAfter}); err != nil {
				return fmt.Errorf("publish upstream root: %w", err)
			}
		}
	}
	for _, sl := range m.x509 {
		if sl != nil && sl.Status != statusOld {
			if err := m.publishX509(ctx, sl.Value); err != nil {
				return err
			}
		}
	}
	for _, sl := range m.jwt {
		if sl != nil && sl.Status != statusOld {
			if err := m.publishJWT(ctx, sl.Value); err != nil {
				return err
			}
		}
	}
	return m.rotateLocked(ctx)
}

// Rotate advances rotation once: prepares, activates and prunes as due.
func (m *Manager) Rotate(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rotateLocked(ctx)
}

// Run rotates every interval until ctx ends. A failed step is logged and
// retried on the next tick; the active authority keeps signing meanwhile.
func (m *Manager) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := m.Rotate(ctx); err != nil && ctx.Err() == nil {
				m.cfg.Logger.Error("CA rotation step failed; will retry", "error", err)
			}
		}
	}
}

func (m *Manager) rotateLocked(ctx context.Context) error {
	now := m.cfg.Clock()
	x509Changed, x509Err := m.x509.step(now, func(id string) (*slot[*X509Authority], error) { return m.prepareX509(ctx, id, now) })
	jwtChanged, jwtErr := m.jwt.step(now, func(id string) (*slot[*JWTKey], error) { return m.prepareJWT(ctx, id, now) })
	if x509Err != nil || jwtErr != nil {
		// Record what did change before reporting the failure.
		m.dirty = m.dirty || x509Changed || jwtChanged
		if m.dirty && m.saveJournal() == nil {
			m.dirty = false
		}
		if x509Err != nil {
			return fmt.Errorf("rotate X.509 CA: %w", x509Err)
		}
		return fmt.Errorf("rotate JWT key: %w", jwtErr)
	}
	m.dirty = m.dirty || x509Changed || jwtChanged
	if m.dirty {
		if err := m.saveJournal(); err != nil {
			return err // still dirty: retried on the next step
		}
	}
	if a := m.x509.with(statusActive); a != nil && m.cfg.CA.X509Authority() != a.Value {
		m.cfg.CA.SetX509Authority(a.Value)
		m.cfg.Logger.Info("X.509 CA activated", "slot", a.ID, "not_after", a.NotAfter, "serial", a.Value.Cert.SerialNumber.Text(16))
	}
	if k := m.jwt.with(statusActive); k != nil && m.cfg.CA.JWTKey() != k.Value {
		m.cfg.CA.SetJWTKey(k.Value)
		m.cfg.Logger.Info("JWT key activated", "slot", k.ID, "kid", k.Value.KeyID, "not_after", k.NotAfter)
	}
	if n, err := m.cfg.Publisher.PruneBundle(ctx, now); err != nil {
		m.cfg.Logger.Warn("prune expired authorities from the bundle", "error", err)
	} else if n > 0 {
		m.cfg.Logger.Info("pruned expired authorities from the bundle", "count", n)
	}
	if m.dirty {
		m.dirty = false
		if m.cfg.OnChange != nil {
			m.cfg.OnChange()
		}
	}
	return nil
}

func x509KeyID(slotID string) string { return "x509-CA-" + slotID }
func jwtKeyID(slotID string) string  { return "JWT-Signer-" + slotID }

func (m *Manager) prepareX509(ctx context.Context, slotID string, now time.Time) (*slot[*X509Authority], error) {
	key, err := m.cfg.KeyManager.GenerateKey(ctx, x509KeyID(slotID), m.cfg.X509KeyType)
	if err != nil {
		return nil, err
	}
	a, err := m.signCA(key, now)
	if err != nil {
		return nil, err
	}
	if err := m.publishX509(ctx, a); err != nil {
		return nil, err
	}
	m.cfg.Logger.Info("X.509 CA prepared and published", "slot", slotID, "not_after", a.Cert.NotAfter,
		"serial", a.Cert.SerialNumber.Text(16), "upstream", m.cfg.Upstream != nil)
	return &slot[*X509Authority]{NotBefore: a.Cert.NotBefore, NotAfter: a.Cert.NotAfter, Value: a}, nil
}

// signCA issues the signing certificate for key: self-signed, or an
// intermediate under the upstream CA (never outliving it).
func (m *Manager) signCA(key crypto.Signer, now time.Time) (*X509Authority, error) {
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"Trustmesh"},
			CommonName:   "Trustmesh CA " + m.cfg.TrustDomain.Name(),
			SerialNumber: serial.Text(16),
		},
		URIs:                  []*url.URL{m.cfg.TrustDomain.ID().URL()},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(m.cfg.CATTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	parent, parentKey := tmpl, key
	if up := m.cfg.Upstream; up != nil {
		parent, parentKey = up.Cert, up.Signer
		if tmpl.NotAfter.After(up.Cert.NotAfter) {
			tmpl.NotAfter = up.Cert.NotAfter
		}
		if !tmpl.NotAfter.After(now) {
			return nil, fmt.Errorf("upstream CA certificate expired at %s", up.Cert.NotAfter.Format(time.RFC3339))
		}
		// Our intermediate only ever signs leaves.
		tmpl.MaxPathLen, tmpl.MaxPathLenZero = 0, true
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, fmt.Errorf("sign CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &X509Authority{Cert: cert, Signer: key, ChainDER: m.chainFor(cert)}, nil
}

// chainFor is what follows a leaf signed by cert: nothing for a
// self-signed CA; under an upstream CA, cert itself, then the upstream
// certificate unless it is one of the bundle roots, then the upstream's
// own intermediates.
func (m *Manager) chainFor(cert *x509.Certificate) [][]byte {
	up := m.cfg.Upstream
	if up == nil {
		return nil
	}
	chain := [][]byte{cert.Raw}
	if !up.IsRoot(up.Cert) {
		chain = append(chain, up.Cert.Raw)
	}
	for _, c := range up.Intermediates {
		chain = append(chain, c.Raw)
	}
	return chain
}

func (m *Manager) publishX509(ctx context.Context, a *X509Authority) error {
	if m.cfg.Upstream != nil {
		return nil // the bundle holds the upstream roots, published at start
	}
	if err := m.cfg.Publisher.AddX509Authority(ctx, store.X509Authority{CertDER: a.Cert.Raw, NotAfter: a.Cert.NotAfter}); err != nil {
		return fmt.Errorf("publish X.509 CA: %w", err)
	}
	return nil
}

func (m *Manager) prepareJWT(ctx context.Context, slotID string, now time.Time) (*slot[*JWTKey], error) {
	key, err := m.cfg.KeyManager.GenerateKey(ctx, jwtKeyID(slotID), m.cfg.JWTKeyType)
	if err != nil {
		return nil, err
	}
	var kid [24]byte
	if _, err := rand.Read(kid[:]); err != nil {
		return nil, err
	}
	k, err := NewJWTKey(key, base64.RawURLEncoding.EncodeToString(kid[:]), now.Add(m.cfg.CATTL))
	if err != nil {
		return nil, err
	}
	if err := m.publishJWT(ctx, k); err != nil {
		return nil, err
	}
	m.cfg.Logger.Info("JWT key prepared and published", "slot", slotID, "kid", k.KeyID, "not_after", k.NotAfter)
	return &slot[*JWTKey]{NotBefore: now, NotAfter: k.NotAfter, Value: k}, nil
}

func (m *Manager) publishJWT(ctx context.Context, k *JWTKey) error {
	der, err := x509.MarshalPKIXPublicKey(k.Signer.Public())
	if err != nil {
		return err
	}
	if err := m.cfg.Publisher.AddJWTKey(ctx, store.JWTKey{KeyID: k.KeyID, PublicKeyDER: der, NotAfter: k.NotAfter}); err != nil {
		return fmt.Errorf("publish JWT key: %w", err)
	}
	return nil
}

// journal is the persisted slot state. Keys live in the key manager under
// per-slot ids; the journal says which certificate and kid go with them.
type journal struct {
	X509 []journalX509 `json:"x509_authorities"`
	JWT  []journalJWT  `json:"jwt_keys"`
}

type journalX509 struct {
	Slot    string     `json:"slot"`
	Status  slotStatus `json:"status"`
	CertPEM string     `json:"cert_pem"`
}

type journalJWT struct {
	Slot      string     `json:"slot"`
	Status    slotStatus `json:"status"`
	KeyID     string     `json:"kid"`
	NotBefore time.Time  `json:"not_before"`
	NotAfter  time.Time  `json:"not_after"`
}

func (m *Manager) saveJournal() error {
	if m.cfg.JournalPath == "" {
		return nil
	}
	var j journal
	for _, sl := range m.x509 {
		if sl != nil {
			j.X509 = append(j.X509, journalX509{Slot: sl.ID, Status: sl.Status, CertPEM: string(EncodeCertificatesPEM(sl.Value.Cert.Raw))})
		}
	}
	for _, sl := range m.jwt {
		if sl != nil {
			j.JWT = append(j.JWT, journalJWT{Slot: sl.ID, Status: sl.Status, KeyID: sl.Value.KeyID, NotBefore: sl.NotBefore, NotAfter: sl.NotAfter})
		}
	}
	data, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(m.cfg.JournalPath), 0o700); err != nil {
		return err
	}
	if err := keymanager.WriteFileAtomic(m.cfg.JournalPath, data, 0o600); err != nil {
		return fmt.Errorf("write CA journal: %w", err)
	}
	return nil
}

// loadJournal restores slots whose key is still in the key manager and
// matches, and whose certificate fits the configured mode (self-signed or
// under the current upstream). Anything else is dropped with a log line
// and replaced by rotation.
func (m *Manager) loadJournal(ctx context.Context) error {
	if m.cfg.JournalPath == "" {
		return nil
	}
	data, err := os.ReadFile(m.cfg.JournalPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read CA journal: %w", err)
	}
	var j journal
	if err := json.Unmarshal(data, &j); err != nil {
		return fmt.Errorf("CA journal %s is corrupt: %w", m.cfg.JournalPath, err)
	}
	for _, r := range j.X509 {
		i := slotIndex(r.Slot)
		if i < 0 {
			continue
		}
		a, err := m.restoreX509(ctx, r)
		if err != nil {
			m.cfg.Logger.Warn("discarding X.509 CA from journal", "slot", r.Slot, "reason", err)
			continue
		}
		m.x509[i] = &slot[*X509Authority]{ID: r.Slot, Status: r.Status, NotBefore: a.Cert.NotBefore, NotAfter: a.Cert.NotAfter, Value: a}
	}
	for _, r := range j.JWT {
		i := slotIndex(r.Slot)
		if i < 0 {
			continue
		}
		key, err := m.cfg.KeyManager.GetKey(ctx, jwtKeyID(r.Slot))
		if err != nil {
			m.cfg.Logger.Warn("discarding JWT key from journal", "slot", r.Slot, "reason", err)
			continue
		}
		k, err := NewJWTKey(key, r.KeyID, r.NotAfter)
		if err != nil {
			m.cfg.Logger.Warn("discarding JWT key from journal", "slot", r.Slot, "reason", err)
			continue
		}
		m.jwt[i] = &slot[*JWTKey]{ID: r.Slot, Status: r.Status, NotBefore: r.NotBefore, NotAfter: r.NotAfter, Value: k}
	}
	return nil
}

func (m *Manager) restoreX509(ctx context.Context, r journalX509) (*X509Authority, error) {
	certs, err := ParseCertificatesPEM([]byte(r.CertPEM))
	if err != nil {
		return nil, err
	}
	cert := certs[0]
	key, err := m.cfg.KeyManager.GetKey(ctx, x509KeyID(r.Slot))
	if err != nil {
		return nil, err
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("key does not match certificate (interrupted rotation)")
	}
	if up := m.cfg.Upstream; up != nil {
		if err := cert.CheckSignatureFrom(up.Cert); err != nil {
			return nil, errors.New("not signed by the configured upstream CA")
		}
	} else if err := cert.CheckSignatureFrom(cert); err != nil {
		return nil, errors.New("not self-signed, but no upstream CA is configured")
	}
	if cert.URIs == nil || cert.URIs[0].Host != m.cfg.TrustDomain.Name() {
		return nil, errors.New("issued for another trust domain")
	}
	return &X509Authority{Cert: cert, Signer: key, ChainDER: m.chainFor(cert)}, nil
}

func slotIndex(id string) int {
	for i, s := range slotIDs {
		if s == id {
			return i
		}
	}
	return -1
}

// Status describes the manager's slots, for status output and tests.
type Status struct {
	X509 []SlotStatus
	JWT  []SlotStatus
}

// SlotStatus is one slot's state.
type SlotStatus struct {
	Slot      string
	Status    string
	NotBefore time.Time
	NotAfter  time.Time
	ID        string // CA serial (hex) or JWT kid
}

// Status returns the current slot states.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	var s Status
	for _, sl := range m.x509 {
		if sl != nil {
			s.X509 = append(s.X509, SlotStatus{sl.ID, string(sl.Status), sl.NotBefore, sl.NotAfter, sl.Value.Cert.SerialNumber.Text(16)})
		}
	}
	for _, sl := range m.jwt {
		if sl != nil {
			s.JWT = append(s.JWT, SlotStatus{sl.ID, string(sl.Status), sl.NotBefore, sl.NotAfter, sl.Value.KeyID})
		}
	}
	return s
}
