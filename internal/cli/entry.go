package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/apiclient"
)

func newEntryCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "entry",
		Short: "Manage registration entries (which workloads get which SPIFFE ID)",
		Example: `  trustmesh entry create --spiffe-id spiffe://example.org/ns/default/sa/api \
      --parent-id spiffe://example.org/trustmesh/agent/join_token/0123456789abcdef \
      --selector unix:uid:1000
  trustmesh entry list -o json`,
	}
	cmd.AddCommand(newEntryCreateCmd(), newEntryListCmd(), newEntryShowCmd(), newEntryUpdateCmd(), newEntryDeleteCmd())
	return cmd
}

// entryFlags are the fields shared by create and update.
type entryFlags struct {
	spiffeID, parentID string
	selectors, dns     []string
	x509TTL, jwtTTL    time.Duration
	admin              bool
	hint               string
	expiresAt          string
	clearExpiry        bool
}

func (f *entryFlags) register(cmd *cobra.Command, update bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.spiffeID, "spiffe-id", "", "SPIFFE ID the workload gets (spiffe://<trust-domain>/<path>)")
	fl.StringVar(&f.parentID, "parent-id", "", "SPIFFE ID of the agent (or node alias) allowed to issue it")
	fl.StringArrayVarP(&f.selectors, "selector", "s", nil, "type:value the workload must match; repeat for several (all must match)")
	fl.DurationVar(&f.x509TTL, "x509-ttl", 0, "X.509-SVID lifetime, e.g. 1h (default: the server's)")
	fl.DurationVar(&f.jwtTTL, "jwt-ttl", 0, "JWT-SVID lifetime, e.g. 5m (default: the server's)")
	fl.StringArrayVar(&f.dns, "dns", nil, "DNS name for the X.509-SVID; repeat for several")
	fl.BoolVar(&f.admin, "admin", false, "holders of this identity may use the admin API over mTLS")
	fl.StringVar(&f.hint, "hint", "", "hint for workloads that receive several SVIDs")
	fl.StringVar(&f.expiresAt, "expires-at", "", "RFC 3339 time after which the entry is no longer served")
	if update {
		fl.BoolVar(&f.clearExpiry, "clear-expiry", false, "remove the entry's expiry")
	}
}

func wholeSeconds(cmd *cobra.Command, flag string, d time.Duration) (int64, error) {
	if d%time.Second != 0 {
		return 0, usageErrorf(cmd, "--%s %s: give a whole number of seconds", flag, d)
	}
	if d < 0 {
		return 0, usageErrorf(cmd, "--%s %s is negative", flag, d)
	}
	return int64(d / time.Second), nil
}

func parseExpiry(cmd *cobra.Command, s string) (*time.Time, error) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return nil, usageErrorf(cmd, "--expires-at %q: want an RFC 3339 time such as 2030-01-02T15:04:05Z", s)
	}
	return &t, nil
}

func newEntryCreateCmd() *cobra.Command {
	var f entryFlags
	var conn adminConn
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a registration entry and print its id",
		Long: `Create a registration entry. The workloads that match every selector, on an
agent whose SPIFFE ID is the parent ID, receive SVIDs for the SPIFFE ID.
Prints the new entry's id (the whole entry with -o json).`,
		Example: `  trustmesh entry create \
      --spiffe-id spiffe://example.org/ns/default/sa/frontend \
      --parent-id spiffe://example.org/trustmesh/agent/join_token/0123456789abcdef \
      --selector unix:uid:1001 --selector unix:path:/usr/local/bin/frontend \
      --x509-ttl 30m --dns frontend.default.svc`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in := apiv1.EntryCreate{SPIFFEID: f.spiffeID, ParentID: f.parentID, Selectors: f.selectors, DNSNames: f.dns, Admin: f.admin, Hint: f.hint}
			var err error
			if in.X509SVIDTTL, err = wholeSeconds(cmd, "x509-ttl", f.x509TTL); err != nil {
				return err
			}
			if in.JWTSVIDTTL, err = wholeSeconds(cmd, "jwt-ttl", f.jwtTTL); err != nil {
				return err
			}
			if f.expiresAt != "" {
				if in.ExpiresAt, err = parseExpiry(cmd, f.expiresAt); err != nil {
					return err
				}
			}
			return conn.call(cmd, func(c *apiclient.Client) error {
				e, err := c.CreateEntry(cmd.Context(), in)
				if err != nil {
					return err
				}
				return conn.emit(cmd, e, func(w io.Writer) error {
					_, err := fmt.Fprintln(w, e.ID)
					return err
				})
			})
		},
	}
	f.register(cmd, false)
	conn.register(cmd, true)
	return cmd
}

func newEntryListCmd() *cobra.Command {
	var conn adminConn
	var spiffeID, parentID string
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List registration entries",
		Example: "  trustmesh entry list\n  trustmesh entry list --parent-id spiffe://example.org/trustmesh/agent/join_token/0123456789abcdef -o json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return conn.call(cmd, func(c *apiclient.Client) error {
				entries, err := c.ListEntries(cmd.Context(), spiffeID, parentID)
				if err != nil {
					return err
				}
				return conn.emit(cmd, apiv1.EntryList{Entries: entries}, func(w io.Writer) error {
					t := newTable(w, "ID", "SPIFFE ID", "PARENT ID", "SELECTORS", "X509 TTL", "JWT TTL", "ADMIN", "EXPIRES")
					for _, e := range entries {
						t.row(e.ID, e.SPIFFEID, e.ParentID, strings.Join(e.Selectors, ","), fmtSeconds(e.X509SVIDTTL),
							fmtSeconds(e.JWTSVIDTTL), fmt.Sprint(e.Admin), fmtTimePtr(e.ExpiresAt))
					}
					return t.flush()
				})
			})
		},
	}
	cmd.Flags().StringVar(&spiffeID, "spiffe-id", "", "only entries with this SPIFFE ID")
	cmd.Flags().StringVar(&parentID, "parent-id", "", "only entries with this parent ID")
	conn.register(cmd, true)
	return cmd
}

func fmtTimePtr(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return fmtTime(*t)
}

func printEntry(w io.Writer, e apiv1.Entry) error {
	return details(w,
		"Entry ID", e.ID,
		"SPIFFE ID", e.SPIFFEID,
		"Parent ID", e.ParentID,
		"Selectors", strings.Join(e.Selectors, ", "),
		"X.509-SVID TTL", fmtSeconds(e.X509SVIDTTL),
		"JWT-SVID TTL", fmtSeconds(e.JWTSVIDTTL),
		"DNS names", orDash(strings.Join(e.DNSNames, ", ")),
		"Admin", fmt.Sprint(e.Admin),
		"Hint", orDash(e.Hint),
		"Expires", fmtTimePtr(e.ExpiresAt),
		"Created", fmtTime(e.CreatedAt),
		"Updated", fmtTime(e.UpdatedAt),
		"Revision", fmt.Sprint(e.Revision),
	)
}

func newEntryShowCmd() *cobra.Command {
	var conn adminConn
	cmd := &cobra.Command{
		Use:     "show ID",
		Short:   "Show one registration entry",
		Example: "  trustmesh entry show 3f1c2d0e-8a4b-4c57-9a7e-2b9d3c4e5f60",
		Args:    exactArgs(1, "one entry id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return conn.call(cmd, func(c *apiclient.Client) error {
				e, err := c.GetEntry(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return conn.emit(cmd, e, func(w io.Writer) error { return printEntry(w, e) })
			})
		},
	}
	conn.register(cmd, true)
	return cmd
}

func newEntryUpdateCmd() *cobra.Command {
	var f entryFlags
	var conn adminConn
	var revision int64
	cmd := &cobra.Command{
		Use:   "update ID",
		Short: "Change fields of a registration entry",
		Long: `Change the fields given as flags; the others keep their value. --selector and
--dns replace the whole list. Use --admin=false to drop the admin flag and
--clear-expiry to remove an expiry. --revision makes the update fail if the
entry changed since you read it.`,
		Example: `  trustmesh entry update 3f1c2d0e-8a4b-4c57-9a7e-2b9d3c4e5f60 --x509-ttl 10m
  trustmesh entry update 3f1c2d0e-8a4b-4c57-9a7e-2b9d3c4e5f60 --selector unix:uid:1002 --admin=false`,
		Args: exactArgs(1, "one entry id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := f.patch(cmd)
			if err != nil {
				return err
			}
			p.Revision = revision
			return conn.call(cmd, func(c *apiclient.Client) error {
				e, err := c.UpdateEntry(cmd.Context(), args[0], p)
				if err != nil {
					return err
				}
				return conn.emit(cmd, e, func(w io.Writer) error { return printEntry(w, e) })
			})
		},
	}
	f.register(cmd, true)
	cmd.Flags().Int64Var(&revision, "revision", 0, "only update if the entry is still at this revision")
	conn.register(cmd, true)
	return cmd
}

// patch builds an update from the flags that were set.
func (f *entryFlags) patch(cmd *cobra.Command) (apiv1.EntryPatch, error) {
	p := apiv1.EntryPatch{ClearExpiry: f.clearExpiry}
	changed := cmd.Flags().Changed
	if changed("spiffe-id") {
		p.SPIFFEID = &f.spiffeID
	}
	if changed("parent-id") {
		p.ParentID = &f.parentID
	}
	if changed("selector") {
		p.Selectors = &f.selectors
	}
	if changed("dns") {
		p.DNSNames = &f.dns
	}
	if changed("admin") {
		p.Admin = &f.admin
	}
	if changed("hint") {
		p.Hint = &f.hint
	}
	for _, ttl := range []struct {
		flag string
		v    time.Duration
		dst  **int64
	}{{"x509-ttl", f.x509TTL, &p.X509SVIDTTL}, {"jwt-ttl", f.jwtTTL, &p.JWTSVIDTTL}} {
		if !changed(ttl.flag) {
			continue
		}
		s, err := wholeSeconds(cmd, ttl.flag, ttl.v)
		if err != nil {
			return p, err
		}
		*ttl.dst = &s
	}
	if changed("expires-at") {
		var err error
		if p.ExpiresAt, err = parseExpiry(cmd, f.expiresAt); err != nil {
			return p, err
		}
	}
	return p, nil
}

func newEntryDeleteCmd() *cobra.Command {
	var conn adminConn
	cmd := &cobra.Command{
		Use:     "delete ID",
		Short:   "Delete a registration entry",
		Example: "  trustmesh entry delete 3f1c2d0e-8a4b-4c57-9a7e-2b9d3c4e5f60",
		Args:    exactArgs(1, "one entry id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return conn.call(cmd, func(c *apiclient.Client) error {
				e, err := c.DeleteEntry(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return conn.emit(cmd, e, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "deleted entry %s (%s)\n", e.ID, e.SPIFFEID)
					return err
				})
			})
		},
	}
	conn.register(cmd, true)
	return cmd
}
