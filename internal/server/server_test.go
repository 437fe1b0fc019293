package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/apiclient"
	"github.com/trustmesh/trustmesh/internal/identity"
	"github.com/trustmesh/trustmesh/internal/registry"
	"github.com/trustmesh/trustmesh/internal/store/storetest"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

type testServer struct {
	*Server
	admin *apiclient.Client
	dir   string
}

// startServer runs a real server (real sockets, TLS, SQLite unless cfg
// says otherwise) until the test ends.
func startServer(t *testing.T, mutate func(*Config)) *testServer {
	t.Helper()
	return startServerFull(t, mutate, nil)
}

// startServerWith tunes the resolved settings (timeouts, intervals).
func startServerWith(t *testing.T, tune func(*Settings)) *testServer {
	t.Helper()
	return startServerFull(t, nil, tune)
}

func startServerFull(t *testing.T, mutate func(*Config), tune func(*Settings)) *testServer {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0"}
	if mutate != nil {
		mutate(&cfg)
	}
	set, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if tune != nil {
		tune(&set)
	}
	srv := New(set, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server Run: %v", err)
		}
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("server exited: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server not ready after 30s")
	}
	admin := apiclient.NewSocket(set.AdminSocket)
	t.Cleanup(admin.Close)
	return &testServer{Server: srv, admin: admin, dir: dir}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newKey(t *testing.T) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csrFor(t *testing.T, k crypto.Signer) []byte {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func (ts *testServer) bundle(t *testing.T) *spiffebundle.Bundle {
	t.Helper()
	data, err := ts.admin.Bundle(ctxT(t), "spiffe")
	if err != nil {
		t.Fatal(err)
	}
	b, err := spiffebundle.Parse(td, data)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tlsClient connects to the server's TCP listener, presenting chain/key
// when given.
func (ts *testServer) tlsClient(t *testing.T, chain [][]byte, key crypto.Signer) *apiclient.Client {
	t.Helper()
	var certFn func() (*tls.Certificate, error)
	if chain != nil {
		cert, err := identity.TLSCertificate(chain, key)
		if err != nil {
			t.Fatal(err)
		}
		certFn = func() (*tls.Certificate, error) { return cert, nil }
	}
	c := apiclient.NewTLS(ts.Addr().String(), identity.ClientTLSConfig(certFn, ts.bundle(t), registry.ServerID(td)))
	t.Cleanup(c.Close)
	return c
}

// mint gets an X.509-SVID for id from the admin API.
func (ts *testServer) mint(t *testing.T, id string) ([][]byte, crypto.Signer) {
	t.Helper()
	k := newKey(t)
	resp, err := ts.admin.MintX509(ctxT(t), apiv1.X509MintRequest{SPIFFEID: id, CSR: csrFor(t, k)})
	if err != nil {
		t.Fatal(err)
	}
	return resp.SVID.Chain, k
}

// attest runs join-token attestation and returns an mTLS client as the agent.
func (ts *testServer) attest(t *testing.T) (spiffeid.ID, *apiclient.Client, apiv1.X509SVID, crypto.Signer) {
	t.Helper()
	tok, err := ts.admin.GenerateToken(ctxT(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	k := newKey(t)
	resp, err := ts.tlsClient(t, nil, nil).Attest(ctxT(t), apiv1.AttestRequest{JoinToken: tok.Token, CSR: csrFor(t, k)})
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString(resp.SVID.SPIFFEID)
	if id.String() != tok.AgentSPIFFEID {
		t.Fatalf("agent ID %s, token said %s", id, tok.AgentSPIFFEID)
	}
	return id, ts.tlsClient(t, resp.SVID.Chain, k), resp.SVID, k
}

func TestEntryLifecycleOverSocket(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ctxT(t)
	fi, err := os.Stat(filepath.Join(ts.dir, "admin.sock"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket mode: %v %v", fi, err)
	}
	in := apiv1.EntryCreate{
		SPIFFEID: "spiffe://example.org/ns/default/sa/api", ParentID: "spiffe://example.org/trustmesh/agent/join_token/0011223344556677",
		Selectors: []string{"unix:uid:1000", "unix:gid:1000"}, X509SVIDTTL: 600, DNSNames: []string{"api.default"},
	}
	e, err := ts.admin.CreateEntry(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if e.ID == "" || e.X509SVIDTTL != 600 || e.Revision != 1 || strings.Join(e.Selectors, ",") != "unix:gid:1000,unix:uid:1000" {
		t.Fatalf("created %+v", e)
	}
	if _, err := ts.admin.CreateEntry(ctx, in); !apiclient.IsStatus(err, http.StatusConflict) {
		t.Fatalf("duplicate create: %v", err)
	}
	bad := in
	bad.SPIFFEID, bad.Selectors = "spiffe://other.org/x", []string{"nocolon"}
	_, err = ts.admin.CreateEntry(ctx, bad)
	if !apiclient.IsStatus(err, http.StatusBadRequest) || !strings.Contains(err.Error(), "other.org") || !strings.Contains(err.Error(), "nocolon") {
		t.Fatalf("invalid create: %v", err)
	}
	got, err := ts.admin.GetEntry(ctx, e.ID)
	if err != nil || got.SPIFFEID != in.SPIFFEID {
		t.Fatalf("get: %+v %v", got, err)
	}
	admin := true
	sels := []string{"unix:uid:0"}
	upd, err := ts.admin.UpdateEntry(ctx, e.ID, apiv1.EntryPatch{Admin: &admin, Selectors: &sels})
	if err != nil {
		t.Fatal(err)
	}
	if !upd.Admin || upd.Revision != 2 || upd.X509SVIDTTL != 600 || strings.Join(upd.Selectors, ",") != "unix:uid:0" {
		t.Fatalf("updated %+v", upd)
	}
	stale := int64(1)
	hint := "x"
	if _, err := ts.admin.UpdateEntry(ctx, e.ID, apiv1.EntryPatch{Hint: &hint, Revision: stale}); !apiclient.IsStatus(err, http.StatusConflict) {
		t.Fatalf("stale update: %v", err)
	}
	list, err := ts.admin.ListEntries(ctx, "", "")
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}
	if _, err := ts.admin.DeleteEntry(ctx, e.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.admin.GetEntry(ctx, e.ID); !apiclient.IsStatus(err, http.StatusNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
}

func TestMintedSVIDsVerify(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ctxT(t)
	k := newKey(t)
	resp, err := ts.admin.MintX509(ctx, apiv1.X509MintRequest{SPIFFEID: "spiffe://example.org/cli", CSR: csrFor(t, k), TTL: 120})
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(k)
	var chain []byte
	for _, d := range resp.SVID.Chain {
		chain = append(chain, d...)
	}
	svid, err := x509svid.ParseRaw(chain, keyDER)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, ts.bundle(t)); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(svid.Certificates[0].NotAfter); d > 2*time.Minute || d < time.Minute {
		t.Fatalf("TTL not honoured: expires in %s", d)
	}
	if !strings.Contains(resp.BundlePEM, "BEGIN CERTIFICATE") {
		t.Fatal("no bundle PEM")
	}
	jwt, err := ts.admin.MintJWT(ctx, apiv1.JWTMintRequest{SPIFFEID: "spiffe://example.org/cli", Audience: []string{"db"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(jwt.Token, ts.bundle(t), []string{"db"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []apiv1.X509MintRequest{
		{SPIFFEID: "spiffe://example.org/x", CSR: []byte("junk")},
		{SPIFFEID: "spiffe://example.org", CSR: csrFor(t, k)},
		{SPIFFEID: "spiffe://example.org/trustmesh/server", CSR: csrFor(t, k)},
		{SPIFFEID: "spiffe://example.org/x", CSR: csrFor(t, k), TTL: 1},
	} {
		if _, err := ts.admin.MintX509(ctx, bad); !apiclient.IsStatus(err, http.StatusBadRequest) {
			t.Errorf("mint %+v: %v", bad.SPIFFEID, err)
		}
	}
}

// TestRemoteAdminRequiresAdminSVID: over TCP, admin operations need an
// X.509-SVID whose entry carries the admin flag.
func TestRemoteAdminRequiresAdminSVID(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ctxT(t)
	adminID := "spiffe://example.org/ops/admin"
	if _, err := ts.admin.CreateEntry(ctx, apiv1.EntryCreate{SPIFFEID: adminID, ParentID: "spiffe://example.org/ops", Selectors: []string{"unix:uid:0"}, Admin: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.admin.CreateEntry(ctx, apiv1.EntryCreate{SPIFFEID: "spiffe://example.org/ops/user", ParentID: "spiffe://example.org/ops", Selectors: []string{"unix:uid:1"}}); err != nil {
		t.Fatal(err)
	}
	chain, key := ts.mint(t, adminID)
	remote := ts.tlsClient(t, chain, key)
	if _, err := remote.ListEntries(ctx, "", ""); err != nil {
		t.Fatalf("admin SVID refused: %v", err)
	}
	if _, err := remote.GenerateToken(ctx, time.Minute); err != nil {
		t.Fatalf("admin SVID refused: %v", err)
	}
	userChain, userKey := ts.mint(t, "spiffe://example.org/ops/user")
	if _, err := ts.tlsClient(t, userChain, userKey).ListEntries(ctx, "", ""); !apiclient.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("non-admin SVID: %v", err)
	}
	if _, err := ts.tlsClient(t, nil, nil).ListEntries(ctx, "", ""); !apiclient.IsStatus(err, http.StatusUnauthorized) {
		t.Fatalf("no client certificate: %v", err)
	}
	// Without TLS at all nothing is served.
	resp, err := http.Get("http://" + ts.Addr().String() + apiv1.PathEntries)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plaintext admin request served")
		}
	}
	// The public bundle is served over server-auth TLS.
	if _, err := ts.tlsClient(t, nil, nil).Bundle(ctx, "pem"); err != nil {
		t.Fatalf("bundle: %v", err)
	}
}

// TestAgentGetsOnlyItsEntries: the rule the agent API enforces.
func TestAgentGetsOnlyItsEntries(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ctxT(t)
	agentA, clientA, _, _ := ts.attest(t)
	agentB, clientB, _, _ := ts.attest(t)
	mk := func(id, parent string) apiv1.Entry {
		e, err := ts.admin.CreateEntry(ctx, apiv1.EntryCreate{SPIFFEID: id, ParentID: parent, Selectors: []string{"unix:uid:1000"}, X509SVIDTTL: 300, JWTSVIDTTL: 60})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	webA := mk("spiffe://example.org/web", agentA.String())
	dbB := mk("spiffe://example.org/db", agentB.String())

	entries, err := clientA.AgentEntries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].ID != webA.ID {
		t.Fatalf("agent A sees %+v", entries)
	}
	k := newKey(t)
	results, err := clientA.AgentX509SVIDs(ctx, []apiv1.SVIDRequest{{EntryID: webA.ID, CSR: csrFor(t, k)}, {EntryID: dbB.ID, CSR: csrFor(t, k)}, {EntryID: "nope", CSR: csrFor(t, k)}})
	if err != nil {
		t.Fatal(err)
	}
	if results[0].SVID == nil || results[0].SVID.SPIFFEID != "spiffe://example.org/web" {
		t.Fatalf("own entry: %+v", results[0])
	}
	leaf, _ := x509.ParseCertificate(results[0].SVID.Chain[0])
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d != 300*time.Second+10*time.Second {
		t.Fatalf("entry TTL not applied: lifetime %s", d)
	}
	if results[1].SVID != nil || results[1].Error != errNotAuthorized.Error() {
		t.Fatalf("other agent's entry: %+v", results[1])
	}
	if results[2].SVID != nil || results[2].Error != errNotAuthorized.Error() {
		t.Fatalf("unknown entry must look the same as a foreign one: %+v", results[2])
	}
	jwt, err := clientA.AgentJWTSVID(ctx, webA.ID, []string{"db"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(jwt.Token, ts.bundle(t), []string{"db"}); err != nil {
		t.Fatal(err)
	}
	if _, err := clientA.AgentJWTSVID(ctx, dbB.ID, []string{"db"}); !apiclient.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("JWT for a foreign entry: %v", err)
	}
	if es, _ := clientB.AgentEntries(ctx); len(es) != 1 || es[0].ID != dbB.ID {
		t.Fatalf("agent B sees %+v", es)
	}
	// A workload SVID is not an agent credential.
	if _, err := ts.tlsClient(t, results[0].SVID.Chain, k).AgentEntries(ctx); !apiclient.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("workload SVID on the agent API: %v", err)
	}
	// Nor is an admin socket caller an agent (no agent routes there).
	if _, err := ts.admin.AgentEntries(ctx); !apiclient.IsStatus(err, http.StatusNotFound) && !apiclient.IsStatus(err, http.StatusMethodNotAllowed) {
		t.Fatalf("agent API on the admin socket: %v", err)
	}
}

func TestJoinTokenSingleUseAndEvictBan(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ctxT(t)
	tok, err := ts.admin.GenerateToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	anon := ts.tlsClient(t, nil, nil)
	k := newKey(t)
	resp, err := anon.Attest(ctx, apiv1.AttestRequest{JoinToken: tok.Token, CSR: csrFor(t, k)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anon.Attest(ctx, apiv1.AttestRequest{JoinToken: tok.Token, CSR: csrFor(t, k)}); !apiclient.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("token reuse: %v", err)
	}
	agent := ts.tlsClient(t, resp.SVID.Chain, k)
	if _, err := agent.AgentEntries(ctx); err != nil {
		t.Fatal(err)
	}
	agents, err := ts.admin.ListAgents(ctx)
	if err != nil || len(agents) != 1 || agents[0].SPIFFEID != tok.AgentSPIFFEID || agents[0].SerialNumber != resp.SVID.Serial {
		t.Fatalf("agents = %+v, %v", agents, err)
	}

	// Renewal rotates the serial. Until the new SVID is used the old one
	// keeps working (its answer may have been lost); then it stops.
	k2 := newKey(t)
	renewed, err := agent.RenewAgent(ctx, csrFor(t, k2))
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Serial == resp.SVID.Serial {
		t.Fatal("renewal kept the serial")
	}
	if _, err := ts.tlsClient(t, resp.SVID.Chain, k).AgentEntries(ctx); err != nil {
		t.Fatalf("old SVID refused before the new one was used: %v", err)
	}
	agent = ts.tlsClient(t, renewed.Chain, k2)
	if _, err := agent.AgentEntries(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.tlsClient(t, resp.SVID.Chain, k).AgentEntries(ctx); !apiclient.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("superseded SVID after the new one was used: %v", err)
	}

	if _, err := ts.admin.EvictAgent(ctx, tok.AgentSPIFFEID); err != nil {
		t.Fatal(err)
	}
	_, err = agent.AgentEntries(ctx)
	if !apiclient.IsStatus(err, http.StatusForbidden) || !strings.Contains(err.Error(), "not attested") {
		t.Fatalf("evicted agent: %v", err)
	}

	// Ban: a second agent, banned, is refused with a clear error.
	id2, agent2, _, _ := ts.attest(t)
	if _, err := ts.admin.BanAgent(ctx, id2.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := agent2.AgentEntries(ctx); !apiclient.IsStatus(err, http.StatusForbidden) || !strings.Contains(err.Error(), "banned") {
		t.Fatalf("banned agent: %v", err)
	}
	if _, err := ts.admin.BanAgent(ctx, "spiffe://example.org/not-an-agent"); !apiclient.IsStatus(err, http.StatusBadRequest) {
		t.Fatalf("ban non-agent ID: %v", err)
	}
	if _, err := ts.admin.EvictAgent(ctx, "spiffe://example.org/trustmesh/agent/join_token/ffffffffffffffff"); !apiclient.IsStatus(err, http.StatusNotFound) {
		t.Fatalf("evict unknown: %v", err)
	}
	// Garbage and expired tokens get the same answer.
	if _, err := anon.Attest(ctx, apiv1.AttestRequest{JoinToken: "garbage", CSR: csrFor(t, k)}); !apiclient.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("garbage token: %v", err)
	}
}

func TestAuditTrail(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ctxT(t)
	tok, err := ts.admin.GenerateToken(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	e, err := ts.admin.CreateEntry(ctx, apiv1.EntryCreate{SPIFFEID: "spiffe://example.org/a", ParentID: "spiffe://example.org/p", Selectors: []string{"unix:uid:1"}})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = ts.admin.CreateEntry(ctx, apiv1.EntryCreate{SPIFFEID: "bad"})
	k := newKey(t)
	if _, err := ts.admin.MintX509(ctx, apiv1.X509MintRequest{SPIFFEID: "spiffe://example.org/m", CSR: csrFor(t, k)}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(ts.dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(strings.SplitN(tok.Token, ".", 2)[1])) {
		t.Fatal("join token secret written to the audit log")
	}
	want := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("audit line is not JSON: %s", sc.Text())
		}
		for _, k := range []string{"time", "actor", "operation", "target", "outcome"} {
			if _, ok := rec[k]; !ok {
				t.Fatalf("audit record lacks %s: %s", k, sc.Text())
			}
		}
		want[rec["operation"].(string)+"/"+rec["outcome"].(string)+"/"+rec["target"].(string)] = true
		if actor := rec["actor"].(string); actor != "server" && !strings.HasPrefix(actor, "unix:uid:") {
			t.Fatalf("socket actor = %v", actor)
		}
	}
	for _, k := range []string{"token.generate/success/" + tok.ID, "entry.create/success/" + e.ID, "entry.create/error/bad", "x509svid.mint/success/spiffe://example.org/m",
		"x509svid.issue/success/spiffe://example.org/trustmesh/server"} {
		if !want[k] {
			t.Errorf("audit trail lacks %s; have %v", k, want)
		}
	}
}

func TestMetricsEndpoint(t *testing.T) {
	ts := startServer(t, nil)
	ts.mint(t, "spiffe://example.org/m")
	resp, err := http.Get("http://" + ts.MetricsAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`trustmesh_svids_issued_total{caller="admin",type="x509"} 1`,
		`trustmesh_ca_expiry_timestamp_seconds{type="x509"}`,
		`trustmesh_api_request_duration_seconds_bucket{api="admin",code="200",operation="x509svid.mint"`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestRestartKeepsBundle(t *testing.T) {
	dir := t.TempDir()
	var first []byte
	for i := 0; i < 2; i++ {
		func() {
			set, err := Config{DataDir: dir, Listen: "127.0.0.1:0"}.Resolve()
			if err != nil {
				t.Fatal(err)
			}
			srv := New(set, slog.New(slog.NewTextHandler(io.Discard, nil)))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- srv.Run(ctx) }()
			<-srv.Ready()
			pem, err := apiclient.NewSocket(set.AdminSocket).Bundle(ctxT(t), "pem")
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				first = pem
			} else if !bytes.Equal(first, pem) {
				t.Fatal("bundle changed across restart")
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(set.AdminSocket); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("admin socket left behind: %v", err)
			}
		}()
	}
}

// TestHAReplicasSharePostgres: two replicas on one PostgreSQL database
// share entries, tokens (single use across replicas), agents and a bundle
// holding both replicas' CAs.
func TestHAReplicasSharePostgres(t *testing.T) {
	url := storeURL(t)
	a := startServer(t, func(c *Config) { c.Datastore = url })
	b := startServer(t, func(c *Config) { c.Datastore = url })
	ctx := ctxT(t)
	if n := len(b.bundle(t).X509Authorities()); n != 2 {
		t.Fatalf("bundle on B has %d CAs, want both replicas' (2)", n)
	}
	tok, err := a.admin.GenerateToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	k := newKey(t)
	resp, err := b.tlsClient(t, nil, nil).Attest(ctx, apiv1.AttestRequest{JoinToken: tok.Token, CSR: csrFor(t, k)})
	if err != nil {
		t.Fatalf("token from A redeemed on B: %v", err)
	}
	if _, err := a.tlsClient(t, nil, nil).Attest(ctx, apiv1.AttestRequest{JoinToken: tok.Token, CSR: csrFor(t, k)}); !apiclient.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("token reused on A: %v", err)
	}
	e, err := a.admin.CreateEntry(ctx, apiv1.EntryCreate{SPIFFEID: "spiffe://example.org/w", ParentID: tok.AgentSPIFFEID, Selectors: []string{"unix:uid:1"}})
	if err != nil {
		t.Fatal(err)
	}
	// The agent attested on B (SVID from B's CA) is served by A.
	entries, err := a.tlsClient(t, resp.SVID.Chain, k).AgentEntries(ctx)
	if err != nil || len(entries) != 1 || entries[0].ID != e.ID {
		t.Fatalf("agent via A: %+v %v", entries, err)
	}
}

func TestRevokeToken(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ctxT(t)
	tok, err := ts.admin.GenerateToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.admin.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	k := newKey(t)
	if _, err := ts.tlsClient(t, nil, nil).Attest(ctx, apiv1.AttestRequest{JoinToken: tok.Token, CSR: csrFor(t, k)}); !apiclient.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("revoked token: %v", err)
	}
	if err := ts.admin.RevokeToken(ctx, tok.ID); !apiclient.IsStatus(err, http.StatusNotFound) {
		t.Fatalf("second revoke: %v", err)
	}
}

// TestDataDirIsExclusive: a second server on the same data dir (even with
// another socket and port) refuses to start.
func TestDataDirIsExclusive(t *testing.T) {
	ts := startServer(t, nil)
	set, err := Config{DataDir: ts.dir, Listen: "127.0.0.1:0", AdminSocket: filepath.Join(t.TempDir(), "other.sock")}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	err = New(set, slog.New(slog.NewTextHandler(io.Discard, nil))).Run(ctxT(t))
	if err == nil || !strings.Contains(err.Error(), "in use by another trustmesh server") {
		t.Fatalf("second server on the data dir: %v", err)
	}
}

func TestAdminSocketPathNotASocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "admin.sock")
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenUnix(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("listenUnix over a regular file: %v", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "precious" {
		t.Fatal("regular file at the socket path was removed")
	}
}

// storeURL is a fresh PostgreSQL database (HA tests need a shared one).
func storeURL(t *testing.T) string { return storetest.PostgresURL(t) }
