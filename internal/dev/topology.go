package dev

import (
	"fmt"
	"net"
	"strconv"

	"github.com/trustmesh/trustmesh/internal/freeport"
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
// loopback ports when base is 0 (freeport.Addr).
type ports struct {
	base int
	next int
}

func (p *ports) take() (string, error) {
	if p.base == 0 {
		return freeport.Addr()
	}
	port := p.base + p.next
	p.next++
	if port > 65535 {
		return "", fmt.Errorf("base port %d leaves too few ports", p.base)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
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
