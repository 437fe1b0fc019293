// Package store defines the control plane's datastore contract: registration
// entries, join tokens, attested agents and the published trust bundle.
//
// Every value that must be unique across server replicas (entry IDs, join
// token redemption, agent records, bundle authorities) lives here and is
// enforced by the database, never by one process's memory, so several
// servers can share one PostgreSQL database.
package store

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors every implementation returns (wrapped) so callers can
// branch with errors.Is.
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict means a conditional write lost a race: the row changed
	// since the caller read it.
	ErrConflict = errors.New("conflicting concurrent change")
	// ErrBanned means the agent is banned and may not (re)attest.
	ErrBanned = errors.New("agent is banned")
)

// Store is the datastore used by the control plane. Implementations must be
// safe for concurrent use and must make every acknowledged write durable.
type Store interface {
	// CreateEntry inserts e. e.ID must be set by the caller. An entry with
	// the same SPIFFE ID, parent ID and selector set already present yields
	// ErrAlreadyExists.
	CreateEntry(ctx context.Context, e Entry) (Entry, error)
	GetEntry(ctx context.Context, id string) (Entry, error)
	ListEntries(ctx context.Context, f EntryFilter) ([]Entry, error)
	// UpdateEntry replaces the mutable fields of the entry with e.ID. When
	// e.Revision is non-zero it must match the stored revision
	// (optimistic concurrency), otherwise ErrConflict.
	UpdateEntry(ctx context.Context, e Entry) (Entry, error)
	DeleteEntry(ctx context.Context, id string) (Entry, error)

	CreateJoinToken(ctx context.Context, t JoinToken) error
	GetJoinToken(ctx context.Context, id string) (JoinToken, error)
	// DeleteJoinToken removes the token; ErrNotFound when another caller
	// removed it first. Redeeming a token is "delete exactly one row", which
	// makes single use hold across replicas.
	DeleteJoinToken(ctx context.Context, id string) error
	PruneJoinTokens(ctx context.Context, expiredBefore time.Time) (int64, error)

	// AttestAgent creates the agent record or, for a re-attesting agent,
	// replaces its attestation data and certificate. A banned agent is left
	// untouched and ErrBanned is returned. When joinTokenID is set, the
	// token is consumed in the same transaction (ErrNotFound if it is gone),
	// so a token is never spent without an agent to show for it.
	AttestAgent(ctx context.Context, a Agent, joinTokenID string) (Agent, error)
	GetAgent(ctx context.Context, spiffeID string) (Agent, error)
	ListAgents(ctx context.Context) ([]Agent, error)
	// RenewAgentCert records newSerial as the agent's current certificate.
	// presentedSerial, the certificate the agent renewed with, must be its
	// current or still-pending previous one (ErrConflict otherwise); it
	// stays valid until the new certificate is first used (see
	// ConfirmAgentCert), so a lost renewal answer cannot lock the agent
	// out. ErrBanned if banned, ErrNotFound if evicted.
	RenewAgentCert(ctx context.Context, spiffeID, presentedSerial, newSerial string, notAfter time.Time) error
	// ConfirmAgentCert retires the previous certificate once the agent has
	// presented its current one (serial).
	ConfirmAgentCert(ctx context.Context, spiffeID, serial string) error
	// BanAgent marks the agent banned and clears its certificate.
	BanAgent(ctx context.Context, spiffeID string) (Agent, error)
	// DeleteAgent evicts the agent: it must attest again.
	DeleteAgent(ctx context.Context, spiffeID string) (Agent, error)

	// AddX509Authority publishes a CA certificate in the trust bundle.
	// Adding an authority already present is a no-op.
	AddX509Authority(ctx context.Context, a X509Authority) error
	// AddJWTKey publishes a JWT signing public key in the trust bundle.
	AddJWTKey(ctx context.Context, k JWTKey) error
	// FetchBundle returns every published authority and the bundle's
	// sequence number, which increases on every change.
	FetchBundle(ctx context.Context) (Bundle, error)
	// PruneBundle removes authorities and keys that expired before t.
	PruneBundle(ctx context.Context, expiredBefore time.Time) (int64, error)

	// Revisions returns the registry revision, which increases with every
	// change to entries or agent records, and the bundle sequence number.
	// Watchers poll it to learn that something changed.
	Revisions(ctx context.Context) (registry int64, bundle uint64, err error)

	Close() error
}

// Selector is one workload or node property, written "type:value".
type Selector struct {
	Type  string
	Value string
}

func (s Selector) String() string { return s.Type + ":" + s.Value }

// Entry is a registration entry: which workloads (selectors, under which
// parent) get which SPIFFE ID.
type Entry struct {
	ID          string
	SPIFFEID    string
	ParentID    string
	Selectors   []Selector // sorted, unique
	X509SVIDTTL time.Duration
	JWTSVIDTTL  time.Duration
	DNSNames    []string
	Admin       bool
	Hint        string
	ExpiresAt   time.Time // zero: never
	CreatedAt   time.Time
	UpdatedAt   time.Time
	Revision    int64
}

// EntryFilter narrows ListEntries. Empty fields match everything.
type EntryFilter struct {
	SPIFFEID  string
	ParentIDs []string
}

// JoinToken is a single-use node attestation secret. Only a hash of the
// secret is stored.
type JoinToken struct {
	ID         string
	SecretHash []byte
	ExpiresAt  time.Time
	CreatedAt  time.Time
}

// Agent is an attested node agent.
type Agent struct {
	SPIFFEID        string
	AttestationType string
	Selectors       []Selector
	CertSerial      string // hex serial of the agent's current SVID; empty when banned
	// PrevCertSerial is the certificate the agent renewed with, valid
	// until CertSerial is first presented; empty otherwise.
	PrevCertSerial string
	CertNotAfter   time.Time
	Banned         bool
	CreatedAt      time.Time
	UpdatedAt      time.Time
}

// X509Authority is a CA certificate published in the trust bundle.
type X509Authority struct {
	CertDER   []byte
	NotAfter  time.Time
	CreatedAt time.Time
}

// JWTKey is a JWT-SVID signing public key published in the trust bundle.
type JWTKey struct {
	KeyID        string
	PublicKeyDER []byte // PKIX
	NotAfter     time.Time
	CreatedAt    time.Time
}

// Bundle is the trust bundle as stored.
type Bundle struct {
	X509Authorities []X509Authority
	JWTKeys         []JWTKey
	Sequence        uint64
}
