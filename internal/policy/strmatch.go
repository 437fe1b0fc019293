package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// matchKind is how one policy string matches a value, as Istio defines it:
// "abc" exact, "abc*" prefix, "*abc" suffix, "*" any non-empty value; and
// for paths, an Envoy URI template with {*} and {**}.
type matchKind uint8

const (
	matchExact matchKind = iota
	matchPrefix
	matchSuffix
	matchPresence
	matchTemplate
)

// strMatcher is one compiled policy string.
type strMatcher struct {
	kind matchKind
	val  string
	fold bool       // case-insensitive (hosts)
	tmpl []tmplPart // matchTemplate only
}

// newStrMatcher compiles v the way Istio's StringMatcher does: a leading
// "*" makes a suffix match, else a trailing "*" a prefix match; any other
// "*" is a literal character.
func newStrMatcher(v string, fold bool) strMatcher {
	switch {
	case v == "*":
		return strMatcher{kind: matchPresence}
	case strings.HasPrefix(v, "*"):
		return strMatcher{kind: matchSuffix, val: v[1:], fold: fold}
	case strings.HasSuffix(v, "*"):
		return strMatcher{kind: matchPrefix, val: v[:len(v)-1], fold: fold}
	}
	return strMatcher{kind: matchExact, val: v, fold: fold}
}

func (m *strMatcher) match(v string) bool {
	switch m.kind {
	case matchPresence:
		return v != ""
	case matchExact:
		if m.fold {
			return strings.EqualFold(v, m.val)
		}
		return v == m.val
	case matchPrefix:
		if len(v) < len(m.val) {
			return false
		}
		if m.fold {
			return strings.EqualFold(v[:len(m.val)], m.val)
		}
		return v[:len(m.val)] == m.val
	case matchSuffix:
		if len(v) < len(m.val) {
			return false
		}
		if m.fold {
			return strings.EqualFold(v[len(v)-len(m.val):], m.val)
		}
		return v[len(v)-len(m.val):] == m.val
	case matchTemplate:
		return matchTemplateParts(m.tmpl, v)
	}
	return false
}

// strList is a list of policy strings: it matches when any one does. Long
// lists of exact values are looked up in a map.
type strList struct {
	set   bool // the field was given (an empty list is "not set")
	ms    []strMatcher
	exact map[string]struct{} // exact, case-sensitive values when the list is long
}

// exactIndexMin is the list length from which exact values go in a map.
const exactIndexMin = 8

func newStrList(vals []string, fold bool) strList {
	l := strList{set: len(vals) > 0}
	for _, v := range vals {
		l.ms = append(l.ms, newStrMatcher(v, fold))
	}
	l.index()
	return l
}

func (l *strList) index() {
	if len(l.ms) < exactIndexMin {
		return
	}
	var rest []strMatcher
	for _, m := range l.ms {
		if m.kind == matchExact && !m.fold {
			if l.exact == nil {
				l.exact = map[string]struct{}{}
			}
			l.exact[m.val] = struct{}{}
			continue
		}
		rest = append(rest, m)
	}
	l.ms = rest
}

func (l *strList) any(v string) bool {
	if l.exact != nil {
		if _, ok := l.exact[v]; ok {
			return true
		}
	}
	for i := range l.ms {
		if l.ms[i].match(v) {
			return true
		}
	}
	return false
}

// anyOf reports whether any element of vs matches (list-valued attributes
// such as audiences and list claims).
func (l *strList) anyOf(vs []string) bool {
	for _, v := range vs {
		if l.any(v) {
			return true
		}
	}
	return false
}

// ipList matches an address against IPs and CIDRs.
type ipList struct {
	set      bool
	prefixes []netip.Prefix
}

func parseIPOrCIDR(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", v)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", v)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (l *ipList) contains(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap()
	for _, p := range l.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// portList matches a port number.
type portList struct {
	set   bool
	ports []uint32
}

func parsePort(v string) (uint32, error) {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("%q is not a port number (0-65535)", v)
	}
	return uint32(n), nil
}

func (l *portList) contains(p uint32) bool {
	for _, q := range l.ports {
		if q == p {
			return true
		}
	}
	return false
}

// Path templates. Istio treats a path containing {*} or {**} as an Envoy
// URI template: {*} matches exactly one non-empty path segment, {**} zero
// or more characters including "/", and must be the last operator. Each
// operator must be a whole segment.

type tmplPart struct {
	lit  string // a literal run, including its slashes
	op   uint8  // 0 literal, 1 {*}, 2 {**}
	last bool
}

func isPathTemplate(p string) bool {
	return strings.Contains(p, "{*}") || strings.Contains(p, "{**}")
}

// compilePathTemplate validates and compiles a template.
func compilePathTemplate(p string) ([]tmplPart, error) {
	if !strings.HasPrefix(p, "/") {
		return nil, fmt.Errorf("path template %q must start with /", p)
	}
	segs := strings.Split(p[1:], "/")
	var parts []tmplPart
	var lit strings.Builder
	lit.WriteByte('/')
	for i, seg := range segs {
		switch seg {
		case "{*}", "{**}":
			if seg == "{**}" && i != len(segs)-1 {
				return nil, fmt.Errorf("path template %q: {**} must be the last operator", p)
			}
			parts = append(parts, tmplPart{lit: lit.String()})
			lit.Reset()
			op := uint8(1)
			if seg == "{**}" {
				op = 2
			}
			parts = append(parts, tmplPart{op: op})
			if i != len(segs)-1 {
				lit.WriteByte('/')
			}
		default:
			if strings.ContainsAny(seg, "{}*") {
				return nil, fmt.Errorf("path template %q: segment %q must be a literal, {*} or {**}", p, seg)
			}
			lit.WriteString(seg)
			if i != len(segs)-1 {
				lit.WriteByte('/')
			}
		}
	}
	if lit.Len() > 0 {
		parts = append(parts, tmplPart{lit: lit.String()})
	}
	// Drop empty literals.
	out := parts[:0]
	for _, pt := range parts {
		if pt.op == 0 && pt.lit == "" {
			continue
		}
		out = append(out, pt)
	}
	if len(out) > 0 {
		out[len(out)-1].last = true
	}
	return out, nil
}

func matchTemplateParts(parts []tmplPart, v string) bool {
	for _, pt := range parts {
		switch pt.op {
		case 0:
			if !strings.HasPrefix(v, pt.lit) {
				return false
			}
			v = v[len(pt.lit):]
		case 1:
			n := strings.IndexByte(v, '/')
			if n < 0 {
				n = len(v)
			}
			if n == 0 {
				return false
			}
			v = v[n:]
		case 2:
			return true // last by construction: the rest, whatever it is
		}
	}
	return v == ""
}
