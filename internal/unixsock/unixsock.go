// Package unixsock opens the unix sockets Trustmesh serves on (the
// server's admin socket, the agent's Workload API socket) the same careful
// way: never over a live socket or a file that is not a socket, and only
// in a directory no one else can tamper with.
package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Listen creates the socket at path, its directory with dirMode if
// missing, and sets the socket's mode to sockMode. A leftover socket from
// a crashed process is replaced; a socket something still answers on, or a
// path that is not a socket, is an error.
//
// The directory must be a real directory (not a symlink) owned by this
// process's effective uid or by root, and not writable by group or others:
// otherwise someone else could swap the socket for their own. Directories
// Listen creates get exactly dirMode, whatever the umask.
func Listen(path string, dirMode, sockMode os.FileMode) (net.Listener, error) {
	dir := filepath.Dir(path)
	created, err := mkdirAll(dir, dirMode)
	if err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	for _, d := range created {
		if err := secureDir(d, dirMode, true); err != nil {
			return nil, err
		}
	}
	if err := secureDir(dir, dirMode, false); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s is in use: is another instance running?", path)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("socket path %s exists and is not a socket: refusing to remove it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// Set right after creation. (Changing the umask instead would race
	// with other goroutines creating files.)
	if err := os.Chmod(path, sockMode); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// mkdirAll is os.MkdirAll, returning the directories it created (which
// the umask may have narrowed, e.g. to 0700, locking other uids out of the
// agent's socket).
func mkdirAll(dir string, mode os.FileMode) ([]string, error) {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); !errors.Is(err, fs.ErrNotExist) {
			break
		}
		missing = append(missing, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	return missing, os.MkdirAll(dir, mode)
}

// secureDir refuses dir unless it is a directory, not a symlink, owned by
// this process's effective uid or root, and not writable by group or
// others. With chmod (a directory Listen created) it is set to mode first;
// an existing directory keeps its mode, which an administrator may have
// narrowed on purpose. Checks and chmod go through one descriptor opened
// without following symlinks, so the path cannot be swapped in between.
func secureDir(dir string, mode os.FileMode, chmod bool) error {
	f, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.ELOOP) {
		if fi, lerr := os.Lstat(dir); lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("socket directory %s is a symlink: refusing it, give the real path", dir)
		}
		return fmt.Errorf("socket directory %s is not a directory", dir)
	}
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != uint32(os.Geteuid()) && st.Uid != 0 {
		return fmt.Errorf("socket directory %s is owned by uid %d, not by this process's uid %d or root: refusing it", dir, st.Uid, os.Geteuid())
	}
	perm := fi.Mode().Perm()
	if chmod {
		if err := f.Chmod(mode); err != nil {
			return fmt.Errorf("socket directory: %w", err)
		}
		perm = mode.Perm()
	}
	if perm&0o022 != 0 {
		return fmt.Errorf("socket directory %s is writable by group or others (mode %04o): refusing it", dir, perm)
	}
	return nil
}
