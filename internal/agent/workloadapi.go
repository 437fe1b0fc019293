package agent

import (
	"bytes"
	"context"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/trustmesh/trustmesh/internal/attest"
)

// securityHeader must be on every Workload API call (SPIFFE Workload
// Endpoint spec): it shows the caller meant to talk to a Workload API and
// was not tricked into it (e.g. by an SSRF).
const securityHeader = "workload.spiffe.io"

// workloads attests callers and answers the Workload API and SDS from the
// cache.
type workloads struct {
	cache     *Cache
	node      *node
	attestors []attest.WorkloadAttestor
	log       *slog.Logger
	metrics   *agentMetrics
	jwts      *jwtCache
	stopping  <-chan struct{}
	// now is the agent's clock (the manager's): what has expired by it is
	// never served. Nil means time.Now.
	now func() time.Time
}

func (w *workloads) clock() time.Time {
	if w.now == nil {
		return time.Now()
	}
	return w.now()
}

// errExpired ends a stream that has nothing valid left to send: the SVIDs
// it carried expired (or their entries were replaced) and the agent has no
// fresh ones yet, typically because the server is unreachable. A message
// without SVIDs is no answer (go-spiffe rejects one: "no SVIDs in
// response"), so ending the stream is how it says "none": the workload must
// stop using what it was sent, and retries.
var errExpired = status.Error(codes.Unavailable, "no valid SVID to send: those sent on this stream expired or were withdrawn, and the agent has no fresh ones yet; retry")

func checkSecurityHeader(ctx context.Context) error {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok || len(md.Get(securityHeader)) != 1 || md.Get(securityHeader)[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

var errNoIdentity = status.Error(codes.PermissionDenied, "no identity issued")

// selectors attests the caller with every attestor.
func (w *workloads) selectors(ctx context.Context) (map[string]struct{}, attest.PeerInfo, error) {
	p, ok := peerOf(ctx)
	if !ok {
		return nil, p, status.Error(codes.Internal, "no peer credentials for this connection")
	}
	out := map[string]struct{}{}
	for _, a := range w.attestors {
		sels, err := a.Attest(ctx, p)
		if err != nil {
			w.log.Info("workload attestation failed", "attestor", a.Name(), "pid", p.PID, "uid", p.UID, "error", err)
			return nil, p, status.Error(codes.PermissionDenied, "could not attest the caller")
		}
		for _, s := range sels {
			out[s] = struct{}{}
		}
	}
	return out, p, nil
}

// waitSynced blocks until the cache has seen the server's state once, so
// an early caller waits for its identity instead of being told it has
// none.
func (w *workloads) waitSynced(ctx context.Context) (*Snapshot, error) {
	for {
		snap := w.cache.Current()
		if snap.Synced {
			return snap, nil
		}
		select {
		case <-snap.Changed():
		case <-ctx.Done():
			return nil, ctxStatus(ctx)
		case <-w.stopping:
			return nil, status.Error(codes.Unavailable, "agent is stopping")
		}
	}
}

// ctxStatus is the status of a call whose context ended: DeadlineExceeded
// or Canceled, never OK.
//
// A handler must not return nil for it. When the caller's deadline passes,
// its end and ours notice at about the same moment (in tests, in the same
// process); grpc-go then reports whichever status reaches the caller first,
// so a nil here would sometimes show the caller a stream that ended
// cleanly (io.EOF) instead of its deadline.
func ctxStatus(ctx context.Context) error {
	return status.FromContextError(ctx.Err()).Err()
}

// stream runs a Workload API stream: build answers from each snapshot and
// send those that differ from the last, until the caller leaves (its
// context's status, never OK: the stream has no natural end), loses its
// identity, loses what it was sent (build has nothing to send any more:
// its SVIDs expired; Unavailable) or the agent stops.
func (w *workloads) stream(ctx context.Context, method string, build func(*Snapshot) (proto.Message, error), send func(proto.Message) error) error {
	w.metrics.streams.WithLabelValues(method).Inc()
	defer w.metrics.streams.WithLabelValues(method).Dec()
	if _, err := w.waitSynced(ctx); err != nil {
		return err
	}
	var last proto.Message
	for {
		snap := w.cache.Current()
		msg, err := build(snap)
		if err != nil {
			w.count(method, err)
			return err
		}
		if msg == nil && last != nil {
			w.count(method, errExpired)
			return errExpired
		}
		if msg != nil && (last == nil || !proto.Equal(msg, last)) {
			if err := send(msg); err != nil {
				return err
			}
			last = msg
		}
		select {
		case <-snap.Changed():
		case <-ctx.Done():
			return ctxStatus(ctx)
		case <-w.stopping:
			return status.Error(codes.Unavailable, "agent is stopping")
		}
	}
}

// open starts a stream call: the security header, then the caller's
// selectors; the outcome is counted.
func (w *workloads) open(ctx context.Context, method string) (map[string]struct{}, error) {
	if err := checkSecurityHeader(ctx); err != nil {
		w.count(method, err)
		return nil, err
	}
	sels, _, err := w.selectors(ctx)
	w.count(method, err)
	return sels, err
}

func (w *workloads) count(method string, err error) {
	w.metrics.requests.WithLabelValues(method, status.Code(err).String()).Inc()
}

// workloadAPI is the SPIFFE Workload API (go-spiffe's protobuf).
type workloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	*workloads
}

func concatDER(ders [][]byte) []byte {
	return bytes.Join(ders, nil)
}

func (w *workloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, s grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	ctx := s.Context()
	sels, err := w.open(ctx, "FetchX509SVID")
	if err != nil {
		return err
	}
	return w.stream(ctx, "FetchX509SVID", func(snap *Snapshot) (proto.Message, error) {
		matched, svids := snap.Match(sels, w.clock())
		if !matched {
			return nil, errNoIdentity
		}
		if len(svids) == 0 {
			return nil, nil // entitled, SVID on its way (or expired, and a new one not yet)
		}
		bundle := bundleDER(snap)
		resp := &workload.X509SVIDResponse{}
		for _, sv := range svids {
			resp.Svids = append(resp.Svids, &workload.X509SVID{
				SpiffeId: sv.ID.String(), X509Svid: concatDER(sv.ChainDER), X509SvidKey: sv.KeyDER, Bundle: bundle, Hint: sv.Hint,
			})
		}
		return resp, nil
	}, func(m proto.Message) error { return s.Send(m.(*workload.X509SVIDResponse)) })
}

func bundleDER(snap *Snapshot) []byte {
	if snap.Bundle == nil {
		return nil
	}
	var ders [][]byte
	for _, c := range snap.Bundle.X509Authorities() {
		ders = append(ders, c.Raw)
	}
	return concatDER(ders)
}

func (w *workloadAPI) FetchX509Bundles(_ *workload.X509BundlesRequest, s grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	ctx := s.Context()
	sels, err := w.open(ctx, "FetchX509Bundles")
	if err != nil {
		return err
	}
	return w.stream(ctx, "FetchX509Bundles", func(snap *Snapshot) (proto.Message, error) {
		if matched, _ := snap.Match(sels, w.clock()); !matched {
			return nil, errNoIdentity
		}
		if snap.Bundle == nil {
			return nil, nil
		}
		return &workload.X509BundlesResponse{Bundles: map[string][]byte{snap.Bundle.TrustDomain().IDString(): bundleDER(snap)}}, nil
	}, func(m proto.Message) error { return s.Send(m.(*workload.X509BundlesResponse)) })
}

func (w *workloadAPI) FetchJWTBundles(_ *workload.JWTBundlesRequest, s grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	ctx := s.Context()
	sels, err := w.open(ctx, "FetchJWTBundles")
	if err != nil {
		return err
	}
	return w.stream(ctx, "FetchJWTBundles", func(snap *Snapshot) (proto.Message, error) {
		if matched, _ := snap.Match(sels, w.clock()); !matched {
			return nil, errNoIdentity
		}
		if snap.Bundle == nil {
			return nil, nil
		}
		jwks, err := snap.Bundle.JWTBundle().Marshal()
		if err != nil {
			return nil, status.Error(codes.Internal, "encode JWT bundle")
		}
		return &workload.JWTBundlesResponse{Bundles: map[string][]byte{snap.Bundle.TrustDomain().IDString(): jwks}}, nil
	}, func(m proto.Message) error { return s.Send(m.(*workload.JWTBundlesResponse)) })
}

func (w *workloadAPI) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (resp *workload.JWTSVIDResponse, err error) {
	defer func() { w.count("FetchJWTSVID", err) }()
	if err := checkSecurityHeader(ctx); err != nil {
		return nil, err
	}
	if len(req.GetAudience()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	for _, a := range req.GetAudience() {
		if a == "" {
			return nil, status.Error(codes.InvalidArgument, "audience must not be empty")
		}
	}
	sels, _, err := w.selectors(ctx)
	if err != nil {
		return nil, err
	}
	snap, err := w.waitSynced(ctx)
	if err != nil {
		return nil, err
	}
	entries := snap.MatchEntries(sels, w.clock())
	if req.GetSpiffeId() != "" {
		var only = entries[:0:0]
		for _, e := range entries {
			if e.SPIFFEID == req.GetSpiffeId() {
				only = append(only, e)
			}
		}
		entries = only
	}
	if len(entries) == 0 {
		return nil, errNoIdentity
	}
	resp = &workload.JWTSVIDResponse{}
	for _, e := range entries {
		tok, err := w.jwts.get(ctx, w.node, e.ID, req.GetAudience())
		if err != nil {
			w.log.Warn("JWT-SVID unavailable", "entry_id", e.ID, "error", err)
			return nil, status.Error(codes.Unavailable, "could not obtain a JWT-SVID: the server is unreachable")
		}
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: e.SPIFFEID, Svid: tok, Hint: e.Hint})
	}
	return resp, nil
}

func (w *workloadAPI) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (resp *workload.ValidateJWTSVIDResponse, err error) {
	defer func() { w.count("ValidateJWTSVID", err) }()
	if err := checkSecurityHeader(ctx); err != nil {
		return nil, err
	}
	if req.GetAudience() == "" {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.GetSvid() == "" {
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	// Like every other call, only for workloads the agent has an identity
	// for: the bundle and the claims are not for anyone who can connect.
	sels, _, err := w.selectors(ctx)
	if err != nil {
		return nil, err
	}
	snap, err := w.waitSynced(ctx)
	if err != nil {
		return nil, err
	}
	if matched, _ := snap.Match(sels, w.clock()); !matched {
		return nil, errNoIdentity
	}
	if snap.Bundle == nil {
		return nil, status.Error(codes.Unavailable, "no trust bundle yet")
	}
	svid, err := jwtsvid.ParseAndValidate(req.GetSvid(), snap.Bundle, []string{req.GetAudience()})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "claims cannot be represented: "+err.Error())
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}

// jwtCache keeps JWT-SVIDs per entry and audience set until half their
// life, and serves a still-valid one when the server cannot be reached.
type jwtCache struct {
	mu     sync.Mutex
	tokens map[string]cachedJWT
	now    func() time.Time
}

type cachedJWT struct {
	token           string
	renewAt, expiry time.Time
}

func newJWTCache() *jwtCache { return &jwtCache{tokens: map[string]cachedJWT{}, now: time.Now} }

func (c *jwtCache) get(ctx context.Context, n *node, entryID string, audience []string) (string, error) {
	key := jwtCacheKey(entryID, audience)
	now := c.now()
	c.mu.Lock()
	cached, ok := c.tokens[key]
	c.mu.Unlock()
	if ok && now.Before(cached.renewAt) {
		return cached.token, nil
	}
	svid, err := n.client.AgentJWTSVID(ctx, entryID, audience)
	if err != nil {
		if ok && now.Before(cached.expiry) {
			return cached.token, nil
		}
		return "", err
	}
	c.mu.Lock()
	if len(c.tokens) > 10000 { // bounded: drop everything rather than grow without limit
		c.tokens = map[string]cachedJWT{}
	}
	c.tokens[key] = cachedJWT{token: svid.Token, renewAt: halfLife(now, svid.ExpiresAt, 0), expiry: svid.ExpiresAt}
	c.mu.Unlock()
	return svid.Token, nil
}

// jwtCacheKey names an entry and a set of audiences. Audiences may hold any
// character, so each part is length-prefixed: with a separator, ["a", "b"]
// and ["a\x00b"] would share a token.
func jwtCacheKey(entryID string, audience []string) string {
	aud := append([]string(nil), audience...)
	sort.Strings(aud)
	var b strings.Builder
	for _, s := range append([]string{entryID}, aud...) {
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
	}
	return b.String()
}
