package gateway

import (
	"crypto/subtle"
	"encoding/json"
	"io"
)

func subtleEqual(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

func jsonEncode(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }
