//go:build unix

package auditfile

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// notifyReopen calls reopen on each SIGUSR1 until ctx ends.
func notifyReopen(ctx context.Context, reopen func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR1)
	go func() {
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				reopen()
			}
		}
	}()
}
