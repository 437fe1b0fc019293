package netpol

import (
	"encoding/binary"
	"slices"
	"strconv"
	"strings"
)

// portRange is an inclusive range of ports, 1-65535.
type portRange struct{ lo, hi uint16 }

// PortSet is a set of (protocol, port) pairs: per protocol, sorted,
// disjoint, non-adjacent ranges. The zero value is empty.
type PortSet struct {
	r [numProtocols][]portRange
}

// AllPorts is every port of every protocol.
func AllPorts() PortSet {
	var s PortSet
	for p := range s.r {
		s.r[p] = []portRange{{1, 65535}}
	}
	return s
}

// add adds a range (not normalized; call norm).
func (s *PortSet) add(p Protocol, lo, hi uint16) {
	s.r[p] = append(s.r[p], portRange{lo, hi})
}

// addAll adds every port of p.
func (s *PortSet) addAll(p Protocol) { s.r[p] = []portRange{{1, 65535}} }

// norm sorts and merges ranges.
func (s *PortSet) norm() {
	for p := range s.r {
		rs := s.r[p]
		if len(rs) < 2 {
			continue
		}
		slices.SortFunc(rs, func(a, b portRange) int { return int(a.lo) - int(b.lo) })
		out := rs[:1]
		for _, r := range rs[1:] {
			last := &out[len(out)-1]
			if int(r.lo) <= int(last.hi)+1 {
				if r.hi > last.hi {
					last.hi = r.hi
				}
				continue
			}
			out = append(out, r)
		}
		s.r[p] = out
	}
}

// Contains reports whether port on p is in the set.
func (s PortSet) Contains(p Protocol, port int32) bool {
	if port < 1 || port > 65535 || p >= numProtocols {
		return false
	}
	for _, r := range s.r[p] {
		if uint16(port) < r.lo {
			return false
		}
		if uint16(port) <= r.hi {
			return true
		}
	}
	return false
}

// IsEmpty reports whether no port is in the set.
func (s PortSet) IsEmpty() bool {
	for p := range s.r {
		if len(s.r[p]) > 0 {
			return false
		}
	}
	return true
}

func (s PortSet) full(p Protocol) bool {
	return len(s.r[p]) == 1 && s.r[p][0] == portRange{1, 65535}
}

// IsAll reports whether every port of every protocol is in the set.
func (s PortSet) IsAll() bool {
	for p := range s.r {
		if !s.full(Protocol(p)) {
			return false
		}
	}
	return true
}

// Union returns s ∪ o.
func (s PortSet) Union(o PortSet) PortSet {
	var out PortSet
	for p := range s.r {
		out.r[p] = append(slices.Clone(s.r[p]), o.r[p]...)
	}
	out.norm()
	return out
}

// Intersect returns s ∩ o.
func (s PortSet) Intersect(o PortSet) PortSet {
	var out PortSet
	for p := range s.r {
		a, b := s.r[p], o.r[p]
		for i, j := 0, 0; i < len(a) && j < len(b); {
			lo, hi := max(a[i].lo, b[j].lo), min(a[i].hi, b[j].hi)
			if lo <= hi {
				out.r[p] = append(out.r[p], portRange{lo, hi})
			}
			if a[i].hi < b[j].hi {
				i++
			} else {
				j++
			}
		}
	}
	return out
}

// Minus returns s \ o.
func (s PortSet) Minus(o PortSet) PortSet {
	var out PortSet
	for p := range s.r {
		for _, r := range s.r[p] {
			lo := int(r.lo)
			for _, x := range o.r[p] {
				if int(x.hi) < lo || int(x.lo) > int(r.hi) {
					continue
				}
				if int(x.lo) > lo {
					out.r[p] = append(out.r[p], portRange{uint16(lo), x.lo - 1})
				}
				lo = int(x.hi) + 1
			}
			if lo <= int(r.hi) {
				out.r[p] = append(out.r[p], portRange{uint16(lo), r.hi})
			}
		}
	}
	return out
}

// Equal reports whether both sets hold the same ports.
func (s PortSet) Equal(o PortSet) bool {
	for p := range s.r {
		if !slices.Equal(s.r[p], o.r[p]) {
			return false
		}
	}
	return true
}

// String renders the set: "all", "none", or per protocol, such as
// "TCP:80,443,8000-8100 UDP:53" ("TCP:all" for every TCP port).
func (s PortSet) String() string {
	if s.IsAll() {
		return "all"
	}
	if s.IsEmpty() {
		return "none"
	}
	var b strings.Builder
	for p := range s.r {
		if len(s.r[p]) == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(Protocol(p).String())
		b.WriteByte(':')
		if s.full(Protocol(p)) {
			b.WriteString("all")
			continue
		}
		for i, r := range s.r[p] {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(int(r.lo)))
			if r.hi != r.lo {
				b.WriteByte('-')
				b.WriteString(strconv.Itoa(int(r.hi)))
			}
		}
	}
	return b.String()
}

// psID names an interned PortSet.
type psID uint32

const (
	noPorts  psID = 0
	allPorts psID = 1
)

// portSets interns PortSets so that the matrix computes each union and
// intersection once, however many pod pairs share it.
type portSets struct {
	sets   []PortSet
	ids    map[string]psID
	unions map[[2]psID]psID
	inters map[[2]psID]psID
	buf    []byte
}

func newPortSets() *portSets {
	t := &portSets{ids: map[string]psID{}, unions: map[[2]psID]psID{}, inters: map[[2]psID]psID{}}
	t.intern(PortSet{})
	t.intern(AllPorts())
	return t
}

func (t *portSets) intern(s PortSet) psID {
	t.buf = t.buf[:0]
	for p := range s.r {
		t.buf = binary.AppendUvarint(t.buf, uint64(len(s.r[p])))
		for _, r := range s.r[p] {
			t.buf = binary.BigEndian.AppendUint16(t.buf, r.lo)
			t.buf = binary.BigEndian.AppendUint16(t.buf, r.hi)
		}
	}
	if id, ok := t.ids[string(t.buf)]; ok {
		return id
	}
	id := psID(len(t.sets))
	t.sets = append(t.sets, s)
	t.ids[string(t.buf)] = id
	return id
}

func (t *portSets) get(id psID) PortSet { return t.sets[id] }

func (t *portSets) union(a, b psID) psID {
	switch {
	case a == b || b == noPorts || a == allPorts:
		return a
	case a == noPorts || b == allPorts:
		return b
	}
	if a > b {
		a, b = b, a
	}
	k := [2]psID{a, b}
	if id, ok := t.unions[k]; ok {
		return id
	}
	id := t.intern(t.sets[a].Union(t.sets[b]))
	t.unions[k] = id
	return id
}

func (t *portSets) intersect(a, b psID) psID {
	switch {
	case a == b || b == allPorts || a == noPorts:
		return a
	case a == allPorts || b == noPorts:
		return b
	}
	if a > b {
		a, b = b, a
	}
	k := [2]psID{a, b}
	if id, ok := t.inters[k]; ok {
		return id
	}
	id := t.intern(t.sets[a].Intersect(t.sets[b]))
	t.inters[k] = id
	return id
}
