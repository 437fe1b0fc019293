package registry

import (
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustmesh/trustmesh/internal/store"
)

// TTL bounds for entries. A zero TTL means "the server default". The
// minimum keeps rotation tests quick without letting a typo ("1ms") make an
// agent rotate in a hot loop.
const (
	MinSVIDTTL   = 10 * time.Second
	MaxSVIDTTL   = 365 * 24 * time.Hour
	maxHintLen   = 1024
	maxDNSLen    = 253
	MaxSelectors = 64
	MaxDNSNames  = 64
)

// EntrySpec is an entry as an admin writes it, before validation.
type EntrySpec struct {
	SPIFFEID    string
	ParentID    string
	Selectors   []string
	X509SVIDTTL time.Duration
	JWTSVIDTTL  time.Duration
	DNSNames    []string
	Admin       bool
	Hint        string
	ExpiresAt   time.Time
}

// ValidateEntry checks spec against the trust domain and returns the entry
// to store (without ID or bookkeeping). Every problem found is reported.
func ValidateEntry(td spiffeid.TrustDomain, spec EntrySpec, now time.Time) (store.Entry, error) {
	var errs errList
	id, err := ParseWorkloadID(td, spec.SPIFFEID)
	errs.add(err)
	parent, err := ParseID(td, "parent ID", spec.ParentID)
	errs.add(err)
	if err == nil && !id.IsZero() && id == parent {
		errs.add(fmt.Errorf("parent ID must differ from the SPIFFE ID %q", spec.SPIFFEID))
	}
	var sels []store.Selector
	switch {
	case len(spec.Selectors) == 0:
		errs.add(fmt.Errorf("at least one selector is required (type:value, e.g. unix:uid:1000)"))
	case len(spec.Selectors) > MaxSelectors:
		errs.add(fmt.Errorf("%d selectors: at most %d", len(spec.Selectors), MaxSelectors))
	default:
		sels, err = ParseSelectors(spec.Selectors)
		errs.add(err)
	}
	errs.add(CheckTTL("X.509-SVID TTL", spec.X509SVIDTTL))
	errs.add(CheckTTL("JWT-SVID TTL", spec.JWTSVIDTTL))
	dns, err := NormalizeDNSNames(spec.DNSNames)
	errs.add(err)
	if len(spec.Hint) > maxHintLen {
		errs.add(fmt.Errorf("hint is longer than %d bytes", maxHintLen))
	}
	for _, c := range spec.Hint {
		if unicode.IsControl(c) {
			errs.add(fmt.Errorf("hint contains control character %U", c))
			break
		}
	}
	if !spec.ExpiresAt.IsZero() && !spec.ExpiresAt.After(now) {
		errs.add(fmt.Errorf("expiry %s is not in the future", spec.ExpiresAt.UTC().Format(time.RFC3339)))
	}
	if err := errs.err(); err != nil {
		return store.Entry{}, err
	}
	return store.Entry{
		SPIFFEID:    id.String(),
		ParentID:    parent.String(),
		Selectors:   sels,
		X509SVIDTTL: spec.X509SVIDTTL,
		JWTSVIDTTL:  spec.JWTSVIDTTL,
		DNSNames:    dns,
		Admin:       spec.Admin,
		Hint:        spec.Hint,
		ExpiresAt:   spec.ExpiresAt.UTC(),
	}, nil
}

// CheckTTL accepts 0 (server default) or a duration within bounds.
func CheckTTL(what string, d time.Duration) error {
	switch {
	case d == 0:
		return nil
	case d < 0:
		return fmt.Errorf("%s %s is negative", what, d)
	case d < MinSVIDTTL:
		return fmt.Errorf("%s %s is below the minimum of %s", what, d, MinSVIDTTL)
	case d > MaxSVIDTTL:
		return fmt.Errorf("%s %s is above the maximum of %s", what, d, MaxSVIDTTL)
	}
	return nil
}

// NormalizeDNSNames lowercases names, drops a trailing dot and duplicates,
// and checks each (nil for an empty list).
func NormalizeDNSNames(names []string) ([]string, error) {
	if len(names) > MaxDNSNames {
		return nil, fmt.Errorf("%d DNS names: at most %d", len(names), MaxDNSNames)
	}
	var (
		out  []string
		errs errList
	)
	seen := map[string]bool{}
	for _, name := range names {
		n := strings.ToLower(strings.TrimSuffix(name, "."))
		if err := CheckDNSName(n); err != nil {
			errs.add(fmt.Errorf("invalid DNS name %q: %w", name, err))
			continue
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out, errs.err()
}

// CheckDNSName validates a lowercase DNS name as used in an X.509 SAN: LDH
// labels of at most 63 bytes, optionally a leading "*." wildcard label.
func CheckDNSName(name string) error {
	if name == "" {
		return fmt.Errorf("empty")
	}
	if len(name) > maxDNSLen {
		return fmt.Errorf("longer than %d bytes", maxDNSLen)
	}
	labels := strings.Split(name, ".")
	for i, l := range labels {
		if i == 0 && l == "*" && len(labels) > 1 {
			continue
		}
		if l == "" {
			return fmt.Errorf("empty label")
		}
		if len(l) > 63 {
			return fmt.Errorf("label %q longer than 63 bytes", l)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", l)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("label %q may only contain letters, digits and '-'", l)
			}
		}
	}
	return nil
}

// Expired reports whether the entry has an expiry at or before now.
func Expired(e store.Entry, now time.Time) bool {
	return !e.ExpiresAt.IsZero() && !now.Before(e.ExpiresAt)
}
