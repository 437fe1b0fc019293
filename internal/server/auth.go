package server

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/identity"
	"github.com/trustmesh/trustmesh/internal/registry"
	"github.com/trustmesh/trustmesh/internal/store"
	"github.com/trustmesh/trustmesh/internal/store/sqlstore"
)

// caller is who made a request, as established by authentication.
type caller struct {
	// Actor names the caller in the audit trail: "unix:uid:N" for the
	// admin socket, the SPIFFE ID for mTLS callers, "anonymous" otherwise.
	Actor string
	ID    spiffeid.ID // zero for socket and anonymous callers
	Agent store.Agent // set for authenticated agents
	// Serial is the hex serial of the client certificate (agents).
	Serial string
}

func (c caller) actor() string {
	if c.Actor == "" {
		return "anonymous"
	}
	return c.Actor
}

// authSocketAdmin authenticates a caller on the admin socket. The socket
// is 0600 inside a 0700 data dir; as a second check the peer's uid
// (SO_PEERCRED) must be the server's own or root's.
func (s *Server) authSocketAdmin(r *http.Request) (caller, *apiError) {
	cred, err := unixPeerCred(r.Context())
	if err != nil {
		return caller{}, forbidden(err)
	}
	actor := "unix:uid:" + strconv.Itoa(int(cred.Uid))
	if int(cred.Uid) != os.Geteuid() && cred.Uid != 0 {
		return caller{Actor: actor}, forbidden(fmt.Errorf("uid %d is neither the server's uid %d nor root", cred.Uid, os.Geteuid()))
	}
	return caller{Actor: actor}, nil
}

// authSVIDAdmin authenticates a remote admin: the TLS handshake verified
// the client's X.509-SVID; it must name an unexpired entry with the admin
// flag.
func (s *Server) authSVIDAdmin(r *http.Request) (caller, *apiError) {
	id, ok := identity.PeerID(r.TLS)
	if !ok {
		return caller{}, unauthenticated("client certificate (an admin X.509-SVID) required")
	}
	c := caller{Actor: id.String(), ID: id}
	entries, err := s.store.ListEntries(r.Context(), store.EntryFilter{SPIFFEID: id.String()})
	if err != nil {
		return c, internal(err)
	}
	now := s.now()
	for _, e := range entries {
		if e.Admin && !registry.Expired(e, now) {
			return c, nil
		}
	}
	return c, forbidden(fmt.Errorf("%s has no unexpired registration entry with the admin flag", id))
}

// authAgent authenticates an attested agent: its SVID (verified in the
// handshake) names an agent whose record exists (not evicted), is not
// banned, and whose current certificate is the one presented (a
// superseded SVID is refused).
func (s *Server) authAgent(r *http.Request) (caller, *apiError) {
	id, ok := identity.PeerID(r.TLS)
	if !ok {
		return caller{}, unauthenticated("client certificate (an agent X.509-SVID) required")
	}
	c := caller{Actor: id.String(), ID: id, Serial: r.TLS.PeerCertificates[0].SerialNumber.Text(16)}
	if !registry.IsAgentID(id) {
		return c, forbidden(fmt.Errorf("%s is not an agent ID", id))
	}
	a, err := s.store.GetAgent(r.Context(), id.String())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return c, &apiError{status: http.StatusForbidden, public: "agent is not attested (evicted?): attest again",
			cause: fmt.Errorf("no agent record for %s", id), code: apiv1.CodeAgentNotAttested}
	case err != nil:
		return c, internal(err)
	case a.Banned:
		return c, errBanned(fmt.Errorf("%s is banned", id))
	case c.Serial == a.CertSerial:
		if a.PrevCertSerial != "" {
			// The renewed certificate is in use: retire the previous one.
			if err := s.store.ConfirmAgentCert(r.Context(), id.String(), c.Serial); err != nil {
				return c, internal(err)
			}
		}
	case c.Serial == a.PrevCertSerial:
		// Renewed, but the new certificate has not been used yet (its
		// delivery may have failed): the old one still works.
	default:
		return c, forbidden(fmt.Errorf("%s presented certificate %s, current is %s", id, c.Serial, a.CertSerial))
	}
	c.Agent = a
	return c, nil
}

// redactedDatastore is the datastore URL safe for logs.
func (s *Server) redactedDatastore() string { return sqlstore.RedactURL(s.set.Datastore) }
