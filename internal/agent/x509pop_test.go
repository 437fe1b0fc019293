package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/ca"
	"github.com/trustmesh/trustmesh/internal/registry"
	"github.com/trustmesh/trustmesh/internal/server"
)

// writeNodeCredentials creates a node CA and a node certificate under it.
func writeNodeCredentials(t *testing.T, dir, cn string) (caFile, certFile, keyFile string, leaf *x509.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nodes"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	leaf, _ = x509.ParseCertificate(der)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "node.pem"), filepath.Join(dir, "node.key")
	os.WriteFile(caFile, ca.EncodeCertificatesPEM(caDER), 0o600)
	os.WriteFile(certFile, ca.EncodeCertificatesPEM(der), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	return caFile, certFile, keyFile, leaf
}

// TestX509PoPAgent: an agent attests with its node certificate, gets
// workload entries through a node alias on the certificate's CN, and after
// an eviction attests again by itself and keeps serving.
func TestX509PoPAgent(t *testing.T) {
	caFile, certFile, keyFile, leaf := writeNodeCredentials(t, t.TempDir(), "node-7")
	ts := startServer(t, "", "", func(c *server.Config) {
		c.NodeAttestation.X509PoP = &server.X509PoPConfig{CABundleFile: caFile}
	})
	set, _ := agentSettings(t, ts)
	set.JoinToken = ""
	set.X509PoP = &X509PoPConfig{CertFile: certFile, KeyFile: keyFile}
	fp := sha256.Sum256(leaf.Raw)
	agentID := "spiffe://example.org/trustmesh/agent/x509pop/" + hex.EncodeToString(fp[:])

	// Node alias: every node whose certificate says CN=node-7.
	ts.entry(t, "spiffe://example.org/nodes/node-7", registry.ServerID(ts.srvTD()).String(), 0, "x509pop:subject:cn:node-7")
	w := ts.entry(t, "spiffe://example.org/ns/default/sa/api", "spiffe://example.org/nodes/node-7", 0, uidSelector())

	ta := startAgent(t, set)
	if ta.node.ID().String() != agentID {
		t.Fatalf("agent ID %s, want %s", ta.node.ID(), agentID)
	}
	resp, err := fetchOnce(t, ta, 20*time.Second)
	if err != nil || resp.Svids[0].SpiffeId != w.SPIFFEID {
		t.Fatalf("workload via node alias: %v %v", resp, err)
	}
	firstSerial := ta.node.cert.Load().Leaf.SerialNumber
	if _, err := ts.admin.EvictAgent(ctxT(t), agentID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "re-attestation after eviction", func() bool {
		c := ta.node.cert.Load()
		return c != nil && c.Leaf.SerialNumber.Cmp(firstSerial) != 0
	})
	agents, err := ts.admin.ListAgents(ctxT(t))
	if err != nil || len(agents) != 1 || agents[0].SPIFFEID != agentID {
		t.Fatalf("agents after re-attestation: %+v %v", agents, err)
	}
	if _, err := fetchOnce(t, ta, 20*time.Second); err != nil {
		t.Fatalf("after re-attestation: %v", err)
	}
}
