//go:build unix

package gateway

import (
	"os"
	"strings"
	"syscall"
	"testing"
)

// Log rotation: after the audit log is renamed and the gateway gets
// SIGUSR1, records go to a new file at the configured path; the renamed
// file keeps what came before.
func TestAuditLogReopenedOnSIGUSR1(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	tok := h.idp.token(t, h.idp.claims(h.clock.Now()))
	h.bearerGet("/before", tok, nil).Body.Close()
	waitFor(t, "the first record", func() bool { return strings.Contains(readFile(t, h.audit), `"path":"/before"`) })
	if err := os.Rename(h.audit, h.audit+".1"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the audit log reopened", func() bool { _, err := os.Stat(h.audit); return err == nil })
	h.bearerGet("/after", tok, nil).Body.Close()
	waitFor(t, "the record after rotation", func() bool { return strings.Contains(readFile(t, h.audit), `"path":"/after"`) })
	if old := readFile(t, h.audit+".1"); !strings.Contains(old, `"path":"/before"`) || strings.Contains(old, `"path":"/after"`) {
		t.Fatalf("rotated file: %s", old)
	}
	if fi, err := os.Stat(h.audit); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("new audit log mode: %v %v", fi.Mode(), err)
	}
}
