// Package freeport picks loopback ports for listeners that another
// process binds a moment later.
package freeport

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// freePorts remembers the ports this process has handed out, so that no
// two listeners of one mesh get the same one.
var freePorts struct {
	sync.Mutex
	given map[int]bool
}

// lowestFreePort is where Addr starts looking, above the well-known
// and commonly configured ports.
const lowestFreePort = 10000

// Addr picks a loopback port that nothing listens on, for a listener
// that a child process (or a component started a moment later) binds:
// `trustmesh dev --base-port 0`, and tests that start such processes.
// It is taken below the kernel's ephemeral range when there is room: a
// port the kernel picks for a bind to port 0 lies in that range, and in
// the moment between our check and the real bind any outgoing connection
// on the machine may take it as its local port (under load, `dev
// --base-port 0` failed now and then with "address already in use").
// Outgoing connections never use a port below the range.
func Addr() (string, error) {
	lo, hi := lowestFreePort, ephemeralPortsStart()
	freePorts.Lock()
	defer freePorts.Unlock()
	if freePorts.given == nil {
		freePorts.given = map[int]bool{}
	}
	if hi-lo >= 1000 {
		start := lo + rand.IntN(hi-lo)
		for i := 0; i < hi-lo; i++ {
			port := lo + (start-lo+i)%(hi-lo)
			if freePorts.given[port] {
				continue
			}
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil {
				continue
			}
			ln.Close()
			freePorts.given[port] = true
			return ln.Addr().String(), nil
		}
	}
	// No room below the range (or all of it in use): the kernel's choice.
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !freePorts.given[port] {
			freePorts.given[port] = true
			return ln.Addr().String(), nil
		}
	}
}

// ephemeralPortsStart is the first port of Linux's ephemeral range
// (net.ipv4.ip_local_port_range); where it cannot be read, IANA's 49152.
func ephemeralPortsStart() int {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 49152
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 49152
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n < 1 || n > 65535 {
		return 49152
	}
	return n
}
