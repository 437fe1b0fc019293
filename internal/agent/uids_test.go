package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// The uid test runs this test binary again as a workload under another
// uid; helperEnv selects the role.
const helperEnv = "TRUSTMESH_AGENT_TEST_WORKLOAD"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "server":
		os.Exit(workloadServer())
	case "client":
		os.Exit(workloadClient())
	}
	os.Exit(m.Run())
}

func helperSourceOption() workloadapi.X509SourceOption {
	return workloadapi.WithClientOptions(workloadapi.WithAddr(os.Getenv("SPIFFE_ENDPOINT_SOCKET")))
}

// workloadServer accepts one mTLS connection from the expected peer and
// answers with the peer's SPIFFE ID. It prints its address first.
func workloadServer() int {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	peer := spiffeid.RequireFromString(os.Getenv("PEER_ID"))
	l, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0", spiffetls.MTLSServerWithSourceOptions(tlsconfig.AuthorizeID(peer), helperSourceOption()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		return 1
	}
	defer l.Close()
	fmt.Println(l.Addr().String())
	c, err := l.Accept()
	if err != nil {
		fmt.Fprintln(os.Stderr, "accept:", err)
		return 1
	}
	defer c.Close()
	id, err := c.(interface{ PeerID() (spiffeid.ID, error) }).PeerID()
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		return 1
	}
	fmt.Fprintf(c, "server saw %s\n", id)
	return 0
}

// workloadClient dials the server, which must be the expected peer, and
// prints what the server said.
func workloadClient() int {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	peer := spiffeid.RequireFromString(os.Getenv("PEER_ID"))
	c, err := spiffetls.DialWithMode(ctx, "tcp", os.Getenv("SERVER_ADDR"), spiffetls.MTLSClientWithSourceOptions(tlsconfig.AuthorizeID(peer), helperSourceOption()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		return 1
	}
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Fprintln(os.Stderr, "read:", err)
		return 1
	}
	fmt.Print(line)
	return 0
}

// TestTwoUIDsMutualTLS: two workloads running as different uids get
// different identities from the agent, by their kernel-reported
// credentials alone, and authenticate each other with go-spiffe's
// spiffetls. Needs root (to start processes under other uids).
func TestTwoUIDsMutualTLS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run workloads as other uids (CI runs as root)")
	}
	const frontendUID, apiUID = 64001, 64002
	ts := startServer(t, "", "", nil)
	set, agentID := agentSettings(t, ts)
	// Other uids must reach the socket: its directory 0755, socket 0777.
	if err := os.Chmod(filepath.Dir(set.Socket), 0o755); err != nil {
		t.Fatal(err)
	}
	frontend := ts.entry(t, "spiffe://example.org/ns/default/sa/frontend", agentID, 0, fmt.Sprintf("unix:uid:%d", frontendUID))
	api := ts.entry(t, "spiffe://example.org/ns/default/sa/api", agentID, 0, fmt.Sprintf("unix:uid:%d", apiUID))
	startAgent(t, set)

	// A copy of this test binary the other uids can execute.
	binDir, err := os.MkdirTemp("", "tm-workload-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(binDir)
	os.Chmod(binDir, 0o755)
	self, _ := os.Executable()
	bin := filepath.Join(binDir, "workload")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(role string, uid uint32, env ...string) *exec.Cmd {
		cmd := exec.Command(bin)
		cmd.Env = append([]string{helperEnv + "=" + role, "SPIFFE_ENDPOINT_SOCKET=unix://" + set.Socket, "HOME=/"}, env...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		cmd.Dir = "/"
		return cmd
	}
	srv := run("server", apiUID, "PEER_ID="+frontend.SPIFFEID)
	srvOut, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var srvErr strings.Builder
	srv.Stderr = &srvErr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Process.Kill()
	addr, err := bufio.NewReader(srvOut).ReadString('\n')
	if err != nil {
		t.Fatalf("workload server: %v (%s)", err, srvErr.String())
	}
	go io.Copy(io.Discard, srvOut)
	cli := run("client", frontendUID, "PEER_ID="+api.SPIFFEID, "SERVER_ADDR="+strings.TrimSpace(addr))
	out, err := cli.CombinedOutput()
	if err != nil {
		t.Fatalf("workload client: %v: %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "server saw "+frontend.SPIFFEID {
		t.Fatalf("client printed %q", got)
	}
	if err := srv.Wait(); err != nil {
		t.Fatalf("workload server: %v: %s", err, srvErr.String())
	}
}
