package gateway

import (
	"net/netip"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/gateway/session/sessiontest"
)

func TestClientLimiter(t *testing.T) {
	clock := sessiontest.NewClock(time.Unix(1_800_000_000, 0))
	l := newClientLimiter(3, time.Minute, 2, clock.Now)
	a := netip.MustParseAddr("192.0.2.1")
	for i := 0; i < 3; i++ {
		if !l.allow(a) {
			t.Fatalf("event %d refused", i)
		}
	}
	if l.allow(a) {
		t.Fatal("fourth event in the window allowed")
	}
	// One IPv6 /64 is one client, whatever the interface id.
	if !l.allow(netip.MustParseAddr("2001:db8::1")) || !l.allow(netip.MustParseAddr("2001:db8::ffff:1")) {
		t.Fatal("IPv6 events refused")
	}
	// Two networks tracked: a third is refused in this window.
	if l.allow(netip.MustParseAddr("198.51.100.7")) {
		t.Fatal("a network beyond maxClients was allowed")
	}
	// The IPv4-mapped form is the same client as the IPv4 address.
	if l.allow(netip.MustParseAddr("::ffff:192.0.2.1")) {
		t.Fatal("an IPv4-mapped address escaped the limit")
	}
	clock.Advance(time.Minute)
	if !l.allow(a) || !l.allow(netip.MustParseAddr("198.51.100.7")) {
		t.Fatal("a new window did not reset the counts")
	}
	var off *clientLimiter
	if !off.allow(a) || !newClientLimiter(0, time.Minute, 1, clock.Now).allow(a) {
		t.Fatal("a disabled limiter refused")
	}
}
