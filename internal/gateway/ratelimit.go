package gateway

import (
	"net/netip"
	"sync"
	"time"
)

// clientLimiter counts events per client network in fixed windows: at
// most limit per window for one IPv4 address or one IPv6 /64 (what one
// host can easily rotate through). It bounds what one client can make
// the gateway store: every login started is a pending ticket in the
// session store until it completes or login_timeout passes.
//
// Memory is bounded too: at most maxClients networks are tracked per
// window; beyond that, events from networks not yet seen are refused
// until the window ends (a flood from that many sources is refused
// rather than allowed to grow the store without bound).
// maxLimitedClients is how many client networks a limiter tracks per window.
const maxLimitedClients = 100_000

type clientLimiter struct {
	limit      int
	window     time.Duration
	maxClients int
	now        func() time.Time

	mu     sync.Mutex
	start  time.Time
	counts map[netip.Prefix]int
}

func newClientLimiter(limit int, window time.Duration, maxClients int, now func() time.Time) *clientLimiter {
	return &clientLimiter{limit: limit, window: window, maxClients: maxClients, now: now, counts: map[netip.Prefix]int{}}
}

// allow counts one event from ip and says whether it is within the limit.
func (l *clientLimiter) allow(ip netip.Addr) bool {
	if l == nil || l.limit <= 0 {
		return true
	}
	key := clientNetwork(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := l.now(); now.Sub(l.start) >= l.window || now.Before(l.start) {
		l.start, l.counts = now, make(map[netip.Prefix]int, len(l.counts))
	}
	n, seen := l.counts[key]
	if !seen && len(l.counts) >= l.maxClients || n >= l.limit {
		return false
	}
	l.counts[key] = n + 1
	return true
}

// clientNetwork is the address's own /32, or its /64 for IPv6.
func clientNetwork(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	if err != nil { // the zero Addr
		return netip.Prefix{}
	}
	return p
}
