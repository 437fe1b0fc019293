package memtrim

import (
	"crypto/sha256"
	"encoding/hex"
	"runtime"
	"testing"
)

// table is read-only data in the binary's rodata.
var table = [...]string{"spiffe://example.org/ns/default/sa/frontend", "RBAC: access denied", "X-Forwarded-Client-Cert"}

func digest() string {
	h := sha256.New()
	for _, s := range table {
		h.Write([]byte(s))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// The process goes on as before: code and read-only data fault back in
// with the same bytes, and writable memory keeps what was written to it.
func TestTrimKeepsTheProcessWorking(t *testing.T) {
	before := digest()
	written := make([]byte, 1<<20)
	for i := range written {
		written[i] = byte(i)
	}
	global = append(global[:0], "changed at run time")
	r, err := Trim()
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS == "linux" {
		if r.TrimmedMappings < 2 || r.BeforeKiB == 0 || r.AfterKiB == 0 {
			t.Fatalf("%+v: the executable's text and rodata were not trimmed", r)
		}
		t.Logf("VmRSS %d KiB -> %d KiB", r.BeforeKiB, r.AfterKiB)
	}
	if digest() != before {
		t.Fatal("read-only data changed")
	}
	for i := range written {
		if written[i] != byte(i) {
			t.Fatalf("heap byte %d changed", i)
		}
	}
	if len(global) != 1 || global[0] != "changed at run time" {
		t.Fatalf("writable data changed: %q", global)
	}
}

var global = []string{"initial"}

func TestParseMapsLine(t *testing.T) {
	exe := "/usr/bin/trustmesh"
	for line, want := range map[string]bool{
		"00400000-01e14000 r-xp 00000000 fd:01 123 /usr/bin/trustmesh":           true,
		"01e14000-03e24000 r--p 01a14000 fd:01 123 /usr/bin/trustmesh":           true,
		"03e24000-03fc6000 rw-p 03a24000 fd:01 123 /usr/bin/trustmesh":           false, // .data: writable
		"7f28654d8000-7f286562e000 r-xp 00028000 fd:01 9 /usr/lib/libc.so.6":     false, // not ours
		"3096bc00000-3096c400000 rw-p 00000000 00:00 0":                          false,
		"00400000-01e14000 r-xs 00000000 fd:01 123 /usr/bin/trustmesh":           false, // shared
		"00400000-01e14000 r-xp 00000000 fd:01 123 /usr/bin/trustmesh (deleted)": false,
		"zz-01e14000 r-xp 00000000 fd:01 123 /usr/bin/trustmesh":                 false,
	} {
		if _, ok := parseMapsLine(line, exe); ok != want {
			t.Errorf("%q: %v, want %v", line, ok, want)
		}
	}
}
