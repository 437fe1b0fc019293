package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// TestAgentAndAPICommands: server, agent and the api client commands as
// separate processes, the way the README's agent quick start runs them.
func TestAgentAndAPICommands(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, filepath.Join(dir, "server"))
	sock := []string{"--admin-socket", srv.socket}
	bundlePEM := mustRun(t, append([]string{"bundle", "show"}, sock...)...)
	bundleFile := filepath.Join(dir, "bundle.pem")
	os.WriteFile(bundleFile, []byte(bundlePEM), 0o644)
	var tok struct {
		Token         string `json:"token"`
		AgentSPIFFEID string `json:"agent_spiffe_id"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, append([]string{"token", "generate", "-o", "json"}, sock...)...)), &tok); err != nil {
		t.Fatal(err)
	}
	workloadID := "spiffe://example.org/ns/default/sa/cli"
	mustRun(t, append([]string{"entry", "create", "--spiffe-id", workloadID, "--parent-id", tok.AgentSPIFFEID,
		"--selector", "unix:uid:" + strconv.Itoa(os.Getuid())}, sock...)...)

	agentSock := filepath.Join(dir, "agent.sock")
	cfg := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfg, []byte("server: "+srv.listen+"\ntrust_bundle: "+bundleFile+"\nsocket: "+agentSock+"\ndata_dir: "+filepath.Join(dir, "agent")+"\n"), 0o600)
	if out := mustRun(t, "agent", "validate", "--config", cfg); !strings.Contains(out, "valid") {
		t.Fatalf("agent validate: %s", out)
	}
	agentCmd := exec.Command(binary, "agent", "run", "--config", cfg, "--join-token", tok.Token)
	var agentLog bytes.Buffer
	agentCmd.Stdout, agentCmd.Stderr = &agentLog, &agentLog
	if err := agentCmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		agentCmd.Process.Signal(syscall.SIGTERM)
		agentCmd.Wait()
		if _, err := os.Stat(agentSock); !os.IsNotExist(err) {
			t.Errorf("agent socket left after SIGTERM: %v", err)
		}
	}()
	fi := waitFor(t, 30*time.Second, func() (os.FileInfo, bool) {
		fi, err := os.Stat(agentSock)
		return fi, err == nil
	}, &agentLog)
	if fi.Mode().Perm() != 0o777 {
		t.Fatalf("agent socket mode %v, want 0777", fi.Mode().Perm())
	}

	// --socket as a path, fetch and write.
	svidDir := filepath.Join(dir, "svid")
	out := mustRun(t, "api", "fetch", "x509", "--socket", agentSock, "--write", svidDir, "--timeout", "30s")
	if !strings.Contains(out, "SPIFFE ID:") || !strings.Contains(out, workloadID) {
		t.Fatalf("api fetch x509:\n%s", out)
	}
	svid, err := x509svid.Load(filepath.Join(svidDir, "svid.0.pem"), filepath.Join(svidDir, "svid.0.key"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := x509bundle.Load(svid.ID.TrustDomain(), filepath.Join(svidDir, "bundle.0.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, b); err != nil {
		t.Fatalf("written SVID does not verify against bundle.0.pem: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(svidDir, "svid.0.key")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("svid.0.key mode %v", fi.Mode().Perm())
	}

	// SPIFFE_ENDPOINT_SOCKET is honoured.
	env := append(os.Environ(), "SPIFFE_ENDPOINT_SOCKET=unix://"+agentSock)
	runEnv := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(binary, args...)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
		return string(out)
	}
	var x509 struct {
		SVIDs []struct {
			SPIFFEID string `json:"spiffe_id"`
		} `json:"svids"`
	}
	if err := json.Unmarshal([]byte(runEnv("api", "fetch", "x509", "-o", "json")), &x509); err != nil || len(x509.SVIDs) != 1 || x509.SVIDs[0].SPIFFEID != workloadID {
		t.Fatalf("fetch x509 -o json: %+v %v", x509, err)
	}
	var jwt struct {
		SVIDs []struct {
			SPIFFEID string `json:"spiffe_id"`
			Token    string `json:"token"`
		} `json:"svids"`
	}
	if err := json.Unmarshal([]byte(runEnv("api", "fetch", "jwt", "--audience", "db", "-o", "json")), &jwt); err != nil || len(jwt.SVIDs) != 1 {
		t.Fatalf("fetch jwt: %+v %v", jwt, err)
	}
	if out := runEnv("api", "fetch", "jwt", "--audience", "db"); !strings.Contains(out, "token("+workloadID+"):") {
		t.Fatalf("fetch jwt table: %s", out)
	}
	if out := runEnv("api", "validate", "jwt", "--audience", "db", "--token", jwt.SVIDs[0].Token); !strings.Contains(out, "SVID is valid.") || !strings.Contains(out, workloadID) {
		t.Fatalf("validate jwt: %s", out)
	}
	bad := exec.Command(binary, "api", "validate", "jwt", "--audience", "other", "--token", jwt.SVIDs[0].Token)
	bad.Env = env
	if out, err := bad.CombinedOutput(); err == nil || !strings.Contains(string(out), "not valid") {
		t.Fatalf("validate for the wrong audience: %v %s", err, out)
	}

	// watch prints the current state as its first update.
	watch := exec.Command(binary, "api", "watch", "-o", "json")
	watch.Env = env
	stdout, _ := watch.StdoutPipe()
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		if !strings.Contains(l, workloadID) {
			t.Fatalf("watch first update: %s", l)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("api watch printed nothing in 30s")
	}
	watch.Process.Signal(syscall.SIGINT)
	if err := watch.Wait(); err != nil {
		t.Fatalf("api watch after Ctrl-C: %v", err)
	}
}

func waitFor[T any](t *testing.T, within time.Duration, f func() (T, bool), log *bytes.Buffer) T {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if v, ok := f(); ok {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s; log:\n%s", within, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
