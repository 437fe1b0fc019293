package sqlstore

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/trustmesh/trustmesh/internal/store"
)

// Timestamps are stored as Unix microseconds, 0 meaning "unset".
func toMicros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromMicros(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us).UTC()
}

func encodeSelectors(sels []store.Selector) string {
	ss := make([]string, len(sels))
	for i, s := range sels {
		ss[i] = s.String()
	}
	sort.Strings(ss)
	return encodeStrings(ss)
}

func decodeSelectors(raw string) ([]store.Selector, error) {
	ss, err := decodeStrings(raw)
	if err != nil {
		return nil, err
	}
	out := make([]store.Selector, 0, len(ss))
	for _, s := range ss {
		typ, val, ok := strings.Cut(s, ":")
		if !ok {
			return nil, fmt.Errorf("stored selector %q has no type", s)
		}
		out = append(out, store.Selector{Type: typ, Value: val})
	}
	return out, nil
}

func encodeStrings(ss []string) string {
	if ss == nil {
		ss = []string{}
	}
	b, _ := json.Marshal(ss) // []string always marshals
	return string(b)
}

func decodeStrings(raw string) ([]string, error) {
	var ss []string
	if err := json.Unmarshal([]byte(raw), &ss); err != nil {
		return nil, fmt.Errorf("decode stored list: %w", err)
	}
	if len(ss) == 0 {
		return nil, nil
	}
	return ss, nil
}

// entryUniqueKey identifies an entry's (SPIFFE ID, parent, selector set)
// triple; the database's UNIQUE constraint on it rejects duplicates even
// when two replicas insert at once.
func entryUniqueKey(e store.Entry) string {
	h := sha256.New()
	h.Write([]byte(e.SPIFFEID))
	h.Write([]byte{0})
	h.Write([]byte(e.ParentID))
	h.Write([]byte{0})
	h.Write([]byte(encodeSelectors(e.Selectors)))
	return hex.EncodeToString(h.Sum(nil))
}
