package agent

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/attest"
	"github.com/trustmesh/trustmesh/internal/ca"
	"github.com/trustmesh/trustmesh/internal/ca/keymanager"
	"github.com/trustmesh/trustmesh/internal/store/sqlstore"
)

// fuzzFixture is a cache holding one SVID and a bundle with an X.509 and a
// JWT authority, plus a JWT signed by that authority: enough state for
// the request handlers to do real work.
type fuzzFixture struct {
	w     *workloads
	token string
}

var (
	fuzzOnce sync.Once
	fuzzFix  fuzzFixture
)

func fixture(tb testing.TB) fuzzFixture {
	fuzzOnce.Do(func() {
		td := spiffeid.RequireTrustDomainFromString("example.org")
		st, err := sqlstore.Open(context.Background(), "sqlite://"+filepath.Join(tb.TempDir(), "ds.sqlite3"))
		if err != nil {
			tb.Fatal(err)
		}
		c := ca.New(ca.Config{TrustDomain: td})
		m, err := ca.NewManager(ca.ManagerConfig{CA: c, TrustDomain: td, KeyManager: keymanager.NewMemory(), Publisher: st})
		if err != nil {
			tb.Fatal(err)
		}
		if err := m.Initialize(context.Background()); err != nil {
			tb.Fatal(err)
		}
		key, _ := keymanager.ECP256.Generate()
		id := spiffeid.RequireFromString("spiffe://example.org/w")
		issued, err := c.SignX509SVID(ca.X509SVIDParams{SPIFFEID: id, PublicKey: key.Public()})
		if err != nil {
			tb.Fatal(err)
		}
		keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
		leaf, _ := x509.ParseCertificate(issued.Chain[0])
		bundle := spiffebundle.FromX509Authorities(td, []*x509.Certificate{c.X509Authority().Cert})
		k := c.JWTKey()
		_ = bundle.AddJWTAuthority(k.KeyID, k.Signer.Public())
		tok, _, err := c.SignJWTSVID(id, []string{"aud"}, time.Hour)
		if err != nil {
			tb.Fatal(err)
		}
		cache := NewCache()
		cache.SetState([]apiv1.Entry{{ID: "e1", SPIFFEID: id.String(), Selectors: []string{"unix:uid:1"}, Revision: 1}}, bundle, time.Now())
		cache.PutSVIDs([]*SVID{{EntryID: "e1", ID: id, ChainDER: issued.Chain, Certs: []*x509.Certificate{leaf}, Key: key, KeyDER: keyDER, NotAfter: leaf.NotAfter, EntryRevision: 1, RenewAt: leaf.NotAfter}})
		fuzzFix = fuzzFixture{
			w:     &workloads{cache: cache, log: discardLog(), metrics: newAgentMetrics(), jwts: newJWTCache(), attestors: []attest.WorkloadAttestor{fakeAttestor{}}, stopping: make(chan struct{})},
			token: tok,
		}
	})
	return fuzzFix
}

// fakeAttestor gives every caller unix:uid:1. It stands in for the unix
// attestor because fuzzed calls have no real peer process.
type fakeAttestor struct{}

func (fakeAttestor) Name() string { return "unix" }
func (fakeAttestor) Attest(context.Context, attest.PeerInfo) ([]string, error) {
	return []string{"unix:uid:1"}, nil
}

func callerCtx() context.Context {
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("workload.spiffe.io", "true"))
	return peer.NewContext(ctx, &peer.Peer{AuthInfo: peerAuthInfo{PeerInfo: attest.PeerInfo{PID: 0, UID: 1, GID: 1}}})
}

// FuzzSDSRequest: arbitrary DiscoveryRequest bytes never panic the SDS
// request handling, and only requested names are ever answered.
func FuzzSDSRequest(f *testing.F) {
	for _, names := range [][]string{{"default", "ROOTCA"}, {"spiffe://example.org/w"}, {"spiffe://example.org"}, {}, {"", "\x00"}} {
		b, _ := proto.Marshal(&discoveryv3.DiscoveryRequest{TypeUrl: SecretTypeURL, ResourceNames: names})
		f.Add(b)
	}
	fx := fixture(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req discoveryv3.DiscoveryRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		s := &sds{workloads: fx.w, svidName: DefaultSVIDName, bundleName: DefaultBundleName}
		resp, err := s.FetchSecrets(callerCtx(), &req)
		if err != nil {
			return
		}
		asked := map[string]bool{}
		for _, n := range req.GetResourceNames() {
			asked[n] = true
		}
		for _, sec := range secretsByName(t, resp) {
			if len(asked) > 0 && !asked[sec.Name] {
				t.Fatalf("answered %q, which was not asked for", sec.Name)
			}
		}
	})
}

// FuzzValidateJWTSVID: arbitrary tokens and audiences never panic; what is
// accepted go-spiffe accepts too.
func FuzzValidateJWTSVID(f *testing.F) {
	fx := fixture(f)
	f.Add(fx.token, "aud")
	f.Add(fx.token, "other")
	f.Add("e30.e30.e30", "aud")
	f.Add(strings.Repeat("a.", 50), "")
	f.Fuzz(func(t *testing.T, token, audience string) {
		api := &workloadAPI{workloads: fx.w}
		resp, err := api.ValidateJWTSVID(callerCtx(), &workload.ValidateJWTSVIDRequest{Svid: token, Audience: audience})
		if err != nil {
			return
		}
		svid, err := jwtsvid.ParseAndValidate(token, fx.w.cache.Current().Bundle, []string{audience})
		if err != nil || svid.ID.String() != resp.SpiffeId {
			t.Fatalf("accepted a token go-spiffe rejects: %v", err)
		}
	})
}

// FuzzWorkloadRequests: arbitrary JWT-SVID request bytes never panic the
// handler (which refuses without asking the server: the requested IDs do
// not match, or arguments are wrong).
func FuzzWorkloadRequests(f *testing.F) {
	for _, r := range []*workload.JWTSVIDRequest{{}, {Audience: []string{""}}, {Audience: []string{"a"}, SpiffeId: "spiffe://example.org/other"}} {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	fx := fixture(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req workload.JWTSVIDRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		if req.SpiffeId == "spiffe://example.org/w" || req.SpiffeId == "" && len(req.Audience) > 0 && !slicesContainEmpty(req.Audience) {
			return // would ask the server for a token; no server here
		}
		api := &workloadAPI{workloads: fx.w}
		if _, err := api.FetchJWTSVID(callerCtx(), &req); err == nil {
			t.Fatalf("request %v succeeded without a server", &req)
		}
	})
}

func slicesContainEmpty(ss []string) bool {
	for _, s := range ss {
		if s == "" {
			return true
		}
	}
	return false
}
