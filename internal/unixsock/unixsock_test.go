package unixsock

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sub")
	path := filepath.Join(dir, "s.sock")
	ln, err := Listen(path, 0o755, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v", fi.Mode().Perm())
	}
	di, _ := os.Stat(dir)
	if di.Mode().Perm() != 0o755 {
		t.Fatalf("dir mode %v", di.Mode().Perm())
	}
	// A live socket is not taken over.
	if _, err := Listen(path, 0o755, 0o600); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second listen on a live socket: %v", err)
	}
	ln.Close() // Go removes the file on close; recreate a stale one
	stale, err := Listen(path, 0o755, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	stale.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	stale.Close()
	again, err := Listen(path, 0o755, 0o777)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	again.Close()
	// A regular file is never removed.
	file := filepath.Join(dir, "precious")
	os.WriteFile(file, []byte("data"), 0o600)
	if _, err := Listen(file, 0o755, 0o600); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("listen over a regular file: %v", err)
	}
	if data, _ := os.ReadFile(file); string(data) != "data" {
		t.Fatal("regular file removed")
	}
}
