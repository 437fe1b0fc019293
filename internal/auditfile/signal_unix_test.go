//go:build unix

package auditfile

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// SIGUSR1 reopens.
func TestReopenOnSignal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.ReopenOnSignal(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("SIGUSR1 did not reopen the audit log")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
