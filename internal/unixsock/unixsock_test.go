package unixsock

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

// TestListenRefusesUnsafeDirectory: a socket directory that is a symlink,
// that group or others may write, or that another uid owns is refused, and
// no socket is created in it.
func TestListenRefusesUnsafeDirectory(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(filepath.Join(link, "s.sock"), 0o755, 0o600); err == nil || !strings.Contains(err.Error(), "is a symlink") {
		t.Fatalf("symlinked directory: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(real, "s.sock")); !os.IsNotExist(err) {
		t.Fatalf("socket created through the symlink: %v", err)
	}

	for _, mode := range []os.FileMode{0o777, 0o775, 0o757, 0o1777} {
		open := filepath.Join(base, "open")
		if err := os.Mkdir(open, 0o700); err != nil {
			t.Fatal(err)
		}
		os.Chmod(open, mode) // not subject to the umask
		_, err := Listen(filepath.Join(open, "s.sock"), 0o755, 0o600)
		if err == nil || !strings.Contains(err.Error(), "writable by group or others") {
			t.Fatalf("directory mode %04o: %v", mode, err)
		}
		if fi, _ := os.Stat(open); fi.Mode().Perm() != mode.Perm() {
			t.Fatalf("an existing directory's mode was changed to %v", fi.Mode().Perm())
		}
		os.RemoveAll(open)
	}

	if os.Geteuid() != 0 {
		t.Log("not root: cannot test a directory owned by another uid")
		return
	}
	other := filepath.Join(base, "other")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(other, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(filepath.Join(other, "s.sock"), 0o755, 0o600); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Fatalf("directory owned by another uid: %v", err)
	}
}

// TestListenIgnoresUmask: directories Listen creates get the mode asked
// for even under a restrictive umask (the agent's 0755 must let every uid
// reach its socket); an existing directory keeps its narrower mode.
func TestListenIgnoresUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	base := t.TempDir()
	path := filepath.Join(base, "a", "b", "s.sock")
	ln, err := Listen(path, 0o755, 0o777)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, d := range []string{filepath.Join(base, "a"), filepath.Join(base, "a", "b")} {
		if fi, _ := os.Stat(d); fi.Mode().Perm() != 0o755 {
			t.Fatalf("%s created with mode %v under umask 077, want 0755", d, fi.Mode().Perm())
		}
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o777 {
		t.Fatalf("socket mode %v", fi.Mode().Perm())
	}
	narrow := filepath.Join(base, "narrow")
	if err := os.Mkdir(narrow, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(narrow, 0o750)
	ln2, err := Listen(filepath.Join(narrow, "s.sock"), 0o755, 0o777)
	if err != nil {
		t.Fatal(err)
	}
	ln2.Close()
	if fi, _ := os.Stat(narrow); fi.Mode().Perm() != 0o750 {
		t.Fatalf("existing directory's mode changed to %v", fi.Mode().Perm())
	}
}
