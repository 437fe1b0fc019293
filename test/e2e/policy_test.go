package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPolicyCommands drives `trustmesh policy` as external checks do: the
// eval JSON and its exit codes, test and validate reports.
func TestPolicyCommands(t *testing.T) {
	examples := filepath.Join("..", "..", "examples", "policies")
	dir := t.TempDir()
	writeInput := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	type evalOut struct {
		Allow    bool   `json:"allow"`
		Decision string `json:"decision"`
		Policy   *string
		Rule     *int
		Reason   string
		DryRun   []any `json:"dry_run"`
	}
	eval := func(args ...string) evalOut {
		t.Helper()
		out := mustRun(t, append([]string{"policy", "eval"}, args...)...)
		var v evalOut
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("eval output %q: %v", out, err)
		}
		// The keys external checks read are always present.
		var raw map[string]json.RawMessage
		_ = json.Unmarshal([]byte(out), &raw)
		for _, k := range []string{"allow", "decision", "policy", "rule", "reason", "dry_run"} {
			if _, ok := raw[k]; !ok {
				t.Fatalf("eval output lacks %q: %s", k, out)
			}
		}
		return v
	}

	allowed := writeInput("allowed.json", `{"source":{"principal":"spiffe://example.org/ns/default/sa/frontend"},
		"destination":{"namespace":"default","labels":{"app":"api"},"port":8080},
		"request":{"method":"GET","path":"/api/users"}}`)
	denied := writeInput("denied.json", `{"source":{"principal":"spiffe://example.org/ns/default/sa/frontend"},
		"destination":{"namespace":"default","labels":{"app":"database"},"port":5432}}`)
	matrix := filepath.Join(examples, "matrix")

	v := eval("--policy", matrix, "--trust-domain", "example.org", "--input", allowed)
	if !v.Allow || v.Decision != "ALLOW" || v.Policy == nil || *v.Policy != "default/api-allow" || v.Rule == nil || *v.Rule != 0 {
		t.Fatalf("allowed: %+v", v)
	}
	v = eval("--policy", matrix, "--trust-domain", "example.org", "--input", denied)
	if v.Allow || v.Decision != "DENY" || v.Policy != nil || v.Rule != nil || !strings.Contains(v.Reason, "default/database-allow (rule 0: principal mismatch)") || v.DryRun == nil {
		t.Fatalf("denied: %+v", v)
	}
	// Under the default trust domain (cluster.local) example.org callers are foreign.
	if v = eval("--policy", matrix, "--input", allowed); v.Allow {
		t.Fatalf("example.org caller allowed under cluster.local: %+v", v)
	}

	// The seed's Rego, unchanged, from stdin input.
	cmdOut, errOut, code := runStdin(t, `{"source":{"principal":"spiffe://example.org/ns/default/sa/frontend"},"destination":{"principal":"spiffe://example.org/ns/default/sa/database"},"request":{"method":"GET","path":"/"}}`,
		"policy", "eval", "--policy", filepath.Join(examples, "rego-matrix", "authz.rego"), "--query", "data.authz.allow", "--input", "-")
	if code != 0 || !strings.Contains(cmdOut, `"allow": false`) || !strings.Contains(cmdOut, "Service frontend not authorized to access database") {
		t.Fatalf("rego eval: exit %d\n%s\n%s", code, cmdOut, errOut)
	}

	// Could not evaluate: non-zero, with the reason.
	bad := writeInput("bad.json", `{"source": [}`)
	if _, errOut, code := run(t, "policy", "eval", "--policy", matrix, "--input", bad); code == 0 || !strings.Contains(errOut, "not a valid JSON input") {
		t.Fatalf("bad input: exit %d: %s", code, errOut)
	}
	if _, errOut, code := run(t, "policy", "eval", "--policy", filepath.Join(dir, "nope"), "--input", allowed); code == 0 || !strings.Contains(errOut, "no such file") {
		t.Fatalf("missing policy: exit %d: %s", code, errOut)
	}
	if _, errOut, code := run(t, "policy", "eval", "--input", allowed); code != 2 || !strings.Contains(errOut, "--policy is required") {
		t.Fatalf("no --policy: exit %d: %s", code, errOut)
	}

	// test: the examples pass; a failing file fails the command.
	out := mustRun(t, "policy", "test", examples)
	if !strings.Contains(out, "PASS: ") || strings.Contains(out, "FAIL") {
		t.Fatalf("policy test examples:\n%s", out)
	}
	failing := filepath.Join(dir, "failing")
	if err := os.MkdirAll(failing, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(failing, "deny_test.yaml"), []byte("tests:\n  - name: nothing is denied without policy\n    input: {request: {path: /}}\n    expect: deny\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, _, code := run(t, "policy", "test", failing); code != 1 || !strings.Contains(out, "FAIL") || !strings.Contains(out, "deny_test.yaml:2: expected deny, got allow") {
		t.Fatalf("failing test: exit %d\n%s", code, out)
	}

	// validate: every error with file and line; exit 1.
	badPolicy := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badPolicy, []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  action: PERMIT\n  rules:\n  - to:\n    - operation: {methds: [GET]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, code = run(t, "policy", "validate", badPolicy)
	if code != 1 || !strings.Contains(out, badPolicy+":5: spec.action: unknown action") || !strings.Contains(out, badPolicy+":8: spec.rules[0].to[0].operation.methds: unknown field") {
		t.Fatalf("validate: exit %d\n%s", code, out)
	}
	if out := mustRun(t, "policy", "validate", matrix); !strings.HasPrefix(strings.TrimSpace(out), "valid:") {
		t.Fatalf("validate matrix: %s", out)
	}

	// mtls: the seeds' STRICT mode.
	out = mustRun(t, "policy", "mtls", "--policy", filepath.Join(examples, "production"), "--namespace", "production", "--label", "app=api", "--port", "8080")
	if !strings.Contains(out, `"mode": "STRICT"`) || !strings.Contains(out, `"plaintext_allowed": false`) {
		t.Fatalf("mtls: %s", out)
	}
}

// runStdin is run with stdin.
func runStdin(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}
