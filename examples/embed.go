// Package examples embeds the example policies `trustmesh dev` starts
// from when it runs outside a checkout of this repository.
package examples

import "embed"

// DevPolicies holds policies/matrix: the seeds' service-permission matrix.
//
//go:embed policies/matrix/*.yaml
var DevPolicies embed.FS
