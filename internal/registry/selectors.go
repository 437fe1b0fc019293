package registry

import (
	"fmt"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/trustmesh/trustmesh/internal/store"
)

const (
	maxSelectorTypeLen  = 64
	maxSelectorValueLen = 1024
)

// ParseSelector parses "type:value". The type is a lowercase identifier
// (unix, k8s, join_token, x509pop, …); the value is everything after the
// first colon and may contain colons itself ("unix:uid:1000").
func ParseSelector(s string) (store.Selector, error) {
	typ, val, ok := strings.Cut(s, ":")
	if !ok {
		return store.Selector{}, fmt.Errorf("invalid selector %q: want type:value, e.g. unix:uid:1000", s)
	}
	if err := checkSelectorType(typ); err != nil {
		return store.Selector{}, fmt.Errorf("invalid selector %q: %w", s, err)
	}
	if err := checkSelectorValue(val); err != nil {
		return store.Selector{}, fmt.Errorf("invalid selector %q: %w", s, err)
	}
	return store.Selector{Type: typ, Value: val}, nil
}

func checkSelectorType(typ string) error {
	if typ == "" {
		return fmt.Errorf("empty type")
	}
	if len(typ) > maxSelectorTypeLen {
		return fmt.Errorf("type longer than %d bytes", maxSelectorTypeLen)
	}
	for i, c := range typ {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || (i > 0 && (c == '_' || c == '-'))
		if !ok {
			return fmt.Errorf("type %q may only contain lowercase letters, digits, '_' and '-', starting with a letter or digit", typ)
		}
	}
	return nil
}

func checkSelectorValue(val string) error {
	if val == "" {
		return fmt.Errorf("empty value")
	}
	if len(val) > maxSelectorValueLen {
		return fmt.Errorf("value longer than %d bytes", maxSelectorValueLen)
	}
	if !utf8.ValidString(val) {
		return fmt.Errorf("value is not valid UTF-8")
	}
	for _, c := range val {
		if unicode.IsControl(c) {
			return fmt.Errorf("value contains control character %U", c)
		}
	}
	return nil
}

// ParseSelectors parses a list, dropping exact duplicates, sorted.
func ParseSelectors(in []string) ([]store.Selector, error) {
	var errs errList
	seen := make(map[string]bool, len(in))
	out := make([]store.Selector, 0, len(in))
	for _, s := range in {
		sel, err := ParseSelector(s)
		if err != nil {
			errs.add(err)
			continue
		}
		if seen[sel.String()] {
			continue
		}
		seen[sel.String()] = true
		out = append(out, sel)
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}

// SelectorsSubset reports whether every selector of want is in have. An
// entry's selectors must all match (AND).
func SelectorsSubset(want, have []store.Selector) bool {
	set := make(map[store.Selector]struct{}, len(have))
	for _, s := range have {
		set[s] = struct{}{}
	}
	for _, s := range want {
		if _, ok := set[s]; !ok {
			return false
		}
	}
	return true
}

// FormatSelectors renders selectors as "type:value" strings.
func FormatSelectors(sels []store.Selector) []string {
	out := make([]string, len(sels))
	for i, s := range sels {
		out[i] = s.String()
	}
	return out
}
