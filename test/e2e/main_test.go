// Package e2e runs the real trustmesh binary: the commands and files users
// and external checks rely on, and crash durability under kill -9.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/apiclient"
	"github.com/trustmesh/trustmesh/internal/freeport"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "trustmesh-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "trustmesh")
	build := exec.Command("go", "build", "-o", binary, "github.com/trustmesh/trustmesh/cmd/trustmesh")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build trustmesh:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run executes the binary and returns stdout, stderr and the exit code.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return runEnv(t, nil, args...)
}

// runEnv is run with env (KEY=value) added to the environment.
func runEnv(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), env...)
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

// mustRun runs the binary and fails the test on a non-zero exit.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := run(t, args...)
	if code != 0 {
		t.Fatalf("trustmesh %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// serverProc is a `trustmesh server run` child process.
type serverProc struct {
	cmd     *exec.Cmd
	dataDir string
	socket  string
	listen  string
	log     *bytes.Buffer
	done    chan error
}

// freeAddr is a loopback address for a process the test starts (see
// freeport: below the ephemeral range, so no other test's connection takes
// it before the process binds it).
func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// startServer starts the server and waits until its admin socket answers.
func startServer(t *testing.T, dataDir string, extra ...string) *serverProc {
	t.Helper()
	p := &serverProc{dataDir: dataDir, socket: filepath.Join(dataDir, "admin.sock"), listen: freeAddr(t), log: &bytes.Buffer{}, done: make(chan error, 1)}
	args := append([]string{"server", "run", "--data-dir", dataDir, "--listen", p.listen, "--trust-domain", "example.org"}, extra...)
	p.cmd = exec.Command(binary, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() { p.stop(t) })
	c := apiclient.NewSocket(p.socket)
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Health(ctx)
		cancel()
		if err == nil {
			return p
		}
		select {
		case err := <-p.done:
			t.Fatalf("server exited: %v\n%s", err, p.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not healthy after 30s: %v\n%s", err, p.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for a clean exit (idempotent).
func (p *serverProc) stop(t *testing.T) {
	if p.cmd.ProcessState != nil || p.done == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("server did not exit cleanly: %v\n%s", err, p.log)
		}
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		t.Errorf("server ignored SIGTERM for 20s")
	}
	p.done = nil
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *serverProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
	p.done = nil
}
