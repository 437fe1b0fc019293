#!/usr/bin/env bash
# Authorization decisions: Trustmesh's native engine next to OPA (the
# seed's authz.rego, prepared once, matrix as data) on the same decisions
# of the seed's service-permission matrix scaled to 10, 1,000 and 10,000
# services, allowed and denied, measured in the same run.
#
#   bench/policy.sh              # 5 runs of 20000 decisions each
#   COUNT=10 N=50000 bench/policy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-5}
N=${N:-20000}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench 'BenchmarkDecision' -benchmem -benchtime "${N}x" -count "$COUNT" ./internal/policy/ | tee "$out"

awk '
/^BenchmarkDecision/ {
  name=$1; sub(/-[0-9]+$/, "", name); sub(/^BenchmarkDecision\//, "", name)
  split(name, parts, "/"); engine=parts[1]; sub(/engine=/, "", engine)
  key=parts[2] "/" parts[3]
  keys[key]=1
  for (i = 2; i <= NF; i++) {
    if ($(i+1) == "ns/op") { ns[engine, key] += $i; n[engine, key]++ }
    if ($(i+1) == "allocs/op") { allocs[engine, key] = $i }
  }
}
END {
  printf "\n%-24s %12s %10s %12s %10s %10s\n", "case", "native ns", "allocs", "OPA ns", "allocs", "OPA/native"
  split("services=10/allow services=10/deny services=1000/allow services=1000/deny services=10000/allow services=10000/deny", order, " ")
  for (j = 1; j <= 6; j++) {
    k = order[j]
    if (!(k in keys)) continue
    a = ns["native", k] / n["native", k]; o = ns["opa", k] / n["opa", k]
    printf "%-24s %12.0f %10d %12.0f %10d %9.1fx\n", k, a, allocs["native", k], o, allocs["opa", k], o / a
  }
  printf "\nTargets: native < 1000 ns with 0 allocs at 10,000 services; OPA/native >= 20x.\n"
}' "$out"
