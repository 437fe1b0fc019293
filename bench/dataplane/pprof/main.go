// Command pprof is the trustmesh binary with net/http/pprof added, for
// PROFILE=1 bench/dataplane.sh: with TRUSTMESH_PPROF=HOST:PORT set it
// serves /debug/pprof/ there, otherwise it is `trustmesh` unchanged. The
// proxy has no profiling endpoint of its own.
package main

import (
	"fmt"
	"net/http"
	_ "net/http/pprof" //nolint:gosec // loopback profiling for the benchmark only
	"os"

	"github.com/trustmesh/trustmesh/internal/cli"
)

func main() {
	if addr := os.Getenv("TRUSTMESH_PPROF"); addr != "" {
		go func() {
			if err := http.ListenAndServe(addr, nil); err != nil {
				fmt.Fprintln(os.Stderr, "pprof:", err)
			}
		}()
	}
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
