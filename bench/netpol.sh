#!/usr/bin/env bash
# NetworkPolicy analysis at scale: generates clusters of 100, 1,000 and
# 5,000 pods (namespaces of 100 pods: 10 apps x 10 replicas over three
# tiers; a policy per two pods: per namespace a default deny and DNS
# egress, then ingress/egress allows mixing pod, namespace and AND
# selectors, matchExpressions, named ports, endPort ranges and ipBlocks;
# and a service graph of a service per 10 pods, 2 edges each) and reports
# wall time and peak memory of the real binary for:
#
#   matrix-port     trustmesh netpol matrix -f cluster.yaml --port 8080 -o json
#   matrix-all      trustmesh netpol matrix -f cluster.yaml -o json  (every port: cells are port sets)
#   lint            trustmesh netpol lint -f cluster.yaml -o json
#   generate        trustmesh netpol generate --graph graph.yaml
#
# Output goes to /dev/null; times are the median of COUNT runs, memory the
# largest peak RSS (/usr/bin/time). The generated files are plain
# manifests: set PEER to another analyzer's command ({cluster} and {dir}
# are replaced) to measure it on the same files in the same run, e.g.
#
#   PEER='my-analyzer --dir {dir}' bench/netpol.sh
#
#   bench/netpol.sh                    # 100, 1000, 5000 pods, 3 runs each
#   SIZES="1000" COUNT=5 bench/netpol.sh
#   KEEP=/tmp/clusters bench/netpol.sh # keep the generated clusters
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"100 1000 5000"}
COUNT=${COUNT:-3}
PEER=${PEER:-}
work=${KEEP:-$(mktemp -d)}
mkdir -p "$work"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT

go build -o "$work/trustmesh" ./cmd/trustmesh

# gen PODS DIR: writes DIR/cluster.yaml and DIR/graph.yaml.
gen() {
  awk -v pods="$1" -v dir="$2" '
  BEGIN {
    nsCount = int(pods / 100); if (nsCount < 1) nsCount = 1
    perNS = int(pods / nsCount)
    split("frontend backend db", tiers, " ")
    out = dir "/cluster.yaml"
    for (n = 0; n < nsCount; n++) {
      ns = "team-" n
      printf "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels: {team: t%d, env: %s}\n", ns, n % 7, (n % 2 ? "staging" : "prod") > out
      for (i = 0; i < perNS; i++) {
        app = i % 10; tier = tiers[app % 3 + 1]; node = (n * perNS + i) % 50
        printf "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: app-%d-%d\n  namespace: %s\n  labels: {app: app-%d, tier: %s, version: v%d}\n", app, i, ns, app, tier, i % 3 > out
        printf "spec:\n  nodeName: node-%d\n  containers:\n  - name: app\n    image: example/app:1\n    ports:\n    - {name: http, containerPort: 8080}\n    - {name: metrics, containerPort: 9090}\n", node > out
        if (tier == "db") printf "    - {name: postgres, containerPort: 5432}\n" > out
        printf "status:\n  phase: Running\n  hostIP: 192.168.0.%d\n  podIP: 10.%d.%d.%d\n", node + 1, int(n / 250), n % 250, i + 1 > out
      }
      printf "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: %s}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n", ns > out
      printf "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-dns, namespace: %s}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]\n    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]\n", ns > out
      for (p = 2; p < int(perNS / 2); p++) {
        app = p % 10
        target = sprintf("{matchLabels: {app: app-%d}}", app)
        head = sprintf("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p%d, namespace: %s}\nspec:\n", p, ns)
        k = p % 6
        if (k == 0)
          printf "%s  podSelector: %s\n  ingress:\n  - from: [{podSelector: {matchLabels: {tier: frontend}}}]\n    ports: [{port: http}]\n", head, target > out
        else if (k == 1)
          printf "%s  podSelector: %s\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: t%d}}, podSelector: {matchExpressions: [{key: tier, operator: In, values: [frontend, backend]}]}}]\n    ports: [{port: 8080, protocol: TCP}, {port: 9000, endPort: 9100}]\n", head, target, int(p / 6) % 7 > out
        else if (k == 2)
          printf "%s  podSelector: %s\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {tier: db}}}]\n    ports: [{port: postgres}]\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.%d.0.0/16]}}]\n    ports: [{port: 443}]\n", head, target, n % 250 > out
        else if (k == 3)
          printf "%s  podSelector: {matchExpressions: [{key: app, operator: In, values: [app-%d]}, {key: version, operator: NotIn, values: [v9]}]}\n  ingress:\n  - from: [{namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [prod]}]}}]\n    ports: [{port: 9090}]\n", head, app > out
        else if (k == 4)
          printf "%s  podSelector: %s\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {tier: backend}}}]\n    ports: [{port: 8080}]\n", head, target > out
        else
          printf "%s  podSelector: %s\n  ingress:\n  - from: [{ipBlock: {cidr: 10.%d.0.0/16}}, {podSelector: %s}]\n", head, target, int(n / 250), target > out
      }
    }
    g = dir "/graph.yaml"
    print "services:" > g
    for (n = 0; n < nsCount; n++)
      for (k = 0; k < 10; k++)
        printf "  - {name: t%d-app%d, namespace: team-%d, labels: {app: app-%d}, ports: [8080/TCP]}\n", n, k, n, k > g
    print "edges:" > g
    for (n = 0; n < nsCount; n++)
      for (k = 0; k < 10; k++) {
        printf "  - t%d-app%d -> t%d-app%d : 8080/TCP\n", n, k, n, (k + 1) % 10 > g
        if (nsCount > 1) printf "  - t%d-app%d -> t%d-app%d : 8080/TCP\n", n, k, (n + 1) % nsCount, k > g
      }
  }'
}

# measure NAME CMD...: median seconds and max peak RSS (MB) over COUNT runs.
measure() {
  local name=$1; shift
  local times=() rss=0 t m
  for ((r = 0; r < COUNT; r++)); do
    /usr/bin/time -f "%e %M" -o "$work/time" "$@" > /dev/null 2> "$work/stderr" || true
    read -r t m < <(tail -1 "$work/time")
    times+=("$t")
    (( m > rss )) && rss=$m
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf "%-7s %-9s %-12s %8s %9.1f\n" "$pods" "$policies" "$name" "$median" "$(awk -v k="$rss" 'BEGIN {print k / 1024}')" | tee -a "$work/results"
}

: > "$work/results"
printf "%-7s %-9s %-12s %8s %9s\n" pods policies command seconds peak_MB
for pods in $SIZES; do
  dir="$work/cluster-$pods"
  mkdir -p "$dir"
  gen "$pods" "$dir"
  policies=$(grep -c '^kind: NetworkPolicy' "$dir/cluster.yaml")
  tm=("$work/trustmesh" netpol)
  measure matrix-port "${tm[@]}" matrix -f "$dir/cluster.yaml" --port 8080 -o json
  measure matrix-all "${tm[@]}" matrix -f "$dir/cluster.yaml" -o json
  measure lint "${tm[@]}" lint -f "$dir/cluster.yaml" -o json
  measure generate "${tm[@]}" generate --graph "$dir/graph.yaml"
  if [ -n "$PEER" ]; then
    peer=${PEER//\{cluster\}/$dir/cluster.yaml}
    peer=${peer//\{dir\}/$dir}
    # shellcheck disable=SC2086
    measure peer $peer
  fi
done

awk '
$1 == 1000 && ($3 == "matrix-port" || $3 == "matrix-all") {
  ok = ($4 <= 1.0 && $5 <= 500) ? "met" : "NOT met"
  printf "%sTarget (%s, 1,000 pods x %d policies: <= 1 s, <= 500 MB): %s (%.2f s, %.0f MB)\n", (n++ ? "" : "\n"), $3, $2, ok, $4, $5
}' "$work/results"
