//go:build !unix

package auditfile

import "context"

// notifyReopen: no SIGUSR1 here; the file is reopened only on restart.
func notifyReopen(context.Context, func()) {}
