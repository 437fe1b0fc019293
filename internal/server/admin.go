package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/google/uuid"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/ca"
	"github.com/trustmesh/trustmesh/internal/registry"
	"github.com/trustmesh/trustmesh/internal/store"
)

// registerAdmin mounts the admin API on mux behind auth (the socket's or
// the mTLS admin check).
func (s *Server) registerAdmin(mux *http.ServeMux, auth authenticator) {
	s.route(mux, "GET "+apiv1.PathEntries, "admin", "entry.list", auth, s.listEntries)
	s.route(mux, "POST "+apiv1.PathEntries, "admin", "entry.create", auth, s.createEntry)
	s.route(mux, "GET "+apiv1.PathEntry+"{id}", "admin", "entry.show", auth, s.showEntry)
	s.route(mux, "PATCH "+apiv1.PathEntry+"{id}", "admin", "entry.update", auth, s.updateEntry)
	s.route(mux, "DELETE "+apiv1.PathEntry+"{id}", "admin", "entry.delete", auth, s.deleteEntry)
	s.route(mux, "POST "+apiv1.PathTokens, "admin", "token.generate", auth, s.generateToken)
	s.route(mux, "DELETE "+apiv1.PathToken+"{id}", "admin", "token.revoke", auth, s.revokeToken)
	s.route(mux, "GET "+apiv1.PathAgents, "admin", "agent.list", auth, s.listAgents)
	s.route(mux, "POST "+apiv1.PathAgentEvict, "admin", "agent.evict", auth, s.evictAgent)
	s.route(mux, "POST "+apiv1.PathAgentBan, "admin", "agent.ban", auth, s.banAgent)
	s.route(mux, "POST "+apiv1.PathMintX509, "admin", "x509svid.mint", auth, s.mintX509)
	s.route(mux, "POST "+apiv1.PathMintJWT, "admin", "jwtsvid.mint", auth, s.mintJWT)
}

func entryToAPI(e store.Entry) apiv1.Entry {
	out := apiv1.Entry{
		ID:          e.ID,
		SPIFFEID:    e.SPIFFEID,
		ParentID:    e.ParentID,
		Selectors:   registry.FormatSelectors(e.Selectors),
		X509SVIDTTL: int64(e.X509SVIDTTL / time.Second),
		JWTSVIDTTL:  int64(e.JWTSVIDTTL / time.Second),
		DNSNames:    e.DNSNames,
		Admin:       e.Admin,
		Hint:        e.Hint,
		CreatedAt:   e.CreatedAt,
		UpdatedAt:   e.UpdatedAt,
		Revision:    e.Revision,
	}
	if out.DNSNames == nil {
		out.DNSNames = []string{}
	}
	if !e.ExpiresAt.IsZero() {
		t := e.ExpiresAt
		out.ExpiresAt = &t
	}
	return out
}

func entrySpecFromStore(e store.Entry) registry.EntrySpec {
	return registry.EntrySpec{
		SPIFFEID: e.SPIFFEID, ParentID: e.ParentID, Selectors: registry.FormatSelectors(e.Selectors),
		X509SVIDTTL: e.X509SVIDTTL, JWTSVIDTTL: e.JWTSVIDTTL, DNSNames: e.DNSNames,
		Admin: e.Admin, Hint: e.Hint, ExpiresAt: e.ExpiresAt,
	}
}

func (s *Server) listEntries(w http.ResponseWriter, r *http.Request, req *request) error {
	f := store.EntryFilter{SPIFFEID: r.URL.Query().Get("spiffe_id")}
	if p := r.URL.Query().Get("parent_id"); p != "" {
		f.ParentIDs = []string{p}
	}
	entries, err := s.store.ListEntries(r.Context(), f)
	if err != nil {
		return internal(err)
	}
	out := apiv1.EntryList{Entries: make([]apiv1.Entry, 0, len(entries))}
	for _, e := range entries {
		out.Entries = append(out.Entries, entryToAPI(e))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) createEntry(w http.ResponseWriter, r *http.Request, req *request) error {
	var in apiv1.EntryCreate
	if err := decodeJSON(w, r, &in); err != nil {
		return err
	}
	req.target = in.SPIFFEID
	x509TTL, err1 := secondsToDuration("X.509-SVID TTL", in.X509SVIDTTL)
	jwtTTL, err2 := secondsToDuration("JWT-SVID TTL", in.JWTSVIDTTL)
	if err := errors.Join(err1, err2); err != nil {
		return badRequest(err)
	}
	spec := registry.EntrySpec{
		SPIFFEID: in.SPIFFEID, ParentID: in.ParentID, Selectors: in.Selectors,
		X509SVIDTTL: x509TTL, JWTSVIDTTL: jwtTTL, DNSNames: in.DNSNames, Admin: in.Admin, Hint: in.Hint,
	}
	if in.ExpiresAt != nil {
		spec.ExpiresAt = *in.ExpiresAt
	}
	e, err := registry.ValidateEntry(s.set.TrustDomain, spec, s.now())
	if err != nil {
		return badRequest(err)
	}
	e.ID = uuid.NewString()
	created, err := s.store.CreateEntry(r.Context(), e)
	if err != nil {
		return storeError(err)
	}
	req.target = created.ID
	req.attrs = []slog.Attr{slog.String("spiffe_id", created.SPIFFEID), slog.String("parent_id", created.ParentID)}
	writeJSON(w, http.StatusCreated, entryToAPI(created))
	return nil
}

func (s *Server) showEntry(w http.ResponseWriter, r *http.Request, req *request) error {
	req.target = r.PathValue("id")
	e, err := s.store.GetEntry(r.Context(), req.target)
	if err != nil {
		return storeError(err)
	}
	writeJSON(w, http.StatusOK, entryToAPI(e))
	return nil
}

func (s *Server) updateEntry(w http.ResponseWriter, r *http.Request, req *request) error {
	req.target = r.PathValue("id")
	var p apiv1.EntryPatch
	if err := decodeJSON(w, r, &p); err != nil {
		return err
	}
	cur, err := s.store.GetEntry(r.Context(), req.target)
	if err != nil {
		return storeError(err)
	}
	spec := entrySpecFromStore(cur)
	// An expiry is only checked for being in the future when it is being
	// set; an untouched one is carried over as is.
	keepExpiry := cur.ExpiresAt
	spec.ExpiresAt = time.Time{}
	var errs []error
	if p.SPIFFEID != nil {
		spec.SPIFFEID = *p.SPIFFEID
	}
	if p.ParentID != nil {
		spec.ParentID = *p.ParentID
	}
	if p.Selectors != nil {
		spec.Selectors = *p.Selectors
	}
	if p.X509SVIDTTL != nil {
		d, err := secondsToDuration("X.509-SVID TTL", *p.X509SVIDTTL)
		errs = append(errs, err)
		spec.X509SVIDTTL = d
	}
	if p.JWTSVIDTTL != nil {
		d, err := secondsToDuration("JWT-SVID TTL", *p.JWTSVIDTTL)
		errs = append(errs, err)
		spec.JWTSVIDTTL = d
	}
	if p.DNSNames != nil {
		spec.DNSNames = *p.DNSNames
	}
	if p.Admin != nil {
		spec.Admin = *p.Admin
	}
	if p.Hint != nil {
		spec.Hint = *p.Hint
	}
	switch {
	case p.ClearExpiry && p.ExpiresAt != nil:
		errs = append(errs, errors.New("expires_at and clear_expiry are mutually exclusive"))
	case p.ClearExpiry:
		keepExpiry = time.Time{}
	case p.ExpiresAt != nil:
		spec.ExpiresAt = *p.ExpiresAt
	}
	if err := errors.Join(errs...); err != nil {
		return badRequest(err)
	}
	e, err := registry.ValidateEntry(s.set.TrustDomain, spec, s.now())
	if err != nil {
		return badRequest(err)
	}
	if p.ExpiresAt == nil {
		e.ExpiresAt = keepExpiry
	}
	e.ID = cur.ID
	e.Revision = cur.Revision // compare-and-swap against what we read
	if p.Revision != 0 {
		e.Revision = p.Revision
	}
	updated, err := s.store.UpdateEntry(r.Context(), e)
	if err != nil {
		return storeError(err)
	}
	req.attrs = []slog.Attr{slog.String("spiffe_id", updated.SPIFFEID), slog.Int64("revision", updated.Revision)}
	writeJSON(w, http.StatusOK, entryToAPI(updated))
	return nil
}

func (s *Server) deleteEntry(w http.ResponseWriter, r *http.Request, req *request) error {
	req.target = r.PathValue("id")
	e, err := s.store.DeleteEntry(r.Context(), req.target)
	if err != nil {
		return storeError(err)
	}
	req.attrs = []slog.Attr{slog.String("spiffe_id", e.SPIFFEID)}
	writeJSON(w, http.StatusOK, entryToAPI(e))
	return nil
}

func (s *Server) generateToken(w http.ResponseWriter, r *http.Request, req *request) error {
	var in apiv1.TokenCreate
	if err := decodeJSON(w, r, &in); err != nil {
		return err
	}
	ttl, err := secondsToDuration("token TTL", in.TTL)
	if err != nil {
		return badRequest(err)
	}
	if ttl == 0 {
		ttl = s.set.JoinTokenTTL
	}
	tok, rec, err := registry.NewJoinToken(s.now(), ttl)
	if err != nil {
		return badRequest(err)
	}
	if err := s.store.CreateJoinToken(r.Context(), rec); err != nil {
		return storeError(err)
	}
	req.target = rec.ID // the public id; the secret never reaches the audit log
	writeJSON(w, http.StatusCreated, apiv1.Token{
		Token: tok, ID: rec.ID, ExpiresAt: rec.ExpiresAt,
		AgentSPIFFEID: registry.JoinTokenAgentID(s.set.TrustDomain, rec.ID).String(),
	})
	return nil
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request, req *request) error {
	req.target = r.PathValue("id")
	if err := s.store.DeleteJoinToken(r.Context(), req.target); err != nil {
		return storeError(err)
	}
	writeJSON(w, http.StatusOK, apiv1.TokenRef{ID: req.target})
	return nil
}

func agentToAPI(a store.Agent) apiv1.Agent {
	return apiv1.Agent{
		SPIFFEID: a.SPIFFEID, AttestationType: a.AttestationType, Selectors: registry.FormatSelectors(a.Selectors),
		SerialNumber: a.CertSerial, ExpiresAt: a.CertNotAfter, Banned: a.Banned, CreatedAt: a.CreatedAt, UpdatedAt: a.UpdatedAt,
	}
}

func (s *Server) listAgents(w http.ResponseWriter, r *http.Request, req *request) error {
	agents, err := s.store.ListAgents(r.Context())
	if err != nil {
		return internal(err)
	}
	out := apiv1.AgentList{Agents: make([]apiv1.Agent, 0, len(agents))}
	for _, a := range agents {
		out.Agents = append(out.Agents, agentToAPI(a))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) agentRef(w http.ResponseWriter, r *http.Request, req *request) (string, error) {
	var in apiv1.AgentRef
	if err := decodeJSON(w, r, &in); err != nil {
		return "", err
	}
	req.target = in.SPIFFEID
	id, err := registry.ParseID(s.set.TrustDomain, "agent ID", in.SPIFFEID)
	if err != nil {
		return "", badRequest(err)
	}
	if !registry.IsAgentID(id) {
		return "", badRequest(fmt.Errorf("%q is not an agent ID (spiffe://%s/trustmesh/agent/...)", in.SPIFFEID, s.set.TrustDomain.Name()))
	}
	return id.String(), nil
}

func (s *Server) evictAgent(w http.ResponseWriter, r *http.Request, req *request) error {
	id, err := s.agentRef(w, r, req)
	if err != nil {
		return err
	}
	a, err := s.store.DeleteAgent(r.Context(), id)
	if err != nil {
		return storeError(err)
	}
	writeJSON(w, http.StatusOK, agentToAPI(a))
	return nil
}

func (s *Server) banAgent(w http.ResponseWriter, r *http.Request, req *request) error {
	id, err := s.agentRef(w, r, req)
	if err != nil {
		return err
	}
	a, err := s.store.BanAgent(r.Context(), id)
	if err != nil {
		return storeError(err)
	}
	writeJSON(w, http.StatusOK, agentToAPI(a))
	return nil
}

func (s *Server) mintX509(w http.ResponseWriter, r *http.Request, req *request) error {
	var in apiv1.X509MintRequest
	if err := decodeJSON(w, r, &in); err != nil {
		return err
	}
	id, ttl, err := s.mintTarget(req, in.SPIFFEID, in.TTL)
	if err != nil {
		return err
	}
	dns, err := registry.NormalizeDNSNames(in.DNSNames)
	if err != nil {
		return badRequest(err)
	}
	pub, err := ca.ParseCSR(in.CSR)
	if err != nil {
		return badRequest(err)
	}
	svid, err := s.signX509(id.String(), ca.X509SVIDParams{SPIFFEID: id, PublicKey: pub, DNSNames: dns, TTL: ttl}, "admin")
	if err != nil {
		return err
	}
	req.attrs = []slog.Attr{slog.String("serial_number", svid.Serial), slog.Time("expires_at", svid.ExpiresAt)}
	writeJSON(w, http.StatusOK, apiv1.X509MintResponse{SVID: svid, BundlePEM: string(s.bundlePEM())})
	return nil
}

func (s *Server) mintJWT(w http.ResponseWriter, r *http.Request, req *request) error {
	var in apiv1.JWTMintRequest
	if err := decodeJSON(w, r, &in); err != nil {
		return err
	}
	id, ttl, err := s.mintTarget(req, in.SPIFFEID, in.TTL)
	if err != nil {
		return err
	}
	tok, exp, err := s.ca.SignJWTSVID(id, in.Audience, ttl)
	if err != nil {
		if errors.Is(err, ca.ErrNoActiveCA) {
			return internal(err)
		}
		return badRequest(err)
	}
	s.metrics.SVIDsIssued.WithLabelValues("jwt", "admin").Inc()
	req.attrs = []slog.Attr{slog.Any("audience", in.Audience), slog.Time("expires_at", exp)}
	writeJSON(w, http.StatusOK, apiv1.JWTSVID{SPIFFEID: id.String(), Token: tok, ExpiresAt: exp})
	return nil
}

// mintTarget checks the SPIFFE ID and TTL of a mint request: any workload
// ID in the trust domain (not the reserved agent and server IDs).
func (s *Server) mintTarget(req *request, rawID string, ttlSeconds int64) (spiffeid.ID, time.Duration, error) {
	req.target = rawID
	id, err := registry.ParseWorkloadID(s.set.TrustDomain, rawID)
	if err != nil {
		return id, 0, badRequest(err)
	}
	ttl, err := secondsToDuration("TTL", ttlSeconds)
	if err == nil {
		err = registry.CheckTTL("TTL", ttl)
	}
	if err != nil {
		return id, 0, badRequest(err)
	}
	return id, ttl, nil
}

// signX509 signs and counts an X.509-SVID.
func (s *Server) signX509(id string, p ca.X509SVIDParams, callerKind string) (apiv1.X509SVID, error) {
	issued, err := s.ca.SignX509SVID(p)
	if err != nil {
		return apiv1.X509SVID{}, internal(err)
	}
	s.metrics.SVIDsIssued.WithLabelValues("x509", callerKind).Inc()
	return apiv1.X509SVID{SPIFFEID: id, Chain: issued.Chain, ExpiresAt: issued.NotAfter, Serial: issued.Serial.Text(16)}, nil
}
