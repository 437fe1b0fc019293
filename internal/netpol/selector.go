package netpol

import (
	"slices"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// selector is a compiled metav1.LabelSelector: matchLabels and
// matchExpressions as one sorted list of requirements, all of which must
// hold. Its semantics are those of k8s.io/apimachinery/pkg/labels (In: key
// present with a listed value; NotIn: key absent or value unlisted;
// Exists; DoesNotExist), which FuzzSelector checks it against.
type selector struct {
	reqs []requirement
	key  string // canonical form: equal selectors have equal keys
}

type selOp uint8

const (
	opIn selOp = iota
	opNotIn
	opExists
	opDoesNotExist
)

type requirement struct {
	key    string
	op     selOp
	values []string // sorted, for In and NotIn
}

// compileSelector compiles a validated selector; nil stays nil (a peer
// without that selector).
func compileSelector(s *metav1.LabelSelector) *selector {
	if s == nil {
		return nil
	}
	out := &selector{}
	for k, v := range s.MatchLabels {
		out.reqs = append(out.reqs, requirement{key: k, op: opIn, values: []string{v}})
	}
	for _, e := range s.MatchExpressions {
		r := requirement{key: e.Key}
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			r.op = opIn
		case metav1.LabelSelectorOpNotIn:
			r.op = opNotIn
		case metav1.LabelSelectorOpExists:
			r.op = opExists
		case metav1.LabelSelectorOpDoesNotExist:
			r.op = opDoesNotExist
		}
		if r.op == opIn || r.op == opNotIn {
			r.values = slices.Clone(e.Values)
			sort.Strings(r.values)
			r.values = slices.Compact(r.values)
		}
		out.reqs = append(out.reqs, r)
	}
	sort.Slice(out.reqs, func(i, j int) bool {
		a, b := out.reqs[i], out.reqs[j]
		if a.key != b.key {
			return a.key < b.key
		}
		if a.op != b.op {
			return a.op < b.op
		}
		return strings.Join(a.values, "\x00") < strings.Join(b.values, "\x00")
	})
	out.reqs = slices.CompactFunc(out.reqs, func(a, b requirement) bool {
		return a.key == b.key && a.op == b.op && slices.Equal(a.values, b.values)
	})
	out.key = out.String()
	return out
}

// matchesAll reports whether the selector is empty (selects everything).
func (s *selector) matchesAll() bool { return len(s.reqs) == 0 }

func (s *selector) matches(labels map[string]string) bool {
	for i := range s.reqs {
		if !s.reqs[i].matches(labels) {
			return false
		}
	}
	return true
}

func (r *requirement) matches(labels map[string]string) bool {
	v, ok := labels[r.key]
	switch r.op {
	case opIn:
		return ok && contains(r.values, v)
	case opNotIn:
		return !ok || !contains(r.values, v)
	case opExists:
		return ok
	default:
		return !ok
	}
}

func contains(sorted []string, v string) bool {
	if len(sorted) < 8 {
		for _, s := range sorted {
			if s == v {
				return true
			}
		}
		return false
	}
	_, found := slices.BinarySearch(sorted, v)
	return found
}

// indexKey is a key=value every selected pod must carry, for indexing
// policies by label; ok is false when there is none.
func (s *selector) indexKey() (string, bool) {
	for _, r := range s.reqs {
		if r.op == opIn && len(r.values) == 1 {
			return r.key + "=" + r.values[0], true
		}
	}
	return "", false
}

// String renders the selector as kubectl does (app=api,tier in (a,b),!x).
func (s *selector) String() string {
	if len(s.reqs) == 0 {
		return "(all)"
	}
	parts := make([]string, len(s.reqs))
	for i, r := range s.reqs {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

func (r requirement) String() string {
	switch r.op {
	case opIn:
		if len(r.values) == 1 {
			return r.key + "=" + r.values[0]
		}
		return r.key + " in (" + strings.Join(r.values, ",") + ")"
	case opNotIn:
		return r.key + " notin (" + strings.Join(r.values, ",") + ")"
	case opExists:
		return r.key
	default:
		return "!" + r.key
	}
}

// mismatch explains the first requirement labels fail, or "".
func (s *selector) mismatch(labels map[string]string) string {
	for _, r := range s.reqs {
		if r.matches(labels) {
			continue
		}
		v, ok := labels[r.key]
		switch {
		case r.op == opDoesNotExist:
			return "requires no " + r.key + " label (has " + r.key + "=" + v + ")"
		case r.op == opNotIn:
			return "requires " + r.String() + " (has " + r.key + "=" + v + ")"
		case !ok:
			return "requires " + r.String() + " (no " + r.key + " label)"
		default:
			return "requires " + r.String() + " (has " + r.key + "=" + v + ")"
		}
	}
	return ""
}

// satisfiable reports whether some label set matches: false for
// contradictions such as app=a with app notin (a), or tier with !tier.
func (s *selector) satisfiable() bool {
	for i := 0; i < len(s.reqs); {
		j := i
		for j < len(s.reqs) && s.reqs[j].key == s.reqs[i].key {
			j++
		}
		if !satisfiableKey(s.reqs[i:j]) {
			return false
		}
		i = j
	}
	return true
}

func satisfiableKey(reqs []requirement) bool {
	mustHave, mustLack := false, false
	var allowed []string // nil: any value
	haveIn := false
	var excluded []string
	for _, r := range reqs {
		switch r.op {
		case opIn:
			mustHave = true
			if !haveIn {
				allowed, haveIn = slices.Clone(r.values), true
			} else {
				allowed = slices.DeleteFunc(allowed, func(v string) bool { return !contains(r.values, v) })
			}
		case opNotIn:
			excluded = append(excluded, r.values...)
		case opExists:
			mustHave = true
		case opDoesNotExist:
			mustLack = true
		}
	}
	if mustHave && mustLack {
		return false
	}
	if haveIn {
		allowed = slices.DeleteFunc(allowed, func(v string) bool { return slices.Contains(excluded, v) })
		return len(allowed) > 0
	}
	return true
}
