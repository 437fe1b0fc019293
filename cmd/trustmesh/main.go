// Command trustmesh is the single Trustmesh binary; its roles and tools are
// subcommands (see internal/cli).
package main

import (
	"os"

	"github.com/trustmesh/trustmesh/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
