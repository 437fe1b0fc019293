package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDevMesh runs `trustmesh dev` as a user would: waits for it, calls an
// allowed and a forbidden edge through the ingress (real mTLS between real
// proxies), checks the audit log, `dev status` and the developer's own
// SVID, then Ctrl-C (SIGINT) must leave no process or socket behind. A
// second start on the same data dir works too.
func TestDevMesh(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	runDevMesh(t, dir, true)
	runDevMesh(t, dir, false)
}

func runDevMesh(t *testing.T, dir string, full bool) {
	cmd := exec.Command(binary, "dev", "--data-dir", dir, "--base-port", "0", "--color", "never", "--traffic-interval", "200ms")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	out := &syncBuffer{}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			out.Write([]byte(line + "\n"))
			if strings.HasPrefix(line, "Trustmesh dev mesh is up in ") {
				ready <- line
			}
		}
		done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	})
	select {
	case line := <-ready:
		t.Logf("%s (%.1fs from exec, binary already built)", line, time.Since(start).Seconds())
	case err := <-done:
		t.Fatalf("dev exited: %v\n%s\n%s", err, out, &stderr)
	case <-time.After(90 * time.Second):
		// Where did it stop? A goroutine dump (SIGQUIT) and every log.
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
		t.Fatalf("dev not up after 90s:\nstdout:\n%s\nstderr:\n%s\n%s", out, &stderr, devLogs(dir))
	}

	var st struct {
		Ingress     string `json:"ingress"`
		AdminSocket string `json:"admin_socket"`
		AgentSocket string `json:"agent_socket"`
		AuditLog    string `json:"audit_log"`
		Services    []struct {
			Name string `json:"name"`
			PID  int    `json:"pid"`
		} `json:"services"`
	}
	data, err := os.ReadFile(filepath.Join(dir, "dev.json"))
	if err != nil || json.Unmarshal(data, &st) != nil {
		t.Fatalf("dev.json: %v %s", err, data)
	}
	if len(st.Services) != 6 {
		t.Fatalf("services: %+v", st.Services)
	}
	if full {
		checkDevMesh(t, dir, st.Ingress, st.AuditLog, st.AgentSocket, out)
	}
	stopDevMesh(t, dir, cmd, done, &stderr, st.AdminSocket, st.AgentSocket, func() []int {
		var pids []int
		for _, s := range st.Services {
			pids = append(pids, s.PID)
		}
		return pids
	}())
}

func checkDevMesh(t *testing.T, dir, ingress, auditLog, agentSocket string, out *syncBuffer) {
	get := func(path string) (int, map[string]any) {
		t.Helper()
		resp, err := http.Get("http://" + ingress + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		var v map[string]any
		body, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("GET %s: %s", path, body)
		}
		return resp.StatusCode, v
	}
	// Allowed: the whole tree, every hop 200.
	code, tree := get("/")
	if code != 200 || tree["service"] != "frontend" || tree["caller"] != "spiffe://example.org/ns/default/sa/ingress" {
		t.Fatalf("GET /: %d %v", code, tree)
	}
	calls, _ := tree["calls"].([]any)
	if len(calls) != 2 {
		t.Fatalf("frontend's calls: %v", tree)
	}
	for _, c := range calls {
		c := c.(map[string]any)
		if c["status"] != float64(200) {
			t.Errorf("frontend → %v: %v", c["to"], c)
		}
	}
	// Forbidden: frontend → database is denied by the database's policy.
	code, res := get("/call/database")
	if code != 403 || res["response"] != "RBAC: access denied" || res["from"] != "frontend" || res["to"] != "database" {
		t.Fatalf("GET /call/database: %d %v", code, res)
	}
	// The tour: a policy file changed on disk applies without a restart.
	tour := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tour-frontend-to-database, namespace: default}
spec:
  selector: {matchLabels: {app: database}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/frontend"]}}]}]
`
	if err := os.WriteFile(filepath.Join(dir, "policies", "tour.yaml"), []byte(tour), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() (bool, bool) {
		code, _ := get("/call/database")
		return true, code == 200
	}, nil)
	if err := os.Remove(filepath.Join(dir, "policies", "tour.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() (bool, bool) {
		code, _ := get("/call/database")
		return true, code == 403
	}, nil)
	// The audit log has both, with the deciding policy.
	waitFor(t, 10*time.Second, func() (bool, bool) {
		data, _ := os.ReadFile(auditLog)
		var allowed, denied bool
		for _, line := range strings.Split(string(data), "\n") {
			var r map[string]any
			if json.Unmarshal([]byte(line), &r) != nil {
				continue
			}
			if r["source_principal"] == "spiffe://example.org/ns/default/sa/frontend" && r["destination"] == "spiffe://example.org/ns/default/sa/api" && r["decision"] == "allow" && r["policy"] == "default/api-allow" {
				allowed = true
			}
			if r["source_principal"] == "spiffe://example.org/ns/default/sa/frontend" && r["destination"] == "spiffe://example.org/ns/default/sa/database" && r["decision"] == "deny" &&
				strings.Contains(r["reason"].(string), "default/database-allow (rule 0: principal mismatch)") {
				denied = true
			}
		}
		return true, allowed && denied
	}, nil)
	if !strings.Contains(out.String(), "DENY   frontend  → database") {
		t.Errorf("the feed shows no denial:\n%s", out)
	}

	status := mustRun(t, "dev", "status", "--data-dir", dir)
	for _, want := range []string{"spiffe://example.org/ns/default/sa/database", "SVID EXPIRES", "frontend → database", "frontend → api"} {
		if !strings.Contains(status, want) {
			t.Errorf("dev status lacks %q:\n%s", want, status)
		}
	}
	// The tour's last step: your own SVID, from your shell.
	cmd := exec.Command(binary, "api", "fetch", "x509", "-o", "json")
	cmd.Env = append(os.Environ(), "SPIFFE_ENDPOINT_SOCKET=unix://"+agentSocket)
	fetched, err := cmd.Output()
	if err != nil || !strings.Contains(string(fetched), "spiffe://example.org/ns/default/sa/developer") {
		t.Errorf("api fetch x509: %v\n%s", err, fetched)
	}
}

func stopDevMesh(t *testing.T, dir string, cmd *exec.Cmd, done chan error, stderr *syncBuffer, adminSocket, agentSocket string, pids []int) {
	// Ctrl-C.
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("dev exited with %v\n%s", err, stderr)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("dev ignored SIGINT")
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("workload pid %d still running", pid)
		}
	}
	for _, sock := range []string{adminSocket, agentSocket} {
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Errorf("socket %s left behind", sock)
		}
	}
	if _, _, code := run(t, "dev", "status", "--data-dir", dir); code != 1 {
		t.Errorf("dev status after stop: exit %d, want 1", code)
	}
}

// devLogs returns the last lines of every log under a dev data dir, for a
// failure message.
func devLogs(dir string) string {
	var b strings.Builder
	files, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
	for _, f := range files {
		data, _ := os.ReadFile(f)
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		fmt.Fprintf(&b, "== %s\n%s\n", f, strings.Join(lines, "\n"))
	}
	return b.String()
}
