#!/usr/bin/env bash
# Node agent benchmark (see bench/agent/main.go): FetchX509SVID latency
# p50/p99, time for an entry change to reach 1,000 workload streams, agent
# RSS with 1,000 entries. Flags: -entries N -streams N -fetches N.
set -euo pipefail
cd "$(dirname "$0")/.."
go run ./bench/agent "$@"
