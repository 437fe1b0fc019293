package sessiontest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// StartRedis runs a private redis-server on 127.0.0.1 (a free port, a temp
// dir, no persistence) for the test and returns its address. It skips the
// test when redis-server is not installed, unless
// TRUSTMESH_TEST_REQUIRE_REDIS is set, in which case it fails.
func StartRedis(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("TRUSTMESH_TEST_REQUIRE_REDIS") != "" {
			t.Fatalf("redis-server not found and TRUSTMESH_TEST_REQUIRE_REDIS is set (apt-get install redis-server)")
		}
		t.Skip("redis-server not installed (apt-get install redis-server); set TRUSTMESH_TEST_REQUIRE_REDIS=1 to fail instead")
	}
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port := freePort(t)
		var out bytes.Buffer
		cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--dir", dir,
			"--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no",
			"--logfile", filepath.Join(dir, "redis.log"))
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatalf("start redis-server: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if lastErr = waitRedis(addr, done); lastErr == nil {
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-done
			})
			return addr
		}
		_ = cmd.Process.Kill()
		<-done
		log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
		lastErr = fmt.Errorf("%v\n%s%s", lastErr, out.String(), log)
	}
	t.Fatalf("redis-server did not start: %v", lastErr)
	return ""
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitRedis waits until redis answers PING (or exits, or 20 s pass).
func waitRedis(addr string, exited <-chan error) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("redis-server exited: %v", err)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.SetDeadline(time.Now().Add(time.Second))
			_, _ = c.Write([]byte("PING\r\n"))
			buf := make([]byte, 7)
			n, _ := c.Read(buf)
			c.Close()
			if string(buf[:n]) == "+PONG\r\n" {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no PONG from %s within 20s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
