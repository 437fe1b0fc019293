package policy

import (
	"fmt"
	"sort"
	"time"
)

// MTLSMode is a PeerAuthentication mode.
type MTLSMode string

// Modes. An unset mode inherits from the next wider scope.
const (
	MTLSStrict     MTLSMode = "STRICT"
	MTLSPermissive MTLSMode = "PERMISSIVE"
	MTLSDisable    MTLSMode = "DISABLE"
)

// ParseMTLSMode parses a mode name (as in YAML).
func ParseMTLSMode(s string) (MTLSMode, error) {
	switch MTLSMode(s) {
	case MTLSStrict, MTLSPermissive, MTLSDisable:
		return MTLSMode(s), nil
	}
	return "", fmt.Errorf("unknown mTLS mode %q: want STRICT, PERMISSIVE or DISABLE", s)
}

// AllowsPlaintext reports whether plaintext is accepted.
func (m MTLSMode) AllowsPlaintext() bool { return m == MTLSPermissive || m == MTLSDisable }

// AllowsMTLS reports whether mTLS is accepted (DISABLE turns it off).
func (m MTLSMode) AllowsMTLS() bool { return m != MTLSDisable }

// MTLSDecision says which mode applies to a workload port and why.
type MTLSDecision struct {
	Mode   MTLSMode `json:"mode"`
	Policy string   `json:"policy,omitempty"` // namespace/name, "" for the default
	// Scope is where the mode came from: port, workload, namespace, mesh or
	// default.
	Scope string `json:"scope"`
}

type peerPolicy struct {
	id       string
	ns       string
	selector map[string]string
	mode     MTLSMode // "" = UNSET
	ports    map[uint32]MTLSMode
	created  time.Time
}

func (p *peerPolicy) selects(labels map[string]string) bool {
	for k, v := range p.selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

type peerIndex struct {
	mesh []*peerPolicy // root namespaces, no selector
	byNS map[string]*peerNS
}

type peerNS struct {
	wide     []*peerPolicy // no selector
	selected []*peerPolicy
}

func (x *peerIndex) add(p *peerPolicy, roots map[string]bool) {
	if roots[p.ns] && len(p.selector) == 0 {
		x.mesh = append(x.mesh, p)
		return
	}
	if x.byNS == nil {
		x.byNS = map[string]*peerNS{}
	}
	n := x.byNS[p.ns]
	if n == nil {
		n = &peerNS{}
		x.byNS[p.ns] = n
	}
	if len(p.selector) == 0 {
		n.wide = append(n.wide, p)
	} else {
		n.selected = append(n.selected, p)
	}
}

// sort orders each list oldest first (then by name): when several
// policies of one scope apply, Istio uses the oldest.
func (x *peerIndex) sort() {
	by := func(l []*peerPolicy) {
		sort.SliceStable(l, func(i, j int) bool {
			if !l[i].created.Equal(l[j].created) {
				return l[i].created.Before(l[j].created)
			}
			return l[i].id < l[j].id
		})
	}
	by(x.mesh)
	for _, n := range x.byNS {
		by(n.wide)
		by(n.selected)
	}
}

// MTLS answers "which mTLS mode applies on this port of this workload":
// a workload policy (port level, then its own mode) over the namespace
// policy over the mesh policy, each UNSET inheriting from the next.
func (s *Set) MTLS(namespace string, labels map[string]string, port uint32) MTLSDecision {
	if n := s.peer.byNS[namespace]; n != nil {
		for _, p := range n.selected {
			if !p.selects(labels) {
				continue
			}
			if m, ok := p.ports[port]; ok && m != "" {
				return MTLSDecision{Mode: m, Policy: p.id, Scope: "port"}
			}
			if p.mode != "" {
				return MTLSDecision{Mode: p.mode, Policy: p.id, Scope: "workload"}
			}
			break // the oldest selecting policy is the workload's; UNSET inherits
		}
		for _, p := range n.wide {
			if p.mode != "" {
				return MTLSDecision{Mode: p.mode, Policy: p.id, Scope: "namespace"}
			}
			break
		}
	}
	for _, p := range s.peer.mesh {
		if p.mode != "" {
			return MTLSDecision{Mode: p.mode, Policy: p.id, Scope: "mesh"}
		}
		break
	}
	return MTLSDecision{Mode: s.opts.DefaultMTLS, Scope: "default"}
}

func (c *compiler) compilePeer(pa *PeerAuthentication) *peerPolicy {
	src := pa.src
	before := len(c.problems)
	name, ns := pa.Metadata.Name, pa.Metadata.Namespace
	if name == "" {
		c.errorf(src, "metadata.name", "PeerAuthentication has no metadata.name")
	}
	if ns == "" {
		ns = c.opts.DefaultNamespace
	}
	p := &peerPolicy{id: ns + "/" + name, ns: ns, created: creationTime(pa.Metadata)}
	p.selector, _ = c.compileSelector(src, pa.Spec.Selector)
	mode := func(field string, m *MutualTLS) MTLSMode {
		if m == nil || m.Mode == "" || m.Mode == "UNSET" {
			return ""
		}
		v, err := ParseMTLSMode(m.Mode)
		if err != nil {
			c.errorf(src, field, "%v (or UNSET)", err)
		}
		return v
	}
	p.mode = mode("spec.mtls.mode", pa.Spec.MTLS)
	if len(pa.Spec.PortLevelMTLS) > 0 {
		if len(p.selector) == 0 {
			c.errorf(src, "spec.portLevelMtls", "portLevelMtls requires a workload selector")
		}
		p.ports = map[uint32]MTLSMode{}
		for port, m := range pa.Spec.PortLevelMTLS {
			field := fmt.Sprintf("spec.portLevelMtls[%d]", port)
			if port == 0 || port > 65535 {
				c.errorf(src, field, "port %d is not in 1-65535", port)
				continue
			}
			if m == nil || m.Mode == "" {
				c.errorf(src, field, "port-level mtls needs a mode")
				continue
			}
			p.ports[port] = mode(field+".mode", m)
		}
	}
	if hasError(c.problems[before:]) {
		return nil
	}
	return p
}
