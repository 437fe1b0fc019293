package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestEveryCommandHasHelpAndExample walks the command tree.
func TestEveryCommandHasHelpAndExample(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Name() == "help" || c.Name() == "completion" || c.Parent() != nil && c.Parent().Name() == "completion" {
			return
		}
		if c.Short == "" {
			t.Errorf("%s has no short help", c.CommandPath())
		}
		if c.Example == "" {
			t.Errorf("%s has no example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(NewRoot())
}

func TestUsageErrorsExit2(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main([]string{"entry", "show"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "want one entry id") {
		t.Fatalf("missing arg: exit %d: %s", code, errOut.String())
	}
	errOut.Reset()
	if code := Main([]string{"x509", "mint"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "--spiffe-id and --write are required") {
		t.Fatalf("missing flags: exit %d: %s", code, errOut.String())
	}
	errOut.Reset()
	if code := Main([]string{"entry", "list", "--server", "127.0.0.1:1"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "--server needs") {
		t.Fatalf("--server without credentials: exit %d: %s", code, errOut.String())
	}
}

// TestAdminCommandsHaveJSONOutput: every admin command (one with the
// admin connection flags) takes -o json; server healthcheck, a probe,
// answers with its exit code.
func TestAdminCommandsHaveJSONOutput(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		admin := c.Flags().Lookup("admin-socket") != nil && c.Flags().Lookup("svid") != nil
		if admin && c.CommandPath() != "trustmesh server healthcheck" {
			if o := c.Flags().Lookup("output"); o == nil || o.Shorthand != "o" {
				t.Errorf("%s talks to the admin API but has no -o/--output", c.CommandPath())
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(NewRoot())
}

func TestBundleShowJSONExcludesFormat(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main([]string{"bundle", "show", "-o", "json", "--format", "pem", "--admin-socket", "/nonexistent"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "exclusive") {
		t.Fatalf("-o json with --format: exit %d: %s", code, errOut.String())
	}
}
