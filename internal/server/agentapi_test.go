package server

import (
	"bufio"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/apiclient"
	"github.com/trustmesh/trustmesh/internal/attest"
	"github.com/trustmesh/trustmesh/internal/ca"
	"github.com/trustmesh/trustmesh/internal/identity"
	"github.com/trustmesh/trustmesh/internal/registry"
)

// nodeCA writes a CA for x509pop to dir and returns a function issuing
// node certificates under it.
func nodeCA(t *testing.T, dir string) (bundleFile string, issue func(cn string) (*x509.Certificate, crypto.Signer)) {
	t.Helper()
	caKey := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nodes"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(der)
	bundleFile = filepath.Join(dir, "nodes-ca.pem")
	if err := os.WriteFile(bundleFile, ca.EncodeCertificatesPEM(der), 0o600); err != nil {
		t.Fatal(err)
	}
	serial := int64(100)
	return bundleFile, func(cn string) (*x509.Certificate, crypto.Signer) {
		serial++
		k := newKey(t)
		leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
		leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, k.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(leafDER)
		return leaf, k
	}
}

func (ts *testServer) attestX509PoP(t *testing.T, leaf *x509.Certificate, key crypto.Signer) (apiv1.AttestResponse, crypto.Signer, error) {
	t.Helper()
	svidKey := newKey(t)
	cfg := identity.ClientTLSConfig(nil, ts.bundle(t), registry.ServerID(td))
	resp, err := apiclient.AttestX509PoP(ctxT(t), ts.Addr().String(), cfg, csrFor(t, svidKey), func(cs *tls.ConnectionState) (*apiv1.X509PoPProof, error) {
		b, err := attest.X509PoPBinding(cs)
		if err != nil {
			return nil, err
		}
		sig, err := attest.SignX509PoP(key, b)
		return &apiv1.X509PoPProof{Chain: [][]byte{leaf.Raw}, Signature: sig}, err
	})
	return resp, svidKey, err
}

// TestX509PoPAttestationAndNodeAlias: an agent proves possession of a node
// certificate, gets an ID from its fingerprint and selectors from its
// subject; a node alias on those selectors authorizes entries for it;
// eviction allows re-attestation, a ban does not.
func TestX509PoPAttestationAndNodeAlias(t *testing.T) {
	dir := t.TempDir()
	bundleFile, issue := nodeCA(t, dir)
	ts := startServer(t, func(c *Config) { c.NodeAttestation.X509PoP = &X509PoPConfig{CABundleFile: bundleFile} })
	ctx := ctxT(t)
	leaf, key := issue("node-a")
	resp, svidKey, err := ts.attestX509PoP(t, leaf, key)
	if err != nil {
		t.Fatal(err)
	}
	fp := sha256.Sum256(leaf.Raw)
	wantID := "spiffe://example.org/trustmesh/agent/x509pop/" + hex.EncodeToString(fp[:])
	if resp.SVID.SPIFFEID != wantID {
		t.Fatalf("agent ID %s, want %s", resp.SVID.SPIFFEID, wantID)
	}
	agents, err := ts.admin.ListAgents(ctx)
	if err != nil || len(agents) != 1 || agents[0].AttestationType != "x509pop" || !slices.Contains(agents[0].Selectors, "x509pop:subject:cn:node-a") {
		t.Fatalf("agents = %+v %v", agents, err)
	}
	// Node alias: every node with CN node-a belongs to the "eu" zone.
	if _, err := ts.admin.CreateEntry(ctx, apiv1.EntryCreate{SPIFFEID: "spiffe://example.org/zone/eu", ParentID: registry.ServerID(td).String(), Selectors: []string{"x509pop:subject:cn:node-a"}}); err != nil {
		t.Fatal(err)
	}
	svc, err := ts.admin.CreateEntry(ctx, apiv1.EntryCreate{SPIFFEID: "spiffe://example.org/zone-svc", ParentID: "spiffe://example.org/zone/eu", Selectors: []string{"unix:uid:1"}})
	if err != nil {
		t.Fatal(err)
	}
	agent := ts.tlsClient(t, resp.SVID.Chain, svidKey)
	entries, err := agent.AgentEntries(ctx)
	if err != nil || len(entries) != 1 || entries[0].ID != svc.ID {
		t.Fatalf("agent entries via alias = %+v %v", entries, err)
	}
	// Another node's certificate does not match the alias.
	leafB, keyB := issue("node-b")
	respB, svidKeyB, err := ts.attestX509PoP(t, leafB, keyB)
	if err != nil {
		t.Fatal(err)
	}
	if es, err := ts.tlsClient(t, respB.SVID.Chain, svidKeyB).AgentEntries(ctx); err != nil || len(es) != 0 {
		t.Fatalf("node-b entries = %+v %v", es, err)
	}
	// Evicted: may attest again, same ID.
	if _, err := ts.admin.EvictAgent(ctx, wantID); err != nil {
		t.Fatal(err)
	}
	again, _, err := ts.attestX509PoP(t, leaf, key)
	if err != nil || again.SVID.SPIFFEID != wantID {
		t.Fatalf("re-attest after eviction: %v %v", again.SVID.SPIFFEID, err)
	}
	// Banned: may not.
	if _, err := ts.admin.BanAgent(ctx, wantID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ts.attestX509PoP(t, leaf, key); !apiclient.IsStatus(err, http.StatusForbidden) || !strings.Contains(err.Error(), "banned") {
		t.Fatalf("banned re-attest: %v", err)
	}
	// A certificate from another CA is refused.
	_, foreign := nodeCA(t, t.TempDir())
	fl, fk := foreign("node-a")
	if _, _, err := ts.attestX509PoP(t, fl, fk); !apiclient.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("foreign node certificate: %v", err)
	}
}

func TestX509PoPDisabledByDefault(t *testing.T) {
	ts := startServer(t, nil)
	_, issue := nodeCA(t, t.TempDir())
	leaf, key := issue("node-a")
	if _, _, err := ts.attestX509PoP(t, leaf, key); !apiclient.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("x509pop without configuration: %v", err)
	}
}

// nextState reads watch events until a state event satisfying ok arrives.
func nextState(t *testing.T, w *apiclient.WatchStream, ok func(apiv1.WatchEvent) bool) apiv1.WatchEvent {
	t.Helper()
	type result struct {
		ev  apiv1.WatchEvent
		err error
	}
	ch := make(chan result, 1)
	go func() {
		for {
			ev, err := w.Next()
			if err != nil || (ev.Kind == apiv1.WatchState && ok(ev)) {
				ch <- result{ev, err}
				return
			}
		}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("watch: %v", r.err)
		}
		return r.ev
	case <-time.After(20 * time.Second):
		t.Fatal("no matching watch event within 20s")
	}
	return apiv1.WatchEvent{}
}

func hasEntry(id string) func(apiv1.WatchEvent) bool {
	return func(ev apiv1.WatchEvent) bool {
		return slices.ContainsFunc(ev.Entries, func(e apiv1.Entry) bool { return e.ID == id })
	}
}

// TestWatchPushesChanges: the watch stream carries the agent's state at
// once and again after every change; eviction ends it with an error.
func TestWatchPushesChanges(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ctxT(t)
	agentID, agent, _, _ := ts.attest(t)
	w, err := agent.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	first := nextState(t, w, func(ev apiv1.WatchEvent) bool { return len(ev.Entries) == 0 })
	if len(first.Bundle) == 0 {
		t.Fatal("first state event lacks the bundle")
	}
	e, err := ts.admin.CreateEntry(ctx, apiv1.EntryCreate{SPIFFEID: "spiffe://example.org/w", ParentID: agentID.String(), Selectors: []string{"unix:uid:1"}})
	if err != nil {
		t.Fatal(err)
	}
	got := nextState(t, w, hasEntry(e.ID))
	if got.Revision <= first.Revision {
		t.Fatalf("revision did not advance: %d -> %d", first.Revision, got.Revision)
	}
	// Entries of other agents do not show up; deletion does.
	if _, err := ts.admin.DeleteEntry(ctx, e.ID); err != nil {
		t.Fatal(err)
	}
	nextState(t, w, func(ev apiv1.WatchEvent) bool { return !hasEntry(e.ID)(ev) })
	if _, err := ts.admin.EvictAgent(ctx, agentID.String()); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := w.Next()
		if err == nil {
			continue
		}
		var ae *apiclient.Error
		if !errors.As(err, &ae) || !strings.Contains(ae.Message, "not attested") {
			t.Fatalf("evicted agent's stream ended with %v", err)
		}
		break
	}
}

// TestWatchAcrossReplicas: a change made through one replica reaches an
// agent watching another (they share only the PostgreSQL database).
func TestWatchAcrossReplicas(t *testing.T) {
	url := storeURL(t)
	a := startServer(t, func(c *Config) { c.Datastore = url })
	b := startServer(t, func(c *Config) { c.Datastore = url })
	agentID, _, svid, key := a.attest(t)
	w, err := b.tlsClient(t, svid.Chain, key).Watch(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	e, err := a.admin.CreateEntry(context.Background(), apiv1.EntryCreate{SPIFFEID: "spiffe://example.org/w", ParentID: agentID.String(), Selectors: []string{"unix:uid:1"}})
	if err != nil {
		t.Fatal(err)
	}
	nextState(t, w, hasEntry(e.ID))
}

// TestWatchOutlivesReadTimeout: the listener's read timeout guards request
// bodies; a watch stream must not be cut by it, over HTTP/2 (the agent's)
// or HTTP/1.1.
func TestWatchOutlivesReadTimeout(t *testing.T) {
	ts := startServerWith(t, func(s *Settings) {
		s.ReadTimeout = 300 * time.Millisecond
		s.WatchHeartbeat = 100 * time.Millisecond
	})
	_, _, svid, key := ts.attest(t)
	cert, err := identity.TLSCertificate(svid.Chain, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, proto := range []string{"h2", "http/1.1"} {
		t.Run(proto, func(t *testing.T) {
			cfg := identity.ClientTLSConfig(func() (*tls.Certificate, error) { return cert, nil }, ts.bundle(t), registry.ServerID(td))
			tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: proto == "h2"}
			if proto != "h2" {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr}).Get("https://" + ts.Addr().String() + apiv1.PathAgentWatch)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if got := resp.Proto; (proto == "h2") != (got == "HTTP/2.0") {
				t.Fatalf("negotiated %s", got)
			}
			sc := bufio.NewScanner(resp.Body)
			deadline := time.Now().Add(1500 * time.Millisecond) // five read timeouts
			for time.Now().Before(deadline) {
				if !sc.Scan() {
					t.Fatalf("watch stream cut with %s to go: %v", time.Until(deadline), sc.Err())
				}
			}
		})
	}
}
