package server

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// lockDataDir takes an exclusive lock on the data dir for the process's
// life: two servers on one data dir would rotate into the same key files
// and journal.
func lockDataDir(dir string) (func(), error) {
	path := filepath.Join(dir, "server.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open data dir lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("data dir %s is in use by another trustmesh server (lock %s): %w", dir, path, err)
	}
	return func() { f.Close() }, nil
}
