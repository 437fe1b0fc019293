package netpol

import (
	"math/bits"
	"net/netip"
)

// MatrixOptions choose what the matrix decides.
type MatrixOptions struct {
	// Port and Protocol: decide that one port. Port 0 decides every port:
	// each cell is the set of ports the connection is allowed on.
	Port     int32
	Protocol Protocol
	// IPs are addresses outside the cluster added as rows and columns
	// (after the pods), such as 0.0.0.0 for "the internet".
	IPs []netip.Addr
}

// Matrix is the reachability of every endpoint pair: cell (i, j) is the
// connection from Endpoints[i] to Endpoints[j].
type Matrix struct {
	a         *Analyzer
	Endpoints []Endpoint
	Port      int32 // 0: cells are port sets
	Protocol  Protocol
	n         int
	bits      []bitset // by port: row i has bit j if allowed
	cells     []psID   // every port: i*n+j
	text      map[psID]string
}

// Matrix decides every pair. Pod pairs are computed on bitsets from each
// rule's peer set (computed once per distinct peer), so the cost is that
// of the rules that select each pod, not of every policy for every pair.
func (a *Analyzer) Matrix(opts MatrixOptions) *Matrix {
	m := &Matrix{a: a, Port: opts.Port, Protocol: opts.Protocol}
	for i := range a.pods {
		m.Endpoints = append(m.Endpoints, a.PodEndpoint(i))
	}
	for _, ip := range opts.IPs {
		m.Endpoints = append(m.Endpoints, Endpoint{IP: ip.Unmap(), idx: -1})
	}
	m.n = len(m.Endpoints)
	if opts.Port != 0 {
		m.byPort()
	} else {
		m.allPortsMatrix()
	}
	return m
}

// Allowed reports whether the connection i → j is allowed: on the port,
// or (every-port matrix) on some port.
func (m *Matrix) Allowed(i, j int) bool {
	if m.bits != nil {
		return m.bits[i].has(j)
	}
	return m.cells[i*m.n+j] != noPorts
}

// Ports returns the ports i → j is allowed on.
func (m *Matrix) Ports(i, j int) PortSet {
	if m.bits != nil {
		var s PortSet
		if m.bits[i].has(j) {
			s.add(m.Protocol, uint16(m.Port), uint16(m.Port))
		}
		return s
	}
	return m.a.ports.get(m.cells[i*m.n+j])
}

// PortsText is Ports(i, j).String(), computed once per distinct set: a
// million cells share a handful of sets.
func (m *Matrix) PortsText(i, j int) string {
	if m.bits != nil {
		return m.Ports(i, j).String()
	}
	id := m.cells[i*m.n+j]
	if s, ok := m.text[id]; ok {
		return s
	}
	if m.text == nil {
		m.text = map[psID]string{}
	}
	s := m.a.ports.get(id).String()
	m.text[id] = s
	return s
}

// activeRules returns the rules of pols for dir.
func activeRules(pols []*cpolicy, dir Direction) []*crule {
	var out []*crule
	for _, cp := range pols {
		if dir == Ingress {
			out = append(out, cp.ingress...)
		} else {
			out = append(out, cp.egress...)
		}
	}
	return out
}

// rulePeerBits is the union of a rule's peers over pods.
func (a *Analyzer) rulePeerBits(r *crule, memo map[int]bitset) bitset {
	if b, ok := memo[r.id]; ok {
		return b
	}
	b := newBitset(len(a.pods))
	if r.allPeers {
		for i := range a.pods {
			b.set(i)
		}
	} else {
		for _, c := range r.peers {
			b.or(a.peerBits(c))
		}
	}
	memo[r.id] = b
	return b
}

// nodeMates returns, for each pod, the hostNetwork pods on its node.
func (a *Analyzer) nodeMates() [][]int32 {
	byNode := map[string][]int32{}
	for i, p := range a.pods {
		if p.HostNetwork && p.NodeName != "" {
			byNode[p.NodeName] = append(byNode[p.NodeName], int32(i))
		}
	}
	out := make([][]int32, len(a.pods))
	if len(byNode) == 0 {
		return out
	}
	for i, p := range a.pods {
		if p.NodeName != "" {
			out[i] = byNode[p.NodeName]
		}
	}
	return out
}

func (m *Matrix) byPort() {
	a := m.a
	np := len(a.pods)
	memo := map[int]bitset{}
	mates := a.nodeMates()
	// Egress: the destinations each source may reach on the port.
	egress := make([]bitset, np)
	for s := 0; s < np; s++ {
		row := newBitset(np)
		pols := a.podEgress[s]
		if a.pods[s].HostNetwork || len(pols) == 0 {
			for j := 0; j < np; j++ {
				row.set(j)
			}
			egress[s] = row
			continue
		}
		for _, r := range activeRules(pols, Egress) {
			peers := a.rulePeerBits(r, memo)
			if len(r.named) == 0 {
				if a.ports.get(r.numeric).Contains(m.Protocol, m.Port) {
					row.or(peers)
				}
				continue
			}
			for j := 0; j < np; j++ {
				if peers.has(j) && a.ports.get(a.rulePorts(r, int32(j))).Contains(m.Protocol, m.Port) {
					row.set(j)
				}
			}
		}
		row.set(s)
		for _, j := range mates[s] {
			row.set(int(j))
		}
		egress[s] = row
	}
	// Ingress: the sources each destination accepts on the port.
	ingress := make([]bitset, np)
	for d := 0; d < np; d++ {
		col := newBitset(np)
		pols := a.podIngress[d]
		if a.pods[d].HostNetwork || len(pols) == 0 {
			for j := 0; j < np; j++ {
				col.set(j)
			}
			ingress[d] = col
			continue
		}
		for _, r := range activeRules(pols, Ingress) {
			if a.ports.get(a.rulePorts(r, int32(d))).Contains(m.Protocol, m.Port) {
				col.or(a.rulePeerBits(r, memo))
			}
		}
		col.set(d)
		for _, j := range mates[d] {
			col.set(int(j))
		}
		ingress[d] = col
	}
	m.bits = make([]bitset, m.n)
	for i := 0; i < m.n; i++ {
		m.bits[i] = newBitset(m.n)
	}
	for s := 0; s < np; s++ {
		row, out := egress[s], m.bits[s]
		for w, word := range row {
			for word != 0 {
				b := word & -word
				d := w*64 + trailingZeros(b)
				if ingress[d].has(s) {
					out.set(d)
				}
				word &^= b
			}
		}
	}
	m.fillIPs(func(i, j int) {
		if m.a.ports.get(m.a.pairPorts(m.Endpoints[i], m.Endpoints[j])).Contains(m.Protocol, m.Port) {
			m.bits[i].set(j)
		}
	})
}

// fillIPs computes the cells with an IP endpoint at either end.
func (m *Matrix) fillIPs(cell func(i, j int)) {
	np := len(m.a.pods)
	for i := 0; i < m.n; i++ {
		for j := 0; j < m.n; j++ {
			if i >= np || j >= np {
				cell(i, j)
			}
		}
	}
}

func (m *Matrix) allPortsMatrix() {
	a := m.a
	np := len(a.pods)
	memo := map[int]bitset{}
	mates := a.nodeMates()
	m.cells = make([]psID, m.n*m.n)
	// Egress sets first, then intersect with ingress in place.
	for s := 0; s < np; s++ {
		row := m.cells[s*m.n : s*m.n+np]
		pols := a.podEgress[s]
		if a.pods[s].HostNetwork || len(pols) == 0 {
			for j := range row {
				row[j] = allPorts
			}
			continue
		}
		for _, r := range activeRules(pols, Egress) {
			peers := a.rulePeerBits(r, memo)
			for w, word := range peers {
				for word != 0 {
					b := word & -word
					d := w*64 + trailingZeros(b)
					row[d] = a.ports.union(row[d], a.rulePorts(r, int32(d)))
					word &^= b
				}
			}
		}
		row[s] = allPorts
		for _, j := range mates[s] {
			row[j] = allPorts
		}
	}
	ingress := make([]psID, np)
	for d := 0; d < np; d++ {
		pols := a.podIngress[d]
		if a.pods[d].HostNetwork || len(pols) == 0 {
			continue // everything: the egress sets stand
		}
		for j := range ingress {
			ingress[j] = noPorts
		}
		for _, r := range activeRules(pols, Ingress) {
			ports := a.rulePorts(r, int32(d))
			peers := a.rulePeerBits(r, memo)
			for w, word := range peers {
				for word != 0 {
					b := word & -word
					s := w*64 + trailingZeros(b)
					ingress[s] = a.ports.union(ingress[s], ports)
					word &^= b
				}
			}
		}
		ingress[d] = allPorts
		for _, j := range mates[d] {
			ingress[j] = allPorts
		}
		for s := 0; s < np; s++ {
			c := &m.cells[s*m.n+d]
			*c = a.ports.intersect(*c, ingress[s])
		}
	}
	m.fillIPs(func(i, j int) { m.cells[i*m.n+j] = m.a.pairPorts(m.Endpoints[i], m.Endpoints[j]) })
}

func trailingZeros(x uint64) int { return bits.TrailingZeros64(x) }

// pairPorts is the set of ports from → to is allowed on, evaluated rule by
// rule. The matrix uses it for IP endpoints; tests hold the bitset paths
// to it.
func (a *Analyzer) pairPorts(from, to Endpoint) psID {
	return a.ports.intersect(a.sidePorts(Egress, from, to), a.sidePorts(Ingress, from, to))
}

func (a *Analyzer) sidePorts(dir Direction, from, to Endpoint) psID {
	self, peer := to, from
	if dir == Egress {
		self, peer = from, to
	}
	switch {
	case self.Pod == nil, self.Pod.HostNetwork, samePod(from, to), onNodeOf(peer, self.Pod):
		return allPorts
	}
	pols := a.podIngress[self.idx]
	if dir == Egress {
		pols = a.podEgress[self.idx]
	}
	if len(pols) == 0 {
		return allPorts
	}
	acc := noPorts
	for _, r := range activeRules(pols, dir) {
		ok := r.allPeers
		for _, c := range r.peers {
			if ok {
				break
			}
			ok, _ = a.peerMatches(c, peer)
		}
		if ok {
			acc = a.ports.union(acc, a.rulePorts(r, to.idx))
		}
	}
	return acc
}
