package jsonenc

import (
	"bytes"
	"encoding/json"
	"math"
	"testing"
)

var strings = []string{
	"", "a", "plain text", `quote " backslash \ slash /`, "<script>&amp;</script>", "tab\tnl\ncr\rbs\bff\f",
	"\x00\x01\x1f\x7f", "é ü 日本", "\u2028\u2029", "bad \xff\xfe utf8 \xc3", "emoji 🙂", "trunc\xe2\x82",
	"\xed\xa0\x80 surrogate", "\U0010FFFF",
}

var floats = []float64{0, 1, -1, 0.001, 1e-6, 9.99e-7, 1e-7, 123456.789, 1e20, 1e21, 1.5e300, 5e-324, -2.5e-8, math.MaxFloat64, math.Copysign(0, -1)}

func marshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMatchesEncodingJSON(t *testing.T) {
	for _, s := range strings {
		if got, want := AppendString(nil, s), marshal(t, s); !bytes.Equal(got, want) {
			t.Errorf("AppendString(%q) = %s, want %s", s, got, want)
		}
	}
	for _, f := range floats {
		if got, want := AppendFloat(nil, f), marshal(t, f); !bytes.Equal(got, want) {
			t.Errorf("AppendFloat(%v) = %s, want %s", f, got, want)
		}
	}
	for _, l := range [][]string{{}, {""}, strings} {
		if got, want := AppendStrings(nil, l), marshal(t, l); !bytes.Equal(got, want) {
			t.Errorf("AppendStrings(%q) = %s, want %s", l, got, want)
		}
	}
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() {
		buf = AppendString(buf[:0], strings[5])
		buf = AppendFloat(buf, 0.213)
	}); n != 0 {
		t.Errorf("%v allocations with room in the buffer", n)
	}
}

func FuzzEncoding(f *testing.F) {
	for i, s := range strings {
		f.Add(s, floats[i%len(floats)])
	}
	f.Fuzz(func(t *testing.T, s string, x float64) {
		if got, want := AppendString([]byte("prefix"), s), append([]byte("prefix"), marshal(t, s)...); !bytes.Equal(got, want) {
			t.Fatalf("AppendString(%q) = %s, want %s", s, got, want)
		}
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return
		}
		if got, want := AppendFloat(nil, x), marshal(t, x); !bytes.Equal(got, want) {
			t.Fatalf("AppendFloat(%v) = %s, want %s", x, got, want)
		}
	})
}
