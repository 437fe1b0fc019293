// Package unixsock opens the unix sockets Trustmesh serves on (the
// server's admin socket, the agent's Workload API socket) the same careful
// way: never over a live socket or a file that is not a socket.
package unixsock

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Listen creates the socket at path, its directory with dirMode if
// missing, and sets the socket's mode to sockMode. A leftover socket from
// a crashed process is replaced; a socket something still answers on, or a
// path that is not a socket, is an error.
func Listen(path string, dirMode, sockMode os.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), dirMode); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
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
