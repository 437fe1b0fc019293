package httpx

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCheckUpgrade(t *testing.T) {
	for _, tc := range []struct {
		upgrade    []string
		err        bool
		keepUpdate bool
	}{
		{nil, false, false},
		{[]string{"websocket"}, false, true},
		{[]string{"WebSocket"}, false, true},
		{[]string{"h2c"}, false, false},
		{[]string{"H2C"}, false, false},
		{[]string{"TLS/1.2"}, true, false},
		{[]string{"websocket", "h2c"}, true, false},
		{[]string{"h2c, foo"}, true, false},
		{[]string{"", " , "}, false, true},
	} {
		h := http.Header{"Http2-Settings": {"AAMAAABkAARAAAAAAAIAAAAA"}}
		if tc.upgrade != nil {
			h["Upgrade"] = tc.upgrade
		}
		err := CheckUpgrade(h)
		if (err != nil) != tc.err || err != nil && !errors.Is(err, ErrUpgradeRefused) {
			t.Errorf("%q: err %v", tc.upgrade, err)
		}
		if _, ok := h["Http2-Settings"]; ok {
			t.Errorf("%q: HTTP2-Settings kept", tc.upgrade)
		}
		if err == nil && tc.upgrade != nil && (h["Upgrade"] != nil) != tc.keepUpdate {
			t.Errorf("%q: Upgrade now %q", tc.upgrade, h["Upgrade"])
		}
	}
}

func TestCanonicalName(t *testing.T) {
	for in, want := range map[string]string{
		"X-Forwarded-Client-Cert": "X-Forwarded-Client-Cert",
		"X_forwarded_client_cert": "X-Forwarded-Client-Cert",
		"X-Trustmesh_User":        "X-Trustmesh-User",
		"_":                       "-",
	} {
		if got := CanonicalName(in); got != want {
			t.Errorf("CanonicalName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStatusWriterRecordsFinalStatus(t *testing.T) {
	rec := httptest.NewRecorder()
	w := &StatusWriter{ResponseWriter: rec}
	if w.Code() != http.StatusOK {
		t.Fatal(w.Code())
	}
	w.WriteHeader(http.StatusEarlyHints)
	w.WriteHeader(http.StatusNotFound)
	if w.Code() != http.StatusNotFound {
		t.Fatalf("code %d after 103 then 404", w.Code())
	}
}

// FuzzCheckUpgrade: whatever the header, what remains is no upgrade or a
// WebSocket one, and HTTP2-Settings is gone.
func FuzzCheckUpgrade(f *testing.F) {
	for _, s := range []string{"websocket", "h2c", "TLS/1.2", "websocket, h2c", "", "h2c,h2c"} {
		f.Add(s, "x")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		h := http.Header{"Upgrade": {a, b}, "Http2-Settings": {a}}
		if CheckUpgrade(h) != nil {
			return
		}
		if _, ok := h["Http2-Settings"]; ok {
			t.Fatal("HTTP2-Settings kept")
		}
		for _, v := range h["Upgrade"] {
			for _, tok := range strings.Split(v, ",") {
				if tok = strings.TrimSpace(tok); tok != "" && !strings.EqualFold(strings.SplitN(tok, "/", 2)[0], "websocket") {
					t.Fatalf("upgrade %q forwarded", tok)
				}
			}
		}
		h2 := h.Clone()
		if err := CheckUpgrade(h2); err != nil || len(h2["Upgrade"]) != len(h["Upgrade"]) {
			t.Fatalf("not idempotent: %v %q", err, h2)
		}
	})
}
