package policy

import (
	"strings"
	"testing"
)

func TestNormalizePath(t *testing.T) {
	tests := []struct {
		in, want string
		err      error
	}{
		{"/", "/", nil},
		{"", "/", nil},
		{"*", "", ErrPathNotOrigin}, // OPTIONS *: nothing a path policy can match
		{"/api/v1/items", "/api/v1/items", nil},
		{"/a%64min", "/admin", nil},             // unreserved characters are decoded
		{"/%41%5a%7e%2d%2E%5F", "/AZ~-._", nil}, // …in either hex case
		{"//admin", "/admin", nil},              // slashes merge
		{"///a////b//", "/a/b/", nil},
		{"/x/../admin", "/admin", nil}, // dot segments resolve
		{"/./admin", "/admin", nil},
		{"/a/b/..", "/a/", nil},
		{"/a/b/.", "/a/b/", nil},
		{"/..", "/", nil}, // never above the root
		{"/../../etc/passwd", "/etc/passwd", nil},
		{"/a/%2e%2e/b", "/b", nil},              // encoded dots are dots
		{"/admin%2Fusers", "/admin/users", nil}, // %2F and %5C become slashes
		{"/admin%2fusers", "/admin/users", nil},
		{"/admin%5Cusers", "/admin/users", nil},
		{"\\admin\\users", "/admin/users", nil}, // backslashes are slashes
		{"/public/..%2Fadmin", "/admin", nil},
		{"/public/..%5Cadmin", "/admin", nil},
		{"/a%3ab", "/a%3Ab", nil},                 // reserved characters stay encoded, upper-cased
		{"/a%20b", "/a%20b", nil},                 // so do others
		{"/q?x=../../admin", "/q", nil},           // the query is not part of the path
		{"/f#../admin", "/f", nil},                // nor the fragment
		{"/.well-known/x", "/.well-known/x", nil}, // a dot that is not a dot segment
		{"/a/..b/...", "/a/..b/...", nil},
		{"/a%00", "", ErrPathNUL},
		{"/a%0", "", ErrPathEncoding},
		{"/a%", "", ErrPathEncoding},
		{"/a%zz", "", ErrPathEncoding},
		{"/a\x00b", "", ErrPathControl},
		{"/a\nb", "", ErrPathControl},
		{"/a\x7fb", "", ErrPathControl},
		{"admin", "", ErrPathNotOrigin},
		{"%61dmin", "", ErrPathNotOrigin},
		{"%2Fadmin", "/admin", nil},
		{"http://evil/admin", "", ErrPathNotOrigin},
	}
	for _, tc := range tests {
		got, err := NormalizePath(tc.in)
		if err != tc.err || got != tc.want {
			t.Errorf("NormalizePath(%q) = %q, %v; want %q, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestNormalizePathCleanIsFree(t *testing.T) {
	p := "/api/v1/items/42.json"
	if n := testing.AllocsPerRun(100, func() { _, _ = NormalizePath(p) }); n != 0 {
		t.Fatalf("%v allocations for a path already normal", n)
	}
}

// checkNormal asserts the properties every normalized path has.
func checkNormal(t *testing.T, in, out string) {
	t.Helper()
	if !strings.HasPrefix(out, "/") {
		t.Fatalf("%q -> %q: not absolute", in, out)
	}
	for _, bad := range []string{"//", "/./", "/../", "\\", "?", "#"} {
		if strings.Contains(out, bad) {
			t.Fatalf("%q -> %q: contains %q", in, out, bad)
		}
	}
	if strings.HasSuffix(out, "/.") || strings.HasSuffix(out, "/..") {
		t.Fatalf("%q -> %q: ends in a dot segment", in, out)
	}
	lower := strings.ToLower(out)
	for _, enc := range []string{"%2f", "%5c", "%2e", "%41", "%7e", "%00"} {
		if strings.Contains(lower, enc) {
			t.Fatalf("%q -> %q: still encodes %s", in, out, enc)
		}
	}
	again, err := NormalizePath(out)
	if err != nil || again != out {
		t.Fatalf("%q -> %q is not a fixed point: %q, %v", in, out, again, err)
	}
}

func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/a%64min", "//admin", "/x/../admin", "/admin%2Fusers", "\\a", "/%2e%2e/", "/a?b#c", "/%00", "/%", "*", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		out, err := NormalizePath(p)
		if err != nil {
			if !IsPathError(err) {
				t.Fatalf("unexpected error type %v", err)
			}
			return
		}
		checkNormal(t, p, out)
	})
}

func FuzzStringMatch(f *testing.F) {
	f.Add("abc*", "abcd", false)
	f.Add("*abc", "xabc", true)
	f.Add("*", "", false)
	f.Add("/a/{*}/b", "/a/x/b", false)
	f.Add("/a/{**}", "/a/", false)
	f.Fuzz(func(t *testing.T, pattern, value string, fold bool) {
		if pattern == "" {
			return
		}
		var m strMatcher
		if isPathTemplate(pattern) {
			parts, err := compilePathTemplate(pattern)
			if err != nil {
				return
			}
			m = strMatcher{kind: matchTemplate, tmpl: parts}
			got := m.match(value)
			// A template never matches more than its literal prefix allows.
			lit := pattern[:strings.IndexByte(pattern, '{')]
			if got && !strings.HasPrefix(value, lit) {
				t.Fatalf("%q matched %q without its prefix %q", pattern, value, lit)
			}
			return
		}
		m = newStrMatcher(pattern, fold)
		got := m.match(value)
		eq := func(a, b string) bool {
			if fold {
				return strings.EqualFold(a, b)
			}
			return a == b
		}
		var want bool
		switch {
		case pattern == "*":
			want = value != ""
		case strings.HasPrefix(pattern, "*"):
			s := pattern[1:]
			want = len(value) >= len(s) && eq(value[len(value)-len(s):], s)
		case strings.HasSuffix(pattern, "*"):
			s := pattern[:len(pattern)-1]
			want = len(value) >= len(s) && eq(value[:len(s)], s)
		default:
			want = eq(value, pattern)
		}
		if got != want {
			t.Fatalf("match(%q, %q, fold=%v) = %v, want %v", pattern, value, fold, got, want)
		}
	})
}

func FuzzLoadAndEvaluate(f *testing.F) {
	f.Add([]byte(policyDoc("p", "default", "ALLOW", "api", "- from:\n  - source: {principals: [\"*\"]}\n  to:\n  - operation: {paths: [\"/a/{*}\"]}\n  when:\n  - key: request.auth.claims[a][b]\n    values: [x]")), "/a/b")
	f.Add([]byte("apiVersion: v1\nkind: List\nitems:\n- kind: PeerAuthentication\n  apiVersion: security.istio.io/v1\n  metadata: {name: x}\n  spec: {portLevelMtls: {80: {mode: STRICT}}}"), "//x")
	f.Add([]byte("{\"apiVersion\":\"security.istio.io/v1\",\"kind\":\"AuthorizationPolicy\",\"metadata\":{\"name\":\"j\"},\"spec\":{\"action\":\"DENY\",\"rules\":[{}]}}"), "/")
	f.Add([]byte("a: &x [*x]"), "/")
	f.Fuzz(func(t *testing.T, data []byte, path string) {
		src := &Sources{}
		src.Parse("fuzz.yaml", data)
		s, problems := Compile(t.Context(), src, Options{})
		for _, p := range problems {
			if p.Severity == SeverityError && p.Message == "" {
				t.Fatalf("an error without a message: %+v", p)
			}
		}
		if s == nil {
			return
		}
		for _, r := range []req{
			{principal: frontend, labels: apiLabels, path: path, headers: map[string]string{"X": "y"}, auth: &Auth{Claims: map[string]any{"a": map[string]any{"b": []any{"x", 1}}}}},
			{labels: apiLabels, tcp: true, port: 80},
		} {
			in := r.input()
			if r.path != "" {
				in.Request.Path = path
			}
			d := s.Explain(t.Context(), in)
			if fast := s.Evaluate(t.Context(), in); fast.Allow != d.Allow || fast.Policy != d.Policy || fast.Rule != d.Rule {
				t.Fatalf("Evaluate and Explain disagree: %+v vs %+v", fast, d)
			}
			s.MTLS("default", apiLabels, 80)
		}
	})
}
