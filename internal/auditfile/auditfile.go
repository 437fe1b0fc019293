// Package auditfile is the file an audit log appends to. It can be
// reopened at the same path while the process runs, which is how log
// rotation works without losing or truncating records: logrotate (or an
// operator) renames the file, then sends SIGUSR1, as nginx and Envoy
// expect for their access logs; records written in between land in the
// renamed file, the next ones in a new file at the configured path.
package auditfile

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
)

// File appends to the file at a path, or writes to stdout.
type File struct {
	path string // "" for stdout

	mu sync.Mutex // guards f: a Write never meets a half-done Reopen
	f  *os.File
}

// Open appends to the file at path, creating it 0600; "" or "-" is
// stdout (which Reopen and Close leave alone).
func Open(path string) (*File, error) {
	if path == "" || path == "-" {
		return &File{f: os.Stdout}, nil
	}
	f, err := openAppend(path)
	if err != nil {
		return nil, err
	}
	return &File{path: path, f: f}, nil
}

// Check reports what Open would refuse, without creating or changing
// anything: an existing file must be a regular file this process may
// append to, and a new file's directory must exist.
func Check(path string) error {
	if path == "" || path == "-" {
		return nil
	}
	info, err := os.Stat(path)
	switch {
	case err == nil:
		if !info.Mode().IsRegular() {
			return fmt.Errorf("audit log %s: not a regular file", path)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return fmt.Errorf("audit log: %w", err)
		}
		return f.Close()
	case errors.Is(err, fs.ErrNotExist):
		dir := filepath.Dir(path)
		if di, err := os.Stat(dir); err != nil || !di.IsDir() {
			return fmt.Errorf("audit log %s: directory %s does not exist", path, dir)
		}
		return nil
	default:
		return fmt.Errorf("audit log: %w", err)
	}
}

func openAppend(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return f, nil
}

// Path is the file's path ("" for stdout).
func (a *File) Path() string { return a.path }

// Write appends p (one or more whole records: O_APPEND keeps a record
// from interleaving with another process's writes to the same file).
func (a *File) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return 0, os.ErrClosed
	}
	return a.f.Write(p)
}

// Reopen opens the path again and writes there from now on. If the path
// cannot be opened, writing goes on to the file open before.
func (a *File) Reopen() error {
	if a.path == "" {
		return nil
	}
	nf, err := openAppend(a.path)
	if err != nil {
		return err
	}
	a.mu.Lock()
	old := a.f
	if old != nil { // (nil: closed meanwhile)
		a.f = nf
	}
	a.mu.Unlock()
	if old == nil {
		return errors.Join(os.ErrClosed, nf.Close())
	}
	return old.Close()
}

// Close closes the file (stdout stays open); later writes fail.
func (a *File) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.f
	a.f = nil
	if f == nil || a.path == "" {
		return nil
	}
	return f.Close()
}

// ReopenOnSignal reopens a on each reopen signal (SIGUSR1 where there is
// one) until ctx ends, logging the outcome.
func (a *File) ReopenOnSignal(ctx context.Context, log *slog.Logger) {
	if a.path == "" {
		return
	}
	notifyReopen(ctx, func() {
		if err := a.Reopen(); err != nil {
			log.Error("audit log not reopened; still writing to the file open before", "path", a.path, "err", err)
			return
		}
		log.Info("audit log reopened", "path", a.path)
	})
}
