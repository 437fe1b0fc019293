package agent

import (
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

func sdsClient(t *testing.T, ta *testAgent) secretv3.SecretDiscoveryServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(ta.addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return secretv3.NewSecretDiscoveryServiceClient(conn)
}

func secretsByName(t *testing.T, resp *discoveryv3.DiscoveryResponse) map[string]*tlsv3.Secret {
	t.Helper()
	if resp.TypeUrl != SecretTypeURL || resp.VersionInfo == "" || resp.Nonce == "" {
		t.Fatalf("response header: type %q version %q nonce %q", resp.TypeUrl, resp.VersionInfo, resp.Nonce)
	}
	out := map[string]*tlsv3.Secret{}
	for _, a := range resp.Resources {
		var s tlsv3.Secret
		if err := a.UnmarshalTo(&s); err != nil {
			t.Fatal(err)
		}
		out[s.Name] = &s
	}
	return out
}

// certOf parses a TLS secret and checks its key matches, with go-spiffe.
func certOf(t *testing.T, s *tlsv3.Secret) *x509svid.SVID {
	t.Helper()
	tc := s.GetTlsCertificate()
	if tc == nil {
		t.Fatalf("secret %s is not a TLS certificate", s.Name)
	}
	svid, err := x509svid.Parse(tc.CertificateChain.GetInlineBytes(), tc.PrivateKey.GetInlineBytes())
	if err != nil {
		t.Fatalf("secret %s: %v", s.Name, err)
	}
	return svid
}

// TestSDS drives the agent's SDS with go-control-plane's client types, the
// way Envoy does: names as SPIRE's agent serves them, ACKs answered with
// silence, rotation pushed.
func TestSDS(t *testing.T) {
	ts := startServer(t, "", "", nil)
	set, agentID := agentSettings(t, ts)
	e := ts.entry(t, "spiffe://example.org/ns/default/sa/envoy", agentID, 10, uidSelector())
	ta := startAgent(t, set)
	ctx := ctxT(t)
	c := sdsClient(t, ta)
	svidsIssued(t, ta, 1)

	// Unary fetch.
	resp, err := c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: SecretTypeURL, ResourceNames: []string{e.SPIFFEID, "default", "ROOTCA", "spiffe://example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	secrets := secretsByName(t, resp)
	if len(secrets) != 4 {
		t.Fatalf("got secrets %v", keys(secrets))
	}
	if certOf(t, secrets[e.SPIFFEID]).ID.String() != e.SPIFFEID || certOf(t, secrets["default"]).ID.String() != e.SPIFFEID {
		t.Fatal("TLS secrets do not carry the workload's SVID")
	}
	for _, name := range []string{"ROOTCA", "spiffe://example.org"} {
		vc := secrets[name].GetValidationContext()
		block, _ := pem.Decode(vc.GetTrustedCa().GetInlineBytes())
		if block == nil {
			t.Fatalf("%s: no PEM trusted CA", name)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("wrong type URL: %v", err)
	}

	// Stream: request, ACK, then the rotation arrives by itself.
	stream, err := c.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: SecretTypeURL, ResourceNames: []string{"default", "ROOTCA"}}); err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	firstSecrets := secretsByName(t, first)
	if len(firstSecrets) != 2 {
		t.Fatalf("stream answer has %v", keys(firstSecrets))
	}
	firstSerial := certOf(t, firstSecrets["default"]).Certificates[0].SerialNumber
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: SecretTypeURL, ResourceNames: []string{"default", "ROOTCA"},
		VersionInfo: first.VersionInfo, ResponseNonce: first.Nonce}); err != nil {
		t.Fatal(err)
	}
	rotated := make(chan *discoveryv3.DiscoveryResponse, 1)
	errs := make(chan error, 1)
	go func() {
		r, err := stream.Recv()
		if err != nil {
			errs <- err
			return
		}
		rotated <- r
	}()
	select {
	case r := <-rotated:
		if r.VersionInfo == first.VersionInfo {
			t.Fatal("pushed the same version again after an ACK")
		}
		s := secretsByName(t, r)
		if certOf(t, s["default"]).Certificates[0].SerialNumber.Cmp(firstSerial) == 0 {
			t.Fatal("push without a new certificate")
		}
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(30 * time.Second):
		t.Fatal("rotation not pushed over SDS within 30s (TTL 10s)")
	}
}

// svidsIssued waits until the agent holds n SVIDs. A unary FetchSecrets
// answers with what the agent has at that moment (it does not wait for an
// SVID still on its way from the server, as a Workload API stream does).
func svidsIssued(t *testing.T, ta *testAgent, n int) {
	t.Helper()
	eventually(t, 20*time.Second, "SVIDs issued", func() bool { return len(ta.Cache().Current().SVIDs) == n })
}

func keys(m map[string]*tlsv3.Secret) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestSDSCustomNames: the seed's Envoy config asks for "server_cert" and
// "validation_context"; the agent can be told to answer to those names.
func TestSDSCustomNames(t *testing.T) {
	ts := startServer(t, "", "", nil)
	set, agentID := agentSettings(t, ts)
	set.SVIDName, set.BundleName = "server_cert", "validation_context"
	ts.entry(t, "spiffe://example.org/ns/default/sa/envoy", agentID, 0, uidSelector())
	ta := startAgent(t, set)
	svidsIssued(t, ta, 1)
	resp, err := sdsClient(t, ta).FetchSecrets(ctxT(t), &discoveryv3.DiscoveryRequest{ResourceNames: []string{"server_cert", "validation_context"}})
	if err != nil {
		t.Fatal(err)
	}
	s := secretsByName(t, resp)
	if s["server_cert"].GetTlsCertificate() == nil || s["validation_context"].GetValidationContext() == nil {
		t.Fatalf("custom names: %v", keys(s))
	}
}
