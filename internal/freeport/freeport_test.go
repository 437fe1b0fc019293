package freeport

import (
	"net"
	"strconv"
	"testing"
)

// The ports come from below the ephemeral range (where
// no outgoing connection can take one between the check and the bind),
// each handed out once, each free when handed out.
func TestPortsStayOutOfTheEphemeralRange(t *testing.T) {
	hi := ephemeralPortsStart()
	seen := map[string]bool{}
	for range 300 {
		addr, err := Addr()
		if err != nil {
			t.Fatal(err)
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		_, p, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(p)
		if hi-lowestFreePort >= 1000 && (port < lowestFreePort || port >= hi) {
			t.Fatalf("%s is outside %d..%d", addr, lowestFreePort, hi-1)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s is not free: %v", addr, err)
		}
		ln.Close()
	}
}
