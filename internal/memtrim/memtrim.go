// Package memtrim gives back, once a long-running process has started,
// the memory that only starting it needed.
//
// A Trustmesh binary holds every role (server, agent, proxy, gateway and
// the offline tools), and Go runs every linked package's init: starting
// `trustmesh proxy run` reads code and read-only data (type descriptors,
// protobuf file descriptors, OPA's builtin tables) spread over most of the
// binary, and the kernel maps them around each fault in 64 KiB runs. That
// is most of an idle sidecar's RSS, though the proxy never touches those
// pages again. Trim drops the mappings of the executable's clean,
// read-only segments (the pages stay in the page cache, shared, and
// fault back in on use) and returns the free heap to the OS; what the
// process keeps using comes back, what only start-up used does not.
package memtrim

import "runtime/debug"

// Result is what one Trim did.
type Result struct {
	BeforeKiB, AfterKiB int64 // VmRSS; 0 when unknown
	TrimmedMappings     int
}

// Trim is called once the process is ready and idle. It is safe at any
// time: it never touches writable or anonymous memory other than through
// the Go runtime.
func Trim() (Result, error) {
	var r Result
	r.BeforeKiB = rssKiB()
	debug.FreeOSMemory()
	n, err := dropReadOnlyImage()
	r.TrimmedMappings = n
	r.AfterKiB = rssKiB()
	return r, err
}
