// Package v1 defines the control plane's HTTP+JSON API: the admin API
// (served on the admin unix socket and, for admin SVIDs, over mTLS) and the
// agent API (over mTLS with an agent SVID, attestation over server-auth
// TLS). Field names are stable: the CLI's "-o json" prints these types.
//
// Durations are whole seconds; times are RFC 3339; DER blobs are base64 in
// JSON. Errors come back as {"error": "..."} with a meaningful status code.
package v1

import (
	"encoding/json"
	"time"
)

// Paths. Admin paths are under /v1/admin, agent paths under /v1/agent.
const (
	PathHealth        = "/v1/health"
	PathEntries       = "/v1/admin/entries"      // GET list, POST create
	PathEntry         = "/v1/admin/entries/"     // + id: GET, PATCH, DELETE
	PathTokens        = "/v1/admin/tokens"       // POST
	PathToken         = "/v1/admin/tokens/"      // + token id: DELETE (revoke)
	PathAgents        = "/v1/admin/agents"       // GET
	PathAgentEvict    = "/v1/admin/agents/evict" // POST AgentRef
	PathAgentBan      = "/v1/admin/agents/ban"   // POST AgentRef
	PathBundle        = "/v1/bundle"             // GET ?format=pem|spiffe (public data)
	PathMintX509      = "/v1/admin/x509/mint"
	PathMintJWT       = "/v1/admin/jwt/mint"
	PathAgentAttest   = "/v1/agent/attest"
	PathAgentRenew    = "/v1/agent/renew"
	PathAgentEntries  = "/v1/agent/entries"
	PathAgentX509SVID = "/v1/agent/x509svids"
	PathAgentJWTSVID  = "/v1/agent/jwtsvid"
	PathAgentWatch    = "/v1/agent/watch" // GET: NDJSON stream of WatchEvent
)

// Error is the body of every non-2xx response. Code, when set, is a
// stable machine-readable reason (see the Code* constants).
type Error struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"`
}

// Error codes agents act on.
const (
	CodeAgentBanned       = "agent_banned"       // never attest again
	CodeAgentNotAttested  = "agent_not_attested" // evicted: attest again if the method allows
	CodeAttestationFailed = "attestation_failed"
)

// Entry is a registration entry.
type Entry struct {
	ID          string     `json:"id"`
	SPIFFEID    string     `json:"spiffe_id"`
	ParentID    string     `json:"parent_id"`
	Selectors   []string   `json:"selectors"`
	X509SVIDTTL int64      `json:"x509_svid_ttl"` // seconds; 0 = server default
	JWTSVIDTTL  int64      `json:"jwt_svid_ttl"`  // seconds; 0 = server default
	DNSNames    []string   `json:"dns_names"`
	Admin       bool       `json:"admin"`
	Hint        string     `json:"hint"`
	ExpiresAt   *time.Time `json:"expires_at"` // null: never
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	Revision    int64      `json:"revision"`
}

// EntryCreate is the body of an entry creation.
type EntryCreate struct {
	SPIFFEID    string     `json:"spiffe_id"`
	ParentID    string     `json:"parent_id"`
	Selectors   []string   `json:"selectors"`
	X509SVIDTTL int64      `json:"x509_svid_ttl,omitempty"`
	JWTSVIDTTL  int64      `json:"jwt_svid_ttl,omitempty"`
	DNSNames    []string   `json:"dns_names,omitempty"`
	Admin       bool       `json:"admin,omitempty"`
	Hint        string     `json:"hint,omitempty"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
}

// EntryPatch changes the fields that are present; absent fields keep their
// value. Revision, when non-zero, must match the stored revision.
type EntryPatch struct {
	SPIFFEID    *string    `json:"spiffe_id,omitempty"`
	ParentID    *string    `json:"parent_id,omitempty"`
	Selectors   *[]string  `json:"selectors,omitempty"`
	X509SVIDTTL *int64     `json:"x509_svid_ttl,omitempty"`
	JWTSVIDTTL  *int64     `json:"jwt_svid_ttl,omitempty"`
	DNSNames    *[]string  `json:"dns_names,omitempty"`
	Admin       *bool      `json:"admin,omitempty"`
	Hint        *string    `json:"hint,omitempty"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	// ClearExpiry removes the expiry (ExpiresAt cannot express "never").
	ClearExpiry bool  `json:"clear_expiry,omitempty"`
	Revision    int64 `json:"revision,omitempty"`
}

// EntryList is the body of an entry listing.
type EntryList struct {
	Entries []Entry `json:"entries"`
}

// TokenCreate asks for a join token.
type TokenCreate struct {
	TTL int64 `json:"ttl,omitempty"` // seconds; 0 = server default
}

// Token is a freshly minted join token. Token is shown once; the server
// keeps only its hash.
type Token struct {
	Token         string    `json:"token"`
	ID            string    `json:"id"`
	AgentSPIFFEID string    `json:"agent_spiffe_id"`
	ExpiresAt     time.Time `json:"expires_at"`
}

// TokenRef names a join token by its public id.
type TokenRef struct {
	ID string `json:"id"`
}

// Agent is an attested node agent.
type Agent struct {
	SPIFFEID        string    `json:"spiffe_id"`
	AttestationType string    `json:"attestation_type"`
	Selectors       []string  `json:"selectors"`
	SerialNumber    string    `json:"serial_number"`
	ExpiresAt       time.Time `json:"expires_at"`
	Banned          bool      `json:"banned"`
	CreatedAt       time.Time `json:"created_at"`
	UpdatedAt       time.Time `json:"updated_at"`
}

// AgentRef names an agent by SPIFFE ID.
type AgentRef struct {
	SPIFFEID string `json:"spiffe_id"`
}

// AgentList is the body of an agent listing.
type AgentList struct {
	Agents []Agent `json:"agents"`
}

// X509MintRequest mints an X.509-SVID for any ID in the trust domain. The
// caller sends a CSR: the private key never leaves the caller.
type X509MintRequest struct {
	SPIFFEID string   `json:"spiffe_id"`
	CSR      []byte   `json:"csr"` // DER
	TTL      int64    `json:"ttl,omitempty"`
	DNSNames []string `json:"dns_names,omitempty"`
}

// X509SVID is a signed X.509-SVID.
type X509SVID struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Chain     [][]byte  `json:"chain"` // DER, leaf first
	ExpiresAt time.Time `json:"expires_at"`
	Serial    string    `json:"serial_number"`
}

// X509MintResponse carries the SVID and the bundle to verify peers with.
type X509MintResponse struct {
	SVID      X509SVID `json:"svid"`
	BundlePEM string   `json:"bundle_pem"`
}

// JWTMintRequest mints a JWT-SVID.
type JWTMintRequest struct {
	SPIFFEID string   `json:"spiffe_id"`
	Audience []string `json:"audience"`
	TTL      int64    `json:"ttl,omitempty"`
}

// JWTSVID is a signed JWT-SVID.
type JWTSVID struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// TrustBundle is the trust bundle as `bundle show -o json` prints it.
type TrustBundle struct {
	TrustDomain     string         `json:"trust_domain"`
	SequenceNumber  uint64         `json:"sequence_number"`
	RefreshHint     int64          `json:"refresh_hint"`     // seconds
	X509Authorities []string       `json:"x509_authorities"` // one PEM certificate each
	JWTAuthorities  []JWTAuthority `json:"jwt_authorities"`  // by key ID
}

// JWTAuthority is a JWT-SVID signing key of the bundle.
type JWTAuthority struct {
	KeyID     string `json:"key_id"`
	PublicKey string `json:"public_key"` // PEM, PKIX
}

// AttestRequest is a node agent's first contact: proof of identity (a join
// token or an x509pop proof) and a CSR for its own SVID.
type AttestRequest struct {
	JoinToken string        `json:"join_token,omitempty"`
	X509PoP   *X509PoPProof `json:"x509pop,omitempty"`
	CSR       []byte        `json:"csr"`
}

// X509PoPProof is x509pop node attestation: the agent's certificate chain
// (leaf first, DER) and its signature over the TLS exporter value of the
// connection the request travels on (see internal/attest).
type X509PoPProof struct {
	Chain     [][]byte `json:"chain"`
	Signature []byte   `json:"signature"`
}

// AttestResponse returns the agent's SVID and the trust bundle.
type AttestResponse struct {
	SVID   X509SVID `json:"svid"`
	Bundle []byte   `json:"bundle"` // SPIFFE bundle (JWKS)
}

// RenewRequest renews the calling agent's SVID.
type RenewRequest struct {
	CSR []byte `json:"csr"`
}

// SVIDRequest asks for an X.509-SVID for one authorized entry.
type SVIDRequest struct {
	EntryID string `json:"entry_id"`
	CSR     []byte `json:"csr"`
}

// X509SVIDBatchRequest asks for several SVIDs at once.
type X509SVIDBatchRequest struct {
	Requests []SVIDRequest `json:"requests"`
}

// X509SVIDResult is one result in a batch: an SVID or an error.
type X509SVIDResult struct {
	EntryID string    `json:"entry_id"`
	SVID    *X509SVID `json:"svid,omitempty"`
	Error   string    `json:"error,omitempty"`
}

// X509SVIDBatchResponse answers X509SVIDBatchRequest, in request order.
type X509SVIDBatchResponse struct {
	Results []X509SVIDResult `json:"results"`
}

// AgentJWTRequest asks for a JWT-SVID for one authorized entry.
type AgentJWTRequest struct {
	EntryID  string   `json:"entry_id"`
	Audience []string `json:"audience"`
}

// Watch event kinds.
const (
	WatchState     = "state"     // the agent's full authorized state
	WatchHeartbeat = "heartbeat" // nothing changed; the stream is alive
	WatchError     = "error"     // the stream ends: Error says why
)

// WatchEvent is one line of the agent watch stream. A "state" event
// carries everything the agent needs: its authorized entries and the trust
// bundle; it is sent when the stream opens and whenever either changes.
type WatchEvent struct {
	Kind           string          `json:"kind"`
	Revision       int64           `json:"revision,omitempty"`
	BundleSequence uint64          `json:"bundle_sequence,omitempty"`
	Entries        []Entry         `json:"entries,omitempty"`
	Bundle         json.RawMessage `json:"bundle,omitempty"` // SPIFFE bundle (JWKS)
	Error          string          `json:"error,omitempty"`
	Code           string          `json:"code,omitempty"`
}
