//go:build unix

package proxy

import (
	"os"
	"syscall"
	"testing"
	"time"
)

// Log rotation: after the audit log is renamed and the proxy gets
// SIGUSR1, records go to a new file at the configured path.
func TestAuditLogReopenedOnSIGUSR1(t *testing.T) {
	m := newMesh(t, meshOpts{})
	paths := func(path string) map[string]bool {
		seen := map[string]bool{}
		for _, r := range auditRecords(t, path) {
			seen[r.Path] = true
		}
		return seen
	}
	if code, body := get(t, m.frontURL("api", "/api/before"), nil); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	waitFor(t, 10*time.Second, "the first record", func() bool { return paths(m.apiAudit)["/api/before"] })
	if err := os.Rename(m.apiAudit, m.apiAudit+".1"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the audit log reopened", func() bool { _, err := os.Stat(m.apiAudit); return err == nil })
	if code, body := get(t, m.frontURL("api", "/api/after"), nil); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	waitFor(t, 10*time.Second, "the record after rotation", func() bool { return paths(m.apiAudit)["/api/after"] })
	if old := paths(m.apiAudit + ".1"); !old["/api/before"] || old["/api/after"] {
		t.Fatalf("rotated file holds %v", old)
	}
}
