package dev

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// TrustDomain of a dev mesh.
const TrustDomain = "example.org"

// Service is one demo workload.
type Service struct {
	Name  string
	Calls []string // whom its built-in app calls on GET / (the seeds' matrix)
}

// Services is the seeds' demo topology (seed 000's service_permissions,
// behind seed 003's ingress): ingress → frontend → api, auth; api →
// database, cache, auth; auth → database.
var Services = []Service{
	{Name: "ingress", Calls: []string{"frontend"}},
	{Name: "frontend", Calls: []string{"api", "auth"}},
	{Name: "api", Calls: []string{"database", "cache", "auth"}},
	{Name: "auth", Calls: []string{"database"}},
	{Name: "database"},
	{Name: "cache"},
}

// DeveloperName is the identity dev registers for the user's own
// processes (selector: their uid).
const DeveloperName = "developer"

// SPIFFEID is a demo service's identity.
func SPIFFEID(name string) string {
	return "spiffe://" + TrustDomain + "/ns/default/sa/" + name
}

// serviceNamed finds a service.
func serviceNamed(name string) (Service, bool) {
	for _, s := range Services {
		if s.Name == name {
			return s, true
		}
	}
	return Service{}, false
}

// WorkloadSpec is what a workload child process runs: its built-in app
// and its sidecar proxy. The parent writes it as JSON.
type WorkloadSpec struct {
	Name       string              `json:"name"`
	SPIFFEID   string              `json:"spiffe_id"`
	Socket     string              `json:"socket"` // the agent's Workload API
	PolicyDirs []string            `json:"policy_dirs"`
	App        string              `json:"app,omitempty"`     // the built-in app's address (not for the ingress)
	Inbound    string              `json:"inbound,omitempty"` // the sidecar's mTLS listener
	Metrics    string              `json:"metrics"`
	Outbound   map[string]Outbound `json:"outbound"` // by callee
	Calls      []string            `json:"calls"`
}

// Outbound is a route from a workload's app to a callee's sidecar.
type Outbound struct {
	Listen   string `json:"listen"`
	Upstream string `json:"upstream"`
	SPIFFEID string `json:"spiffe_id"`
}

// ports hands out listen addresses: consecutive ports from base, or free
// ports when base is 0 (freePort).
type ports struct {
	base int
	next int
}

func (p *ports) take() (string, error) {
	if p.base == 0 {
		return freePort()
	}
	port := p.base + p.next
	p.next++
	if port > 65535 {
		return "", fmt.Errorf("base port %d leaves too few ports", p.base)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}

// freePorts remembers the ports this process has handed out, so that no
// two listeners of one mesh get the same one.
var freePorts struct {
	sync.Mutex
	given map[int]bool
}

// lowestFreePort is where freePort starts looking, above the well-known
// and commonly configured ports.
const lowestFreePort = 10000

// freePort picks a loopback port that nothing listens on, for a listener
// that a child process (or a component started a moment later) binds.
// It is taken below the kernel's ephemeral range when there is room: a
// port the kernel picks for a bind to port 0 lies in that range, and in
// the moment between our check and the real bind any outgoing connection
// on the machine may take it as its local port (under load, `dev
// --base-port 0` failed now and then with "address already in use").
// Outgoing connections never use a port below the range.
func freePort() (string, error) {
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

// plan lays out every workload's addresses. Each workload gets an outbound
// route to every other service (not just those it may call), so that the
// traffic generator can try forbidden calls and the callee's policy can
// refuse them over real mTLS.
func plan(base int, socket string) (map[string]*WorkloadSpec, string, error) {
	pa := &ports{base: base}
	specs := map[string]*WorkloadSpec{}
	var err error
	take := func() string {
		var a string
		if err == nil {
			a, err = pa.take()
		}
		return a
	}
	ingress := take()
	for _, s := range Services {
		spec := &WorkloadSpec{Name: s.Name, SPIFFEID: SPIFFEID(s.Name), Socket: socket, Calls: s.Calls, Outbound: map[string]Outbound{}}
		if s.Name != "ingress" {
			spec.Inbound = take()
			spec.App = take()
		}
		spec.Metrics = take()
		specs[s.Name] = spec
	}
	for _, s := range Services {
		for _, callee := range Services {
			if callee.Name == s.Name || callee.Name == "ingress" {
				continue
			}
			listen := ""
			if s.Name == "ingress" {
				if callee.Name != "frontend" {
					continue
				}
				listen = ingress
			} else {
				listen = take()
			}
			specs[s.Name].Outbound[callee.Name] = Outbound{Listen: listen, Upstream: specs[callee.Name].Inbound, SPIFFEID: SPIFFEID(callee.Name)}
		}
	}
	return specs, ingress, err
}
