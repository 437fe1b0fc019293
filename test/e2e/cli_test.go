package e2e

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestHelpAndVersion(t *testing.T) {
	out := mustRun(t, "--help")
	for _, cmd := range []string{"server", "entry", "token", "agent", "bundle", "x509", "jwt", "version"} {
		if !strings.Contains(out, "\n  "+cmd) {
			t.Errorf("--help does not list %s", cmd)
		}
	}
	if out := mustRun(t, "version"); !strings.HasPrefix(out, "trustmesh ") {
		t.Errorf("version = %q", out)
	}
	var v map[string]string
	if err := json.Unmarshal([]byte(mustRun(t, "version", "-o", "json")), &v); err != nil || v["version"] == "" {
		t.Errorf("version -o json: %v %v", v, err)
	}
	if _, errOut, code := run(t, "entry", "list", "--bogus"); code != 2 || !strings.Contains(errOut, "unknown flag") {
		t.Errorf("bad flag: exit %d, %s", code, errOut)
	}
}

// TestQuickStart follows the README's quick start against a real server.
func TestQuickStart(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, filepath.Join(dir, "server"))
	sock := []string{"--admin-socket", srv.socket}
	with := func(args ...string) []string { return append(args, sock...) }

	// Join token: printed alone on stdout.
	token := strings.TrimSpace(mustRun(t, with("token", "generate", "--ttl", "5m")...))
	id, _, ok := strings.Cut(token, ".")
	if !ok || len(id) != 16 {
		t.Fatalf("token = %q", token)
	}
	var tok map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, with("token", "generate", "-o", "json")...)), &tok); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"token", "id", "agent_spiffe_id", "expires_at"} {
		if _, ok := tok[k]; !ok {
			t.Errorf("token JSON lacks %s", k)
		}
	}
	agentID := "spiffe://example.org/trustmesh/agent/join_token/" + id
	spare := strings.TrimSpace(mustRun(t, with("token", "generate")...))
	if out := mustRun(t, with("token", "revoke", spare)...); !strings.Contains(out, "revoked join token") {
		t.Fatalf("token revoke: %s", out)
	}
	if _, errOut, code := run(t, with("token", "revoke", spare)...); code != 1 || !strings.Contains(errOut, "not found") {
		t.Fatalf("second revoke: exit %d %s", code, errOut)
	}

	// Entries: create prints the id; list/show/update/delete.
	entryID := strings.TrimSpace(mustRun(t, with("entry", "create", "--spiffe-id", "spiffe://example.org/ns/default/sa/api",
		"--parent-id", agentID, "--selector", "unix:uid:1000", "--selector", "unix:gid:1000", "--x509-ttl", "10m", "--jwt-ttl", "1m", "--dns", "api.default.svc")...))
	if len(entryID) != 36 {
		t.Fatalf("entry create printed %q, want the id", entryID)
	}
	var list struct {
		Entries []map[string]any `json:"entries"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, with("entry", "list", "-o", "json")...)), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Entries) != 1 {
		t.Fatalf("entry list = %v", list)
	}
	e := list.Entries[0]
	if e["id"] != entryID || e["spiffe_id"] != "spiffe://example.org/ns/default/sa/api" || e["parent_id"] != agentID ||
		e["x509_svid_ttl"] != float64(600) || e["jwt_svid_ttl"] != float64(60) || e["admin"] != false {
		t.Fatalf("entry JSON = %v", e)
	}
	if out := mustRun(t, with("entry", "list")...); !strings.Contains(out, "SPIFFE ID") || !strings.Contains(out, entryID) {
		t.Fatalf("entry list table:\n%s", out)
	}
	if out := mustRun(t, with("entry", "show", entryID)...); !strings.Contains(out, "unix:gid:1000, unix:uid:1000") {
		t.Fatalf("entry show:\n%s", out)
	}
	var upd map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, with("entry", "update", entryID, "--admin", "--x509-ttl", "20m", "-o", "json")...)), &upd); err != nil {
		t.Fatal(err)
	}
	if upd["admin"] != true || upd["x509_svid_ttl"] != float64(1200) || upd["revision"] != float64(2) {
		t.Fatalf("updated = %v", upd)
	}
	// Bad input: a clear message, non-zero exit, nothing stored.
	_, errOut, code := run(t, with("entry", "create", "--spiffe-id", "spiffe://other.org/x", "--parent-id", agentID, "--selector", "nocolon")...)
	if code == 0 || !strings.Contains(errOut, "other.org") || !strings.Contains(errOut, "nocolon") {
		t.Fatalf("invalid entry: exit %d: %s", code, errOut)
	}
	_, errOut, code = run(t, with("entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID, "-s", "unix:uid:1", "--x509-ttl", "1500ms")...)
	if code != 2 || !strings.Contains(errOut, "whole number of seconds") {
		t.Fatalf("fractional TTL: exit %d: %s", code, errOut)
	}

	// Bundle as PEM and as a SPIFFE bundle.
	pemOut := mustRun(t, with("bundle", "show")...)
	roots, err := x509bundle.Parse(td, []byte(pemOut))
	if err != nil || len(roots.X509Authorities()) != 1 {
		t.Fatalf("bundle pem: %v", err)
	}
	sb, err := spiffebundle.Parse(td, []byte(mustRun(t, with("bundle", "show", "--format", "spiffe")...)))
	if err != nil || len(sb.JWTAuthorities()) != 1 || len(sb.X509Authorities()) != 1 {
		t.Fatalf("bundle spiffe: %v", err)
	}

	// -o json: stable field names, the same authorities.
	var bj struct {
		TrustDomain     string   `json:"trust_domain"`
		SequenceNumber  uint64   `json:"sequence_number"`
		RefreshHint     int64    `json:"refresh_hint"`
		X509Authorities []string `json:"x509_authorities"`
		JWTAuthorities  []struct {
			KeyID     string `json:"key_id"`
			PublicKey string `json:"public_key"`
		} `json:"jwt_authorities"`
	}
	bundleJSON := mustRun(t, with("bundle", "show", "-o", "json")...)
	var fields map[string]any
	if err := json.Unmarshal([]byte(bundleJSON), &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"trust_domain", "sequence_number", "refresh_hint", "x509_authorities", "jwt_authorities"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("bundle JSON lacks %s:\n%s", k, bundleJSON)
		}
	}
	if err := json.Unmarshal([]byte(bundleJSON), &bj); err != nil {
		t.Fatal(err)
	}
	seq, _ := sb.SequenceNumber()
	if bj.TrustDomain != "example.org" || bj.SequenceNumber != seq || bj.RefreshHint <= 0 || len(bj.X509Authorities) != 1 || len(bj.JWTAuthorities) != 1 {
		t.Fatalf("bundle JSON = %s", bundleJSON)
	}
	if bj.X509Authorities[0] != pemOut {
		t.Errorf("bundle JSON's X.509 authority differs from the PEM bundle:\n%s", bj.X509Authorities[0])
	}
	block, _ := pem.Decode([]byte(bj.JWTAuthorities[0].PublicKey))
	if block == nil || block.Type != "PUBLIC KEY" {
		t.Fatalf("jwt_authorities[0].public_key is not a PEM public key: %q", bj.JWTAuthorities[0].PublicKey)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if want, ok := sb.FindJWTAuthority(bj.JWTAuthorities[0].KeyID); !ok || !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(want) {
		t.Errorf("jwt_authorities[0] (key_id %q) is not the SPIFFE bundle's JWT authority", bj.JWTAuthorities[0].KeyID)
	}
	if _, errOut, code := run(t, with("bundle", "show", "-o", "json", "--format", "spiffe")...); code != 2 || !strings.Contains(errOut, "exclusive") {
		t.Errorf("bundle show -o json --format spiffe: exit %d %s", code, errOut)
	}

	// x509 mint writes the three files, the key 0600.
	svidDir := filepath.Join(dir, "svid")
	mustRun(t, with("x509", "mint", "--spiffe-id", "spiffe://example.org/ops/admin", "--ttl", "15m", "--dns", "ops.local", "--write", svidDir)...)
	svid, err := x509svid.Load(filepath.Join(svidDir, "svid.pem"), filepath.Join(svidDir, "svid.key"))
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != "spiffe://example.org/ops/admin" {
		t.Fatalf("minted %s", svid.ID)
	}
	bundle, err := x509bundle.Load(td, filepath.Join(svidDir, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Fatalf("minted SVID does not verify against bundle.pem: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(svidDir, "svid.key")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("svid.key mode %v", fi.Mode().Perm())
	}

	// jwt mint prints a JWT-SVID.
	jwt := strings.TrimSpace(mustRun(t, with("jwt", "mint", "--spiffe-id", "spiffe://example.org/ops/ci", "--audience", "deploy")...))
	if _, err := jwtsvid.ParseAndValidate(jwt, sb, []string{"deploy"}); err != nil {
		t.Fatalf("minted JWT-SVID: %v", err)
	}

	// Remote admin over mTLS with the minted SVID, once its entry has the
	// admin flag; refused before.
	remote := []string{"entry", "list", "--server", srv.listen, "--svid", filepath.Join(svidDir, "svid.pem"),
		"--svid-key", filepath.Join(svidDir, "svid.key"), "--trust-bundle", filepath.Join(svidDir, "bundle.pem")}
	if _, errOut, code := run(t, remote...); code == 0 || !strings.Contains(errOut, "permission denied") {
		t.Fatalf("non-admin remote: exit %d %s", code, errOut)
	}
	mustRun(t, with("entry", "create", "--spiffe-id", "spiffe://example.org/ops/admin", "--parent-id", "spiffe://example.org/ops", "-s", "unix:uid:0", "--admin")...)
	if out := mustRun(t, remote...); !strings.Contains(out, entryID) {
		t.Fatalf("remote admin list:\n%s", out)
	}

	if out := mustRun(t, with("agent", "list")...); !strings.Contains(out, "SPIFFE ID") {
		t.Fatalf("agent list: %s", out)
	}
	if out := mustRun(t, with("entry", "delete", entryID)...); !strings.Contains(out, "deleted entry "+entryID) {
		t.Fatalf("delete: %s", out)
	}
	if _, errOut, code := run(t, with("entry", "show", entryID)...); code == 0 || !strings.Contains(errOut, "not found") {
		t.Fatalf("show deleted: %d %s", code, errOut)
	}

	// The audit log recorded the operations.
	audit, err := os.ReadFile(filepath.Join(srv.dataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{`"operation":"entry.create"`, `"operation":"token.generate"`, `"operation":"x509svid.mint"`, `"outcome":"denied"`} {
		if !strings.Contains(string(audit), op) {
			t.Errorf("audit log lacks %s", op)
		}
	}
	srv.stop(t)
	if _, err := os.Stat(srv.socket); !os.IsNotExist(err) {
		t.Fatalf("socket left after stop: %v", err)
	}
}

// TestAdminSocketEnv: $TRUSTMESH_ADMIN_SOCKET is where admin commands go
// without --admin-socket, and the flag wins over it.
func TestAdminSocketEnv(t *testing.T) {
	srv := startServer(t, filepath.Join(t.TempDir(), "server"))
	env := func(sock string) []string { return []string{"TRUSTMESH_ADMIN_SOCKET=" + sock} }
	for _, args := range [][]string{{"entry", "list"}, {"agent", "list"}, {"bundle", "show"}, {"server", "healthcheck"}} {
		if out, errOut, code := runEnv(t, env(srv.socket), args...); code != 0 {
			t.Errorf("%v with TRUSTMESH_ADMIN_SOCKET: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	bogus := filepath.Join(t.TempDir(), "nothing-here.sock")
	if _, errOut, code := runEnv(t, env(bogus), "entry", "list"); code != 1 || !strings.Contains(errOut, bogus) {
		t.Errorf("TRUSTMESH_ADMIN_SOCKET=%s: exit %d, %s", bogus, code, errOut)
	}
	if out, errOut, code := runEnv(t, env(bogus), "entry", "list", "--admin-socket", srv.socket); code != 0 {
		t.Errorf("--admin-socket did not override the environment: exit %d\n%s%s", code, out, errOut)
	}
}

func TestServerValidate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("trust_domain: example.org\nlisten: 127.0.0.1:8081\n"), 0o600)
	if out := mustRun(t, "server", "validate", "--config", good); !strings.Contains(out, "valid") {
		t.Fatalf("validate good: %s", out)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("trust_domain: BAD\nlisten: x\nnope: 1\nca:\n  key_type: ed448\n"), 0o600)
	_, errOut, code := run(t, "server", "validate", "--config", bad)
	if code != 1 {
		t.Fatalf("validate bad: exit %d", code)
	}
	for _, want := range []string{"trust_domain", "listen", "nope", "ca.key_type"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("validate did not report %s:\n%s", want, errOut)
		}
	}
	if _, _, code := run(t, "server", "validate"); code != 2 {
		t.Fatalf("validate without --config: exit %d", code)
	}
}
