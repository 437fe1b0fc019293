package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/attest"
	"github.com/trustmesh/trustmesh/internal/audit"
	"github.com/trustmesh/trustmesh/internal/ca"
	"github.com/trustmesh/trustmesh/internal/registry"
	"github.com/trustmesh/trustmesh/internal/store"
)

// registerAgent mounts the agent API. Attestation needs no client
// certificate (it is how an agent gets one); everything else needs a
// current agent SVID.
func (s *Server) registerAgent(mux *http.ServeMux) {
	s.route(mux, "POST "+apiv1.PathAgentAttest, "agent", "agent.attest", nil, s.attestAgent)
	s.route(mux, "POST "+apiv1.PathAgentRenew, "agent", "agent.renew", s.authAgent, s.renewAgent)
	s.route(mux, "GET "+apiv1.PathAgentEntries, "agent", "agent.entries", s.authAgent, s.agentEntries)
	s.route(mux, "POST "+apiv1.PathAgentX509SVID, "agent", "agent.x509svids", s.authAgent, s.agentX509SVIDs)
	s.route(mux, "POST "+apiv1.PathAgentJWTSVID, "agent", "agent.jwtsvid", s.authAgent, s.agentJWTSVID)
	s.route(mux, "GET "+apiv1.PathAgentWatch, "agent", "agent.watch", s.authAgent, s.watchAgent)
}

func (s *Server) attestAgent(w http.ResponseWriter, r *http.Request, req *request) error {
	var in apiv1.AttestRequest
	if err := decodeJSON(w, r, &in); err != nil {
		return err
	}
	pub, err := ca.ParseCSR(in.CSR)
	if err != nil {
		return badRequest(err)
	}
	var (
		agent   store.Agent
		tokenID string
	)
	switch {
	case in.JoinToken != "" && in.X509PoP != nil:
		return badRequest(errors.New("give one attestation method: join_token or x509pop"))
	case in.JoinToken != "":
		if tokenID, err = registry.VerifyJoinToken(r.Context(), s.store, in.JoinToken, s.now()); err != nil {
			if errors.Is(err, registry.ErrInvalidJoinToken) {
				return errAttestation(err)
			}
			return internal(err)
		}
		agent = store.Agent{SPIFFEID: registry.JoinTokenAgentID(s.set.TrustDomain, tokenID).String(), AttestationType: "join_token"}
	case in.X509PoP != nil:
		binding, err := attest.X509PoPBinding(r.TLS)
		if err != nil {
			return badRequest(err)
		}
		res, err := attest.VerifyX509PoP(in.X509PoP.Chain, in.X509PoP.Signature, binding, s.set.X509PoPRoots, s.now())
		if err != nil {
			return errX509PoP(err)
		}
		sels, err := registry.ParseSelectors(res.Selectors)
		if err != nil {
			return errX509PoP(err)
		}
		agent = store.Agent{SPIFFEID: registry.X509PoPAgentID(s.set.TrustDomain, res.Fingerprint).String(), AttestationType: attest.X509PoPType, Selectors: sels}
	default:
		return badRequest(errors.New("no attestation data: give a join_token or an x509pop proof"))
	}
	agentID := spiffeid.RequireFromString(agent.SPIFFEID)
	req.caller = caller{Actor: agent.SPIFFEID, ID: agentID}
	req.target = agent.SPIFFEID
	if existing, err := s.store.GetAgent(r.Context(), agent.SPIFFEID); err == nil && existing.Banned {
		return errBanned(fmt.Errorf("%s is banned", agent.SPIFFEID))
	}
	svid, err := s.signX509(agent.SPIFFEID, ca.X509SVIDParams{SPIFFEID: agentID, PublicKey: pub, TTL: s.set.AgentSVIDTTL}, "agent")
	if err != nil {
		return err
	}
	agent.CertSerial, agent.CertNotAfter = svid.Serial, svid.ExpiresAt
	// A join token is consumed in the transaction that records the agent.
	if _, err := s.store.AttestAgent(r.Context(), agent, tokenID); err != nil {
		if tokenID != "" && errors.Is(err, store.ErrNotFound) {
			return errAttestation(fmt.Errorf("%w: token %s was used concurrently", registry.ErrInvalidJoinToken, tokenID))
		}
		return storeError(err)
	}
	bundle, err := s.bundle.Bundle().Marshal()
	if err != nil {
		return internal(err)
	}
	req.attrs = []slog.Attr{slog.String("attestation_type", agent.AttestationType), slog.String("serial_number", svid.Serial)}
	writeJSON(w, http.StatusOK, apiv1.AttestResponse{SVID: svid, Bundle: bundle})
	return nil
}

// errAttestation is the one answer for every failed join-token
// attestation: unknown, wrong, expired, revoked and used tokens look alike.
func errAttestation(cause error) *apiError {
	return &apiError{status: http.StatusForbidden, public: "attestation failed: " + registry.ErrInvalidJoinToken.Error(),
		cause: cause, code: apiv1.CodeAttestationFailed}
}

func errX509PoP(cause error) *apiError {
	return &apiError{status: http.StatusForbidden, public: "attestation failed: x509pop proof refused", cause: cause, code: apiv1.CodeAttestationFailed}
}

func (s *Server) renewAgent(w http.ResponseWriter, r *http.Request, req *request) error {
	req.target = req.caller.Actor
	var in apiv1.RenewRequest
	if err := decodeJSON(w, r, &in); err != nil {
		return err
	}
	pub, err := ca.ParseCSR(in.CSR)
	if err != nil {
		return badRequest(err)
	}
	svid, err := s.signX509(req.caller.ID.String(), ca.X509SVIDParams{SPIFFEID: req.caller.ID, PublicKey: pub, TTL: s.set.AgentSVIDTTL}, "agent")
	if err != nil {
		return err
	}
	if err := s.store.RenewAgentCert(r.Context(), req.caller.ID.String(), req.caller.Serial, svid.Serial, svid.ExpiresAt); err != nil {
		return storeError(err)
	}
	req.attrs = []slog.Attr{slog.String("serial_number", svid.Serial)}
	writeJSON(w, http.StatusOK, svid)
	return nil
}

// authorized returns the caller agent's authorized entries by ID.
func (s *Server) authorized(r *http.Request, c caller) (map[string]store.Entry, []store.Entry, error) {
	entries, err := registry.AuthorizedEntries(r.Context(), s.store, s.set.TrustDomain, c.Agent.SPIFFEID, c.Agent.Selectors, s.now())
	if err != nil {
		return nil, nil, internal(err)
	}
	byID := make(map[string]store.Entry, len(entries))
	for _, e := range entries {
		byID[e.ID] = e
	}
	return byID, entries, nil
}

func (s *Server) agentEntries(w http.ResponseWriter, r *http.Request, req *request) error {
	_, entries, err := s.authorized(r, req.caller)
	if err != nil {
		return err
	}
	out := apiv1.EntryList{Entries: make([]apiv1.Entry, 0, len(entries))}
	for _, e := range entries {
		out.Entries = append(out.Entries, entryToAPI(e))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// errNotAuthorized is what an agent is told about an entry it may not use:
// the same answer whether the entry exists or not.
var errNotAuthorized = errors.New("entry not found or not authorized for this agent")

func (s *Server) agentX509SVIDs(w http.ResponseWriter, r *http.Request, req *request) error {
	req.target = req.caller.Actor
	var in apiv1.X509SVIDBatchRequest
	if err := decodeJSON(w, r, &in); err != nil {
		return err
	}
	if len(in.Requests) == 0 || len(in.Requests) > 500 {
		return badRequest(fmt.Errorf("want 1 to 500 requests, got %d", len(in.Requests)))
	}
	byID, _, err := s.authorized(r, req.caller)
	if err != nil {
		return err
	}
	out := apiv1.X509SVIDBatchResponse{Results: make([]apiv1.X509SVIDResult, len(in.Requests))}
	for i, sr := range in.Requests {
		out.Results[i] = s.issueForEntry(r, req.caller, byID, sr)
	}
	req.attrs = []slog.Attr{slog.Int("requested", len(in.Requests))}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// issueForEntry signs one SVID of a batch, auditing it on its own.
func (s *Server) issueForEntry(r *http.Request, c caller, authorized map[string]store.Entry, sr apiv1.SVIDRequest) apiv1.X509SVIDResult {
	res := apiv1.X509SVIDResult{EntryID: sr.EntryID}
	ev := audit.Event{Actor: c.Actor, Operation: "x509svid.issue", Target: sr.EntryID}
	fail := func(public string, outcome string, cause error) apiv1.X509SVIDResult {
		res.Error = public
		ev.Outcome, ev.Reason = outcome, cause.Error()
		s.audit.Record(r.Context(), ev)
		if outcome == audit.Denied {
			s.metrics.Denials.WithLabelValues("agent", "x509svid.issue").Inc()
			s.log.Info("SVID request denied", "agent", c.Actor, "entry_id", sr.EntryID, "reason", cause)
		}
		return res
	}
	e, ok := authorized[sr.EntryID]
	if !ok {
		return fail(errNotAuthorized.Error(), audit.Denied, fmt.Errorf("entry %q is not among the agent's authorized entries", sr.EntryID))
	}
	pub, err := ca.ParseCSR(sr.CSR)
	if err != nil {
		return fail(err.Error(), audit.Failure, err)
	}
	id, err := spiffeid.FromString(e.SPIFFEID)
	if err != nil {
		return fail("internal error", audit.Failure, err)
	}
	svid, err := s.signX509(e.SPIFFEID, ca.X509SVIDParams{SPIFFEID: id, PublicKey: pub, DNSNames: e.DNSNames, TTL: e.X509SVIDTTL}, "agent")
	if err != nil {
		return fail("internal error", audit.Failure, err)
	}
	res.SVID = &svid
	ev.Outcome = audit.Success
	ev.Attrs = []slog.Attr{slog.String("spiffe_id", e.SPIFFEID), slog.String("serial_number", svid.Serial), slog.Time("expires_at", svid.ExpiresAt)}
	s.audit.Record(r.Context(), ev)
	return res
}

func (s *Server) agentJWTSVID(w http.ResponseWriter, r *http.Request, req *request) error {
	var in apiv1.AgentJWTRequest
	if err := decodeJSON(w, r, &in); err != nil {
		return err
	}
	req.target = in.EntryID
	byID, _, err := s.authorized(r, req.caller)
	if err != nil {
		return err
	}
	e, ok := byID[in.EntryID]
	if !ok {
		return &apiError{status: http.StatusForbidden, public: errNotAuthorized.Error(), cause: fmt.Errorf("entry %q is not among the agent's authorized entries", in.EntryID)}
	}
	id, err := spiffeid.FromString(e.SPIFFEID)
	if err != nil {
		return internal(err)
	}
	tok, exp, err := s.ca.SignJWTSVID(id, in.Audience, e.JWTSVIDTTL)
	if err != nil {
		if errors.Is(err, ca.ErrNoActiveCA) {
			return internal(err)
		}
		return badRequest(err)
	}
	s.metrics.SVIDsIssued.WithLabelValues("jwt", "agent").Inc()
	req.attrs = []slog.Attr{slog.String("spiffe_id", e.SPIFFEID), slog.Any("audience", in.Audience), slog.Time("expires_at", exp)}
	writeJSON(w, http.StatusOK, apiv1.JWTSVID{SPIFFEID: e.SPIFFEID, Token: tok, ExpiresAt: exp})
	return nil
}
