package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"sort"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/trustmesh/trustmesh/internal/ca"
)

// SecretTypeURL is the SDS v3 resource type.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// sds is Envoy's Secret Discovery Service v3 on the Workload API socket,
// naming secrets as SPIRE's agent does: the workload's SVIDs under their
// SPIFFE IDs and its default SVID under "default", the trust bundle under
// "ROOTCA" and under the trust domain's ID (both names configurable).
type sds struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	*workloads
	svidName   string
	bundleName string
}

// resolve builds the secrets named in names (all of them when names is
// empty, as for an SDS wildcard request) for a workload, and returns them
// sorted by name. Unknown names are left out: Envoy keeps waiting for
// them, as it would with any SDS server.
func (s *sds) resolve(snap *Snapshot, sels map[string]struct{}, names []string) ([]*tlsv3.Secret, error) {
	matched, svids := snap.Match(sels, s.clock()) // nothing expired
	if !matched {
		return nil, errNoIdentity
	}
	bySPIFFEID := map[string]*SVID{}
	for _, sv := range svids {
		bySPIFFEID[sv.ID.String()] = sv
	}
	var tdName string
	if snap.Bundle != nil {
		tdName = snap.Bundle.TrustDomain().IDString()
	}
	if len(names) == 0 {
		if len(svids) > 0 {
			names = append(names, s.svidName)
		}
		for id := range bySPIFFEID {
			names = append(names, id)
		}
		if snap.Bundle != nil {
			names = append(names, s.bundleName, tdName)
		}
	}
	var out []*tlsv3.Secret
	seen := map[string]bool{}
	for _, name := range names {
		if seen[name] {
			continue
		}
		seen[name] = true
		switch {
		case name == s.svidName:
			if len(svids) > 0 {
				out = append(out, tlsSecret(name, svids[0]))
			}
		case name == s.bundleName || (name == tdName && tdName != ""):
			if snap.Bundle != nil {
				out = append(out, validationSecret(name, snap))
			}
		default:
			if sv := bySPIFFEID[name]; sv != nil {
				out = append(out, tlsSecret(name, sv))
			} else if _, err := spiffeid.FromString(name); err != nil {
				s.log.Debug("SDS request for an unknown secret name", "name", name)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

func tlsSecret(name string, sv *SVID) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inline(ca.EncodeCertificatesPEM(sv.ChainDER...)),
		PrivateKey:       inline(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: sv.KeyDER})),
	}}}
}

func validationSecret(name string, snap *Snapshot) *tlsv3.Secret {
	var ders [][]byte
	for _, c := range snap.Bundle.X509Authorities() {
		ders = append(ders, c.Raw)
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: inline(ca.EncodeCertificatesPEM(ders...)),
	}}}
}

func (s *sds) response(secrets []*tlsv3.Secret) (*discoveryv3.DiscoveryResponse, error) {
	resp := &discoveryv3.DiscoveryResponse{TypeUrl: SecretTypeURL}
	for _, sec := range secrets {
		a, err := anypb.New(sec)
		if err != nil {
			return nil, status.Error(codes.Internal, "encode secret")
		}
		resp.Resources = append(resp.Resources, a)
	}
	return resp, nil
}

func nonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func checkTypeURL(req *discoveryv3.DiscoveryRequest) error {
	if t := req.GetTypeUrl(); t != "" && t != SecretTypeURL {
		return status.Errorf(codes.InvalidArgument, "this SDS server serves %s, not %q", SecretTypeURL, t)
	}
	return nil
}

// FetchSecrets is the unary SDS call.
func (s *sds) FetchSecrets(ctx context.Context, req *discoveryv3.DiscoveryRequest) (resp *discoveryv3.DiscoveryResponse, err error) {
	defer func() { s.count("FetchSecrets", err) }()
	if err := checkTypeURL(req); err != nil {
		return nil, err
	}
	sels, _, err := s.selectors(ctx)
	if err != nil {
		return nil, err
	}
	snap, err := s.waitSynced(ctx)
	if err != nil {
		return nil, err
	}
	secrets, err := s.resolve(snap, sels, req.GetResourceNames())
	if err != nil {
		return nil, err
	}
	if resp, err = s.response(secrets); err != nil {
		return nil, err
	}
	resp.VersionInfo, resp.Nonce = versionOf(resp), nonce()
	return resp, nil
}

// StreamSecrets is the SDS stream: an answer for the names Envoy asks for,
// a new one whenever those secrets change, nothing for an ACK.
func (s *sds) StreamSecrets(stream grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	ctx := stream.Context()
	sels, _, err := s.selectors(ctx)
	if err != nil {
		s.count("StreamSecrets", err)
		return err
	}
	s.count("StreamSecrets", nil)
	s.metrics.streams.WithLabelValues("StreamSecrets").Inc()
	defer s.metrics.streams.WithLabelValues("StreamSecrets").Dec()

	reqs := make(chan *discoveryv3.DiscoveryRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()

	var (
		names     []string
		haveReq   bool
		lastSent  *discoveryv3.DiscoveryResponse
		lastNonce string
	)
	for {
		snap := s.cache.Current()
		if haveReq && snap.Synced {
			secrets, err := s.resolve(snap, sels, names)
			if err != nil {
				s.count("StreamSecrets", err)
				return err
			}
			resp, err := s.response(secrets)
			if err != nil {
				return err
			}
			if lastSent == nil || !proto.Equal(stripMeta(resp), stripMeta(lastSent)) {
				resp.VersionInfo, resp.Nonce = versionOf(resp), nonce()
				if err := stream.Send(resp); err != nil {
					return err
				}
				lastSent, lastNonce = resp, resp.Nonce
			}
		}
		select {
		case req := <-reqs:
			if err := checkTypeURL(req); err != nil {
				return err
			}
			if req.GetErrorDetail() != nil {
				s.log.Warn("Envoy rejected secrets (NACK)", "version", req.GetVersionInfo(), "error", req.GetErrorDetail().GetMessage())
			}
			isACK := req.GetResponseNonce() != "" && req.GetResponseNonce() == lastNonce && sameNames(names, req.GetResourceNames())
			if !isACK {
				names = append([]string(nil), req.GetResourceNames()...)
				lastSent = nil // answer this request even if nothing changed
			}
			haveReq = true
		case <-recvErr:
			if ctx.Err() != nil {
				return ctxStatus(ctx)
			}
			return nil // io.EOF: Envoy closed the stream
		case <-snap.Changed():
		case <-ctx.Done():
			return ctxStatus(ctx)
		case <-s.stopping:
			return status.Error(codes.Unavailable, "agent is stopping")
		}
	}
}

func sameNames(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	x := append([]string(nil), a...)
	y := append([]string(nil), b...)
	sort.Strings(x)
	sort.Strings(y)
	for i := range x {
		if x[i] != y[i] {
			return false
		}
	}
	return true
}

// stripMeta compares responses by content only.
func stripMeta(r *discoveryv3.DiscoveryResponse) *discoveryv3.DiscoveryResponse {
	c := proto.Clone(r).(*discoveryv3.DiscoveryResponse)
	c.VersionInfo, c.Nonce = "", ""
	return c
}

// versionOf names a response by its content, so the same secrets always
// carry the same version.
func versionOf(r *discoveryv3.DiscoveryResponse) string {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(stripMeta(r))
	return contentHash(b)
}
