package auditfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Rotation: rename, reopen; the records before are in the renamed file,
// those after in a new one with the same mode, none lost.
func TestReopenAfterRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("two\n")); err != nil { // still the old file
		t.Fatal(err)
	}
	if err := f.Reopen(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("three\n")); err != nil {
		t.Fatal(err)
	}
	if got := read(t, path+".1"); got != "one\ntwo\n" {
		t.Fatalf("rotated file: %q", got)
	}
	if got := read(t, path); got != "three\n" {
		t.Fatalf("new file: %q", got)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("new file mode: %v %v", fi.Mode(), err)
	}
}

// A reopen that cannot open the path keeps writing to the old file.
func TestReopenFailureKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "audit.log")
	if err := os.Mkdir(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Rename(filepath.Dir(path), filepath.Join(dir, "moved")); err != nil {
		t.Fatal(err)
	}
	if err := f.Reopen(); err == nil {
		t.Fatal("reopen at a path whose directory is gone succeeded")
	}
	if _, err := f.Write([]byte("kept\n")); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(dir, "moved", "audit.log")); got != "kept\n" {
		t.Fatalf("old file: %q", got)
	}
}

func TestCloseThenWriteAndReopenFail(t *testing.T) {
	f, err := Open(filepath.Join(t.TempDir(), "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("x\n")); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if err := f.Reopen(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("reopen after close: %v", err)
	}
}

func TestStdout(t *testing.T) {
	for _, p := range []string{"", "-"} {
		f, err := Open(p)
		if err != nil || f.Path() != "" {
			t.Fatalf("Open(%q): %v %q", p, err, f.Path())
		}
		if err := f.Reopen(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stdout.Stat(); err != nil {
		t.Fatalf("stdout closed: %v", err)
	}
}

// TestCheck: Check refuses what Open would, and creates nothing.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"", true}, {"-", true},
		{filepath.Join(dir, "new.log"), true},
		{filepath.Join(dir, "missing", "a.log"), false},
		{dir, false}, // a directory
	} {
		if err := Check(tc.path); (err == nil) != tc.ok {
			t.Errorf("Check(%q) = %v, want ok %v", tc.path, err, tc.ok)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("Check created %v", entries)
	}
}
