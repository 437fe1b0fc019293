#!/usr/bin/env bash
# Data-plane benchmark: the Trustmesh sidecar pair next to an nginx mTLS
# pair and the bare backend, interleaved in one run on this machine.
#
#   (a) direct     wrk → backend
#   (b) nginx      wrk → nginx outbound (HTTP in, mTLS out: proxy_ssl_* with
#                  the frontend SVID, proxy_ssl_verify against the bundle,
#                  keep-alive upstream) → nginx inbound (ssl_verify_client
#                  on, TLS 1.3, the api SVID, keep-alive upstream) → backend
#   (c) trustmesh  wrk → `trustmesh proxy run` outbound (frontend SVID) →
#                  `trustmesh proxy run` inbound (api SVID, an
#                  AuthorizationPolicy allowing the frontend) → backend
#
# The identities are real: a `trustmesh server run` and `trustmesh agent
# run` on loopback issue an X.509-SVID to each of two entries (frontend,
# api) for this uid. The Trustmesh proxies pick theirs with --svid-id; nginx
# gets the same SVIDs written by `trustmesh api fetch x509 --write`.
# Each round runs the three setups back to back (starting at a different
# one each round) so drift affects all equally. Reported: requests/s and
# wrk's p50/p99 latency (median over rounds), ratios to nginx and to direct,
# the proxies' CPU time per request, and every proxy process's VmRSS idle
# (before any load) and after the load.
#
#   bench/dataplane.sh                       # 3 rounds of 10 s per setup
#   ROUNDS=5 DURATION=20 bench/dataplane.sh
#   CONNS=128 THREADS=2 BODY=1024 bench/dataplane.sh
#   PROFILE=1 bench/dataplane.sh             # + CPU profiles of both Trustmesh
#                                            #   proxies under load (pprof)
#   PERF=1 bench/dataplane.sh                # + syscalls, context switches/req
#   GO_FLOOR=1 bench/dataplane.sh            # + a bare Go mTLS pair as a reference
#
# Environment (defaults in brackets):
#   ROUNDS [3]        rounds; each measures every setup once
#   DURATION [10]     seconds per measurement; WARMUP [3] per setup, once
#   THREADS [2], CONNS [64]   wrk -t/-c; BODY [128] response bytes
#   BASE_PORT         loopback ports BASE_PORT..BASE_PORT+50 [20000-59900,
#                     from the PID]
#   NGINX_WORKERS [2] worker_processes of each nginx
#   TM_GOMAXPROCS [2] GOMAXPROCS of each Trustmesh proxy (1 measured slower: 0.64x nginx)
#   QUIET_WAIT [30]   before each measurement, wait up to this long for a
#                     quiet second (< 5% CPU busy; 0: don't wait); the
#                     "other load" column shows what ran alongside anyway
#   PROFILE=1         CPU-profile both Trustmesh proxies in round 1 (pprof;
#                     PROFILE_DIR keeps the profiles, default a temp dir)
#   PERF=1            syscalls and context switches per request (perf stat)
#   GO_FLOOR=1        a fourth setup, "go-copy pair": bench/floor's bare Go
#                     mTLS pair (crypto/tls, the same certificates as nginx,
#                     client certificates required) that copies request and
#                     response heads without parsing them, no policy, no log.
#                     What Go and crypto/tls cost on their own here.
#   TRUSTMESH_BIN     benchmark this binary instead of building one
#   KEEP=1            keep the work directory (configs, logs, wrk output)
#   HOLD=1            set everything up, then wait (for manual profiling)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
BODY=${BODY:-128}
# A base port per run, so two runs (which would skew each other anyway)
# at least do not talk to each other's processes.
BASE_PORT=${BASE_PORT:-$((20000 + ($$ % 400) * 100))}
NGINX_WORKERS=${NGINX_WORKERS:-2}
TM_GOMAXPROCS=${TM_GOMAXPROCS:-2}
QUIET_WAIT=${QUIET_WAIT:-30}
PROFILE=${PROFILE:-0}
PERF=${PERF:-0}
KEEP=${KEEP:-0}
GO_FLOOR=${GO_FLOOR:-0}

TD=example.org
ID_FRONTEND=spiffe://$TD/ns/default/sa/frontend
ID_API=spiffe://$TD/ns/default/sa/api
DNS_API=api.bench.local # nginx verifies a DNS SAN: it cannot match a SPIFFE ID

SERVER_ADDR=127.0.0.1:$((BASE_PORT + 1))
BACKEND_ADDR=127.0.0.1:$((BASE_PORT + 10))
NGINX_OUT_ADDR=127.0.0.1:$((BASE_PORT + 20))
NGINX_IN_ADDR=127.0.0.1:$((BASE_PORT + 21))
TM_OUT_ADDR=127.0.0.1:$((BASE_PORT + 30))
TM_IN_ADDR=127.0.0.1:$((BASE_PORT + 31))
PPROF_OUT_ADDR=127.0.0.1:$((BASE_PORT + 40))
PPROF_IN_ADDR=127.0.0.1:$((BASE_PORT + 41))
FLOOR_OUT_ADDR=127.0.0.1:$((BASE_PORT + 45))
FLOOR_IN_ADDR=127.0.0.1:$((BASE_PORT + 46))

log() { printf '%s\n' "$*" >&2; }
die() {
  log "dataplane: $*"
  exit 1
}

# wrk, nginx, curl and jq from apt when missing, as .ci/run installs its own.
install_packages() {
  local missing=()
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v jq >/dev/null 2>&1 || missing+=(jq)
  [ "$PERF" != 1 ] || command -v perf >/dev/null 2>&1 || missing+=(linux-perf)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# Processes this script started, stopped (by PID) in reverse order on exit.
PIDS=()
NAMES=()
dir=""
cleanup() {
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill -TERM "$pid" 2>/dev/null || true
  done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$dir" ]; then
    if [ "$KEEP" = 1 ]; then log "kept $dir"; else rm -rf "$dir"; fi
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: run CMD in the background, output to $dir/NAME.log.
start() {
  local name=$1
  shift
  "$@" >"$dir/$name.log" 2>&1 &
  PIDS+=($!)
  NAMES+=("$name")
  eval "PID_${name//-/_}=$!"
}

pid_of() {
  local v="PID_${1//-/_}"
  echo "${!v}"
}

alive_or_die() {
  local name=$1 pid
  pid=$(pid_of "$name")
  if ! kill -0 "$pid" 2>/dev/null; then
    log "--- $name exited; its log:"
    tail -n 30 "$dir/$name.log" >&2 || true
    die "$name is not running"
  fi
}

# wait_for SECONDS NAME CMD...: until CMD succeeds, while NAME runs.
wait_for() {
  local secs=$1 name=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    alive_or_die "$name"
    [ $SECONDS -lt $deadline ] || die "$name: not ready after ${secs}s (see $dir/$name.log)"
    sleep 0.1
  done
}

http_ok() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1")" = 200 ]; }

# VmRSS / VmHWM in KiB of a process, and of a process with its children
# (an nginx master and its workers).
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
tree_pids() { echo "$1" && ps -o pid= --ppid "$1" | tr -d " "; }
tree_kib() {
  local sum=0 p v
  for p in $(tree_pids "$1"); do
    v=$(status_kib "$p" "$2" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
proxy_kib() { # NAME FIELD
  local pid
  pid=$(pid_of "$1")
  case $1 in
  nginx-*) tree_kib "$pid" "$2" ;;
  *) status_kib "$pid" "$2" ;;
  esac
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }
# port_listening ADDR: a socket listens on ADDR's port, checked without
# connecting (a connection would touch code and data the idle figure
# should not include: accepting, the TLS handshake).
port_listening() {
  local hex
  hex=$(printf '%04X' "${1#*:}")
  awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p {f = 1} END {exit !f}' /proc/net/tcp /proc/net/tcp6
}

install_packages
for a in "$SERVER_ADDR" "$BACKEND_ADDR" "$NGINX_OUT_ADDR" "$NGINX_IN_ADDR" "$TM_OUT_ADDR" "$TM_IN_ADDR"; do
  ! port_open "$a" || die "$a is in use (another bench/dataplane.sh running? its load would skew both): set BASE_PORT"
done
dir=$(mktemp -d /tmp/tm-bench-dataplane.XXXXXX)
mkdir -p "$dir/svid" "$dir/policy" "$dir/nginx-out" "$dir/nginx-in"

# --- Build.
tm=$dir/trustmesh
if [ -n "${TRUSTMESH_BIN:-}" ]; then
  # A prebuilt binary (A/B-testing a proxy change); PROFILE=1 wants it
  # built from bench/dataplane/pprof.
  cp "$TRUSTMESH_BIN" "$tm"
elif [ "$PROFILE" = 1 ]; then
  # The same CLI with net/http/pprof on $TRUSTMESH_PPROF.
  go build -o "$tm" ./bench/dataplane/pprof
else
  go build -o "$tm" ./cmd/trustmesh
fi
if [ "$PROFILE" = 1 ]; then
  PROFILE_DIR=${PROFILE_DIR:-$(mktemp -d /tmp/tm-dataplane-profiles.XXXXXX)}
  mkdir -p "$PROFILE_DIR"
fi
go build -o "$dir/backend" ./bench/dataplane/backend
[ "$GO_FLOOR" != 1 ] || go build -o "$dir/floor" ./bench/floor
export TRUSTMESH_ADMIN_SOCKET=$dir/server/admin.sock

# --- Control plane: server, join token, two entries for this uid, agent.
start server "$tm" server run --data-dir "$dir/server" --listen "$SERVER_ADDR" --trust-domain "$TD" --log-level warn
wait_for 30 server "$tm" bundle show
"$tm" bundle show >"$dir/bundle.pem"
token=$("$tm" token generate --ttl 10m 2>/dev/null)
parent=spiffe://$TD/trustmesh/agent/join_token/${token%%.*}
"$tm" entry create --spiffe-id "$ID_FRONTEND" --parent-id "$parent" --selector "unix:uid:$(id -u)" \
  --x509-ttl 2h --dns frontend.bench.local >/dev/null
"$tm" entry create --spiffe-id "$ID_API" --parent-id "$parent" --selector "unix:uid:$(id -u)" \
  --x509-ttl 2h --dns "$DNS_API" >/dev/null
sock=$dir/agent.sock
start agent "$tm" agent run --server "$SERVER_ADDR" --trust-bundle "$dir/bundle.pem" --join-token "$token" \
  --socket "$sock" --data-dir "$dir/agent" --log-level warn
two_svids() { [ "$("$tm" api fetch x509 --socket "$sock" --timeout 2s -o json | jq '.svids | length')" = 2 ]; }
wait_for 60 agent two_svids

# The SVIDs as files for nginx, picked by SPIFFE ID from the JSON listing.
"$tm" api fetch x509 --socket "$sock" --write "$dir/svid" -o json >"$dir/svids.json"
svid_file() { jq -er --arg id "$1" --arg f "$2" '.svids[] | select(.spiffe_id == $id) | .[$f]' "$dir/svids.json"; }
FRONTEND_PEM=$(svid_file "$ID_FRONTEND" svid_file)
FRONTEND_KEY=$(svid_file "$ID_FRONTEND" key_file)
API_PEM=$(svid_file "$ID_API" svid_file)
API_KEY=$(svid_file "$ID_API" key_file)
BUNDLE_PEM=$(svid_file "$ID_API" bundle_file)

# --- Backend.
start backend "$dir/backend" -listen "$BACKEND_ADDR" -body "$BODY"
wait_for 10 backend http_ok "http://$BACKEND_ADDR/"

# --- nginx pair. Keep-alive everywhere (keepalive_requests raised from
# 1000 so nginx does not reconnect mid-run; the Go servers have no such
# limit), reuseport so the kernel spreads connections over both workers.
# The inbound nginx writes an access log line per request as the Trustmesh
# inbound writes an audit line; neither outbound logs requests.
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;" # workers must read the 0600 keys
nginx_common() { # NAME
  cat <<EOF
$user_line
daemon off;
master_process on;
worker_processes $NGINX_WORKERS;
pid $dir/$1/nginx.pid;
error_log $dir/$1/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() { # NAME
  cat <<EOF
  client_body_temp_path $dir/$1/client_body;
  proxy_temp_path $dir/$1/proxy;
  fastcgi_temp_path $dir/$1/fastcgi;
  uwsgi_temp_path $dir/$1/uwsgi;
  scgi_temp_path $dir/$1/scgi;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
EOF
}
{
  nginx_common nginx-out
  cat <<EOF
http {
$(nginx_http_common nginx-out)
  access_log off;
  upstream api {
    server $NGINX_IN_ADDR;
    keepalive 128;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
  }
  server {
    listen $NGINX_OUT_ADDR reuseport;
    location / {
      proxy_pass https://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Request-Id \$request_id;
      proxy_ssl_certificate $FRONTEND_PEM;
      proxy_ssl_certificate_key $FRONTEND_KEY;
      proxy_ssl_trusted_certificate $BUNDLE_PEM;
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 4;
      proxy_ssl_name $DNS_API;
      proxy_ssl_server_name on;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_session_reuse on;
    }
  }
}
EOF
} >"$dir/nginx-out/nginx.conf"
{
  nginx_common nginx-in
  cat <<EOF
http {
$(nginx_http_common nginx-in)
  access_log $dir/nginx-in/access.log combined;
  upstream app {
    server $BACKEND_ADDR;
    keepalive 128;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
  }
  server {
    listen $NGINX_IN_ADDR ssl reuseport;
    ssl_protocols TLSv1.3;
    ssl_certificate $API_PEM;
    ssl_certificate_key $API_KEY;
    ssl_client_certificate $BUNDLE_PEM;
    ssl_verify_client on;
    ssl_verify_depth 4;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Forwarded-Client-Cert "Hash=\$ssl_client_fingerprint";
    }
  }
}
EOF
} >"$dir/nginx-in/nginx.conf"
for n in nginx-in nginx-out; do
  nginx -t -q -p "$dir/$n" -c "$dir/$n/nginx.conf" -e "$dir/$n/error.log" 2>"$dir/$n.test.log" ||
    { cat "$dir/$n.test.log" >&2; die "$n: bad config"; }
done
start nginx-in nginx -p "$dir/nginx-in" -c "$dir/nginx-in/nginx.conf" -e "$dir/nginx-in/error.log"
start nginx-out nginx -p "$dir/nginx-out" -c "$dir/nginx-out/nginx.conf" -e "$dir/nginx-out/error.log"

# --- Trustmesh pair: one process each, GOMAXPROCS=$TM_GOMAXPROCS. The inbound's policy
# allows the frontend's principal; everything else is denied.
cat >"$dir/policy/api.yaml" <<EOF
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: api-allow-frontend
  namespace: default
spec:
  selector:
    matchLabels:
      app: api
  action: ALLOW
  rules:
    - from:
        - source:
            principals: ["$TD/ns/default/sa/frontend"]
EOF
pp_in=() pp_out=()
if [ "$PROFILE" = 1 ]; then
  pp_in=(TRUSTMESH_PPROF="$PPROF_IN_ADDR")
  pp_out=(TRUSTMESH_PPROF="$PPROF_OUT_ADDR")
fi
start tm-in env GOMAXPROCS=$TM_GOMAXPROCS "${pp_in[@]}" "$tm" proxy run --socket "$sock" --svid-id "$ID_API" --label app=api \
  --inbound-listen "$TM_IN_ADDR" --inbound-forward "$BACKEND_ADDR" --policy "$dir/policy" \
  --audit-log "$dir/tm-in-audit.log" --log-level warn
start tm-out env GOMAXPROCS=$TM_GOMAXPROCS "${pp_out[@]}" "$tm" proxy run --socket "$sock" --svid-id "$ID_FRONTEND" \
  --outbound-listen "$TM_OUT_ADDR" --outbound-upstream "$TM_IN_ADDR" --outbound-spiffe-id "$ID_API" --log-level warn

# env execs the proxy, so these PIDs are the proxies themselves. Wait for
# the listeners without connecting to them (idle RSS comes first).
wait_for 60 tm-in port_listening "$TM_IN_ADDR"
wait_for 60 tm-out port_listening "$TM_OUT_ADDR"
wait_for 10 nginx-in port_listening "$NGINX_IN_ADDR"
wait_for 10 nginx-out port_listening "$NGINX_OUT_ADDR"
if [ "$GO_FLOOR" = 1 ]; then
  start floor-in "$dir/floor" -listen "$FLOOR_IN_ADDR" -upstream "$BACKEND_ADDR" -tls-in \
    -cert "$API_PEM" -key "$API_KEY" -bundle "$BUNDLE_PEM"
  start floor-out "$dir/floor" -listen "$FLOOR_OUT_ADDR" -upstream "$FLOOR_IN_ADDR" -tls-out \
    -cert "$FRONTEND_PEM" -key "$FRONTEND_KEY" -bundle "$BUNDLE_PEM" -server-name "$DNS_API"
  wait_for 10 floor-in port_listening "$FLOOR_IN_ADDR"
  wait_for 10 floor-out port_listening "$FLOOR_OUT_ADDR"
fi
if [ "$PROFILE" = 1 ]; then # a TRUSTMESH_BIN not built from bench/dataplane/pprof has no profile endpoint
  wait_for 10 tm-in http_ok "http://$PPROF_IN_ADDR/debug/pprof/"
  wait_for 10 tm-out http_ok "http://$PPROF_OUT_ADDR/debug/pprof/"
fi

PROXIES=(tm-out tm-in nginx-out nginx-in)
sleep 2 # let start-up allocation settle
all_alive() { for n in "${NAMES[@]}"; do alive_or_die "$n"; done; }
all_alive # (a listener that answered might not have been ours)
declare -A IDLE SERVED LOADED PEAK
for n in "${PROXIES[@]}"; do IDLE[$n]=$(proxy_kib "$n" VmRSS); done

# --- Check every chain before measuring it: 200 through each, the
# identity headers each adds, and that both inbounds refuse a client
# without a certificate.
chains=("http://$BACKEND_ADDR/" "http://$NGINX_OUT_ADDR/" "http://$TM_OUT_ADDR/")
[ "$GO_FLOOR" != 1 ] || chains+=("http://$FLOOR_OUT_ADDR/")
for url in "${chains[@]}"; do
  got=$(curl -fsS --max-time 5 "$url" | wc -c) || die "GET $url failed"
  [ "$got" = "$BODY" ] || die "GET $url: $got bytes, want $BODY"
done
xfcc_nginx=$(curl -fsS "http://$NGINX_OUT_ADDR/echo" | grep -i '^X-Forwarded-Client-Cert:') || die "nginx pair: no X-Forwarded-Client-Cert at the backend"
xfcc_tm=$(curl -fsS "http://$TM_OUT_ADDR/echo" | grep -i '^X-Forwarded-Client-Cert:') || die "trustmesh pair: no X-Forwarded-Client-Cert at the backend"
case $xfcc_tm in *"URI=$ID_FRONTEND"*) ;; *) die "trustmesh pair: unexpected $xfcc_tm" ;; esac
grep -q '"decision":"allow"' "$dir/tm-in-audit.log" || die "trustmesh inbound: no allow decision in its audit log"
code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "https://$NGINX_IN_ADDR/" || true)
[ "$code" = 400 ] || die "nginx inbound without a client certificate: HTTP $code, want 400"
if curl -sk -o /dev/null --max-time 5 "https://$TM_IN_ADDR/"; then die "trustmesh inbound accepted a client without a certificate"; fi
# Idle again after those few requests: what serving once faulted in
# (code and tables of the binary, shared with every process that runs it).
sleep 1
for n in "${PROXIES[@]}"; do SERVED[$n]=$(proxy_kib "$n" VmRSS); done

if [ "${HOLD:-0}" = 1 ]; then
  cat <<EOF
everything is up (HOLD=1); stop with Ctrl-C or kill $$
  direct     http://$BACKEND_ADDR/          backend pid $(pid_of backend)
  nginx      http://$NGINX_OUT_ADDR/        nginx-out pid $(pid_of nginx-out), nginx-in pid $(pid_of nginx-in)
  trustmesh  http://$TM_OUT_ADDR/        tm-out pid $(pid_of tm-out), tm-in pid $(pid_of tm-in)
  work dir   $dir
EOF
  while :; do sleep 1; done
fi

# --- Measure.
declare -A URL=([direct]="http://$BACKEND_ADDR/" [nginx]="http://$NGINX_OUT_ADDR/" [trustmesh]="http://$TM_OUT_ADDR/")
SETUPS=(direct nginx trustmesh)
if [ "$GO_FLOOR" = 1 ]; then
  URL[go-floor]="http://$FLOOR_OUT_ADDR/"
  SETUPS+=(go-floor)
fi
declare -A RPS P50 P99 BAD REQS CPU SYSC CSW OTHER

# The processes each setup's proxies run as (nginx: masters and workers).
setup_pids() {
  case $1 in
  direct) echo "$(pid_of backend)" ;;
  nginx) tree_pids "$(pid_of nginx-out)" && tree_pids "$(pid_of nginx-in)" ;;
  trustmesh) echo "$(pid_of tm-out)" && echo "$(pid_of tm-in)" ;;
  go-floor) echo "$(pid_of floor-out)" && echo "$(pid_of floor-in)" ;;
  esac
}
# cpu_ticks PID...: user + system clock ticks so far, all threads.
cpu_ticks() {
  local p sum=0 t
  for p in "$@"; do
    t=$(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')
    sum=$((sum + t))
  done
  echo "$sum"
}
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
# Every process this script runs (nginx with its workers), and the
# machine's busy ticks: what else ran during a measurement is the
# difference, reported so a noisy neighbour is visible in the results.
all_pids() {
  local n
  for n in "${NAMES[@]}"; do
    case $n in
    nginx-*) tree_pids "$(pid_of "$n")" ;;
    *) pid_of "$n" ;;
    esac
  done
}
busy_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# wait_quiet: up to QUIET_WAIT seconds for a second in which the machine is
# (nearly) idle, our processes being idle between measurements; a shared
# machine's builds and tests otherwise land in some measurements only.
wait_quiet() {
  local deadline=$((SECONDS + QUIET_WAIT)) b0 b1
  while :; do
    b0=$(busy_ticks)
    sleep 1
    b1=$(busy_ticks)
    [ $(((b1 - b0) * 100)) -gt $((5 * NCPU * CLK_TCK)) ] || return 0
    [ $SECONDS -lt $deadline ] || return 0
  done
}

# parse_wrk FILE → "rps p50_ms p99_ms bad requests" (bad: non-2xx responses
# + socket errors)
parse_wrk() {
  awk '
    function ms(v, n) {
      n = v + 0
      if (v ~ /us$/) return n / 1000
      if (v ~ /ms$/) return n
      if (v ~ /m$/) return n * 60000
      if (v ~ /s$/) return n * 1000
      return n
    }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    $1 == "Requests/sec:" { rps = $2 }
    $2 == "requests" && $3 == "in" { reqs = $1 }
    /Non-2xx or 3xx responses:/ { bad += $NF }
    /Socket errors:/ { for (i = 3; i <= NF; i++) { v = $i; gsub(/,/, "", v); if (v ~ /^[0-9]+$/) bad += v } }
    END { printf "%s %.3f %.3f %d %d\n", rps, p50, p99, bad, reqs }
  ' "$1"
}

truncate_logs() { : >"$dir/tm-in-audit.log" && : >"$dir/nginx-in/access.log"; }

profile_start() {
  local secs=$((DURATION > 3 ? DURATION - 2 : 1))
  curl -sf -o "$PROFILE_DIR/tm-out.cpu.pprof" "http://$PPROF_OUT_ADDR/debug/pprof/profile?seconds=$secs" &
  PROF_PIDS=($!)
  curl -sf -o "$PROFILE_DIR/tm-in.cpu.pprof" "http://$PPROF_IN_ADDR/debug/pprof/profile?seconds=$secs" &
  PROF_PIDS+=($!)
}

log "warming up (${WARMUP}s each)"
for s in "${SETUPS[@]}"; do
  wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "${URL[$s]}" >/dev/null
done
truncate_logs

for ((r = 1; r <= ROUNDS; r++)); do
  for ((k = 0; k < ${#SETUPS[@]}; k++)); do
    s=${SETUPS[$(((r - 1 + k) % ${#SETUPS[@]}))]}
    out=$dir/wrk.$s.$r.txt
    mapfile -t pids < <(setup_pids "$s")
    wait_quiet
    all_alive
    # The profile and perf windows start now, with wrk, not before
    # wait_quiet (which can take up to QUIET_WAIT seconds: a profile started
    # earlier could end before the load began, and come back empty).
    if [ "$PROFILE" = 1 ] && [ "$s" = trustmesh ] && [ "$r" = 1 ]; then
      (sleep 1 && profile_start && wait "${PROF_PIDS[@]}") &
      prof_job=$!
    fi
    if [ "$PERF" = 1 ]; then
      perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter -p "$(IFS=,; echo "${pids[*]}")" \
        -o "$dir/perf.$s.$r.txt" -- sleep "$DURATION" 2>/dev/null &
      perf_job=$!
    fi
    mapfile -t ours < <(all_pids)
    t0=$(cpu_ticks "${pids[@]}") a0=$(cpu_ticks "${ours[@]}") b0=$(busy_ticks) w0=$EPOCHREALTIME
    TIMEFORMAT='%3U %3S'
    { time wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "${URL[$s]}" >"$out"; } 2>"$out.time"
    t1=$(cpu_ticks "${pids[@]}") a1=$(cpu_ticks "${ours[@]}") b1=$(busy_ticks) w1=$EPOCHREALTIME
    OTHER[$s,$r]=$(awk -v b=$((b1 - b0)) -v a=$((a1 - a0)) -v hz="$CLK_TCK" -v w0="$w0" -v w1="$w1" -v n="$NCPU" \
      '{u = $1; sy = $2} END {other = (b - a) / hz - u - sy; if (other < 0) other = 0; printf "%.1f", 100 * other / (n * (w1 - w0))}' "$out.time")
    [ -n "${prof_job:-}" ] && { wait "$prof_job"; prof_job=""; }
    [ -n "${perf_job:-}" ] && { wait "$perf_job" || true; perf_job=""; }
    read -r RPS[$s,$r] P50[$s,$r] P99[$s,$r] BAD[$s,$r] REQS[$s,$r] < <(parse_wrk "$out")
    CPU[$s,$r]=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="${REQS[$s,$r]}" 'BEGIN {printf "%.1f", (n > 0) ? t / hz * 1e6 / n : 0}')
    if [ "$PERF" = 1 ]; then
      SYSC[$s,$r]=$(awk -F, -v n="${REQS[$s,$r]}" '$3 ~ /raw_syscalls:sys_enter/ {printf "%.2f", $1 / n}' "$dir/perf.$s.$r.txt")
      CSW[$s,$r]=$(awk -F, -v n="${REQS[$s,$r]}" '$3 ~ /context-switches/ {printf "%.2f", $1 / n}' "$dir/perf.$s.$r.txt")
    fi
    log "$(printf 'round %d/%d  %-10s %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms%s' "$r" "$ROUNDS" "$s" \
      "${RPS[$s,$r]}" "${P50[$s,$r]}" "${P99[$s,$r]}" "$([ "${BAD[$s,$r]}" = 0 ] || echo "  ${BAD[$s,$r]} errors/non-2xx!")")"
    truncate_logs
  done
done
for n in "${PROXIES[@]}"; do
  LOADED[$n]=$(proxy_kib "$n" VmRSS)
  PEAK[$n]=$(proxy_kib "$n" VmHWM)
done
for n in "${PROXIES[@]}"; do alive_or_die "$n"; done

# --- Report.
median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
declare -A M_RPS M_P50 M_P99 M_CPU M_SYSC M_CSW LO HI ERRS
vals() { # ARRAY SETUP: its values over the rounds
  local -n arr=$1
  local r
  for ((r = 1; r <= ROUNDS; r++)); do echo "${arr[$2,$r]:-}"; done
}
for s in "${SETUPS[@]}"; do
  M_RPS[$s]=$(vals RPS "$s" | median)
  M_P50[$s]=$(vals P50 "$s" | median)
  M_P99[$s]=$(vals P99 "$s" | median)
  M_CPU[$s]=$(vals CPU "$s" | median)
  if [ "$PERF" = 1 ]; then
    M_SYSC[$s]=$(vals SYSC "$s" | median)
    M_CSW[$s]=$(vals CSW "$s" | median)
  fi
  LO[$s]=$(vals RPS "$s" | awk 'NF' | sort -g | head -n 1)
  HI[$s]=$(vals RPS "$s" | awk 'NF' | sort -g | tail -n 1)
  ERRS[$s]=$(vals BAD "$s" | awk '{n += $1} END {print n + 0}')
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}'; }
label_of() {
  case $1 in
  direct) echo "direct (wrk -> backend)" ;;
  nginx) echo "nginx pair" ;;
  trustmesh) echo "trustmesh pair" ;;
  go-floor) echo "go-copy pair (reference)" ;;
  tm-out) echo "trustmesh outbound (1 process)" ;;
  tm-in) echo "trustmesh inbound (1 process)" ;;
  nginx-out) echo "nginx outbound (master + $NGINX_WORKERS workers)" ;;
  nginx-in) echo "nginx inbound (master + $NGINX_WORKERS workers)" ;;
  esac
}

cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo
echo "data plane benchmark: $(nproc) CPUs ($cpu), $(uname -r)"
echo "  wrk -t$THREADS -c$CONNS -d${DURATION}s --latency, $ROUNDS rounds interleaved (median shown), ${BODY}-byte responses from a Go HTTP/1.1 backend"
echo "  trustmesh: 2 processes, GOMAXPROCS=$TM_GOMAXPROCS each, $(go env GOVERSION); $(nginx -v 2>&1 | sed 's/^nginx version: //'): 2 instances, worker_processes $NGINX_WORKERS each"
echo "  inbound request logging on both (Trustmesh audit log, nginx access_log); mTLS TLS 1.3 with agent-issued X.509-SVIDs"
echo "  nginx verifies chains and the api's DNS SAN only; Trustmesh also matches SPIFFE IDs and evaluates policy per request"
echo "  at the backend: nginx $xfcc_nginx"
echo "                  trustmesh X-Forwarded-Client-Cert: By=…;Hash=…;${xfcc_tm##*;}"
[ "$PROFILE" = 1 ] && echo "  PROFILE=1: the Trustmesh proxies ran with net/http/pprof and were CPU-profiled in round 1"
echo
printf '%-24s %9s %12s %8s %8s %12s %8s %10s %13s %6s\n' setup "req/s" "(min-max)" "p50 ms" "p99 ms" "rps/nginx" "rps/direct" "p99/nginx" "CPU us/req*" errors
for s in "${SETUPS[@]}"; do
  printf '%-24s %9.0f %12s %8.3f %8.3f %12s %8s %10s %13.1f %6d\n' "$(label_of "$s")" "${M_RPS[$s]}" \
    "$(awk -v a="${LO[$s]}" -v b="${HI[$s]}" 'BEGIN {printf "%.1fk-%.1fk", a / 1000, b / 1000}')" \
    "${M_P50[$s]}" "${M_P99[$s]}" "$(ratio "${M_RPS[$s]}" "${M_RPS[nginx]}")" "$(ratio "${M_RPS[$s]}" "${M_RPS[direct]}")" \
    "$(ratio "${M_P99[$s]}" "${M_P99[nginx]}")" "${M_CPU[$s]}" "${ERRS[$s]}"
done
echo "  * CPU us/req: user+system CPU of the two proxies (both nginx instances incl. masters; both"
echo "    Trustmesh processes) per request; for direct, the backend's. wrk and the backend share the 2 CPUs."
[ "$GO_FLOOR" != 1 ] || echo "  go-copy pair: bench/floor, Go mTLS (crypto/tls) copying heads unparsed: no policy, no log, no identity headers"
if [ "$PERF" = 1 ]; then
  echo
  echo "per request, the pair's processes (perf stat, median over rounds):"
  for s in "${SETUPS[@]}"; do
    [ "$s" != direct ] || continue
    printf '  %-16s %6.1f syscalls  %5.2f context switches\n' "$s" "${M_SYSC[$s]}" "${M_CSW[$s]}"
  done
fi
echo
echo "per round (other load: CPU used by processes this script did not start, % of all CPUs):"
for ((r = 1; r <= ROUNDS; r++)); do
  for ((k = 0; k < ${#SETUPS[@]}; k++)); do
    s=${SETUPS[$(((r - 1 + k) % ${#SETUPS[@]}))]}
    printf '  round %d  %-10s %9.0f req/s  p50 %7.3f ms  p99 %7.3f ms  %6.1f CPU us/req  other load %4.1f%%\n' "$r" "$s" \
      "${RPS[$s,$r]}" "${P50[$s,$r]}" "${P99[$s,$r]}" "${CPU[$s,$r]}" "${OTHER[$s,$r]}"
  done
done
echo
printf '%-42s %10s %14s %12s %12s\n' "proxy memory (VmRSS, MiB)" idle "idle, served" "after load" "peak (HWM)"
for n in "${PROXIES[@]}"; do
  printf '%-42s %10s %14s %12s %12s\n' "$(label_of "$n")" "$(mib "${IDLE[$n]}")" "$(mib "${SERVED[$n]}")" "$(mib "${LOADED[$n]}")" "$(mib "${PEAK[$n]}")"
done
echo "  idle: started, no connection yet; idle, served: after the few check requests, idle again"
echo "  (nginx: the sum over its processes, so shared pages count once per process)"
echo
verdict() { if [ "$1" = 1 ]; then echo PASS; else echo FAIL; fi; }
thr_ok=$(awk -v a="${M_RPS[trustmesh]}" -v b="${M_RPS[nginx]}" 'BEGIN {print (a >= b) ? 1 : 0}')
p99_ok=$(awk -v a="${M_P99[trustmesh]}" -v b="${M_P99[nginx]}" 'BEGIN {print (a <= b) ? 1 : 0}')
rss_ok=$(awk -v a="${IDLE[tm-out]}" -v b="${IDLE[tm-in]}" 'BEGIN {print (a <= 20 * 1024 && b <= 20 * 1024) ? 1 : 0}')
served_ok=$(awk -v a="${SERVED[tm-out]}" -v b="${SERVED[tm-in]}" 'BEGIN {print (a <= 20 * 1024 && b <= 20 * 1024) ? 1 : 0}')
echo "targets:"
printf '  %-40s %-40s %s\n' "trustmesh pair req/s >= nginx pair:" "$(ratio "${M_RPS[trustmesh]}" "${M_RPS[nginx]}") x nginx" "$(verdict "$thr_ok")"
printf '  %-40s %-40s %s\n' "trustmesh pair p99 <= nginx pair p99:" "$(printf '%.3f ms vs %.3f ms' "${M_P99[trustmesh]}" "${M_P99[nginx]}")" "$(verdict "$p99_ok")"
printf '  %-40s %-40s %s\n' "idle proxy RSS <= 20 MiB:" "outbound $(mib "${IDLE[tm-out]}"), inbound $(mib "${IDLE[tm-in]}") MiB" "$(verdict "$rss_ok")"
printf '  %-40s %-40s %s\n' "  and once it has served:" "outbound $(mib "${SERVED[tm-out]}"), inbound $(mib "${SERVED[tm-in]}") MiB" "$(verdict "$served_ok")"
for s in "${SETUPS[@]}"; do
  [ "${ERRS[$s]}" = 0 ] || echo "  WARNING: $s had ${ERRS[$s]} socket errors or non-2xx responses: its numbers are not comparable"
done
noisy=$(for k in "${!OTHER[@]}"; do echo "${OTHER[$k]}"; done | awk '$1 > 5 {n++} END {print n + 0}')
[ "$noisy" = 0 ] || echo "  WARNING: other processes used > 5% of the CPUs during $noisy measurement(s): see 'other load' above"

jq -cn --argjson rounds "$ROUNDS" --argjson duration "$DURATION" --argjson conns "$CONNS" --argjson threads "$THREADS" \
  --argjson direct "$(printf '{"rps":%s,"p50_ms":%s,"p99_ms":%s,"cpu_us_per_req":%s}' "${M_RPS[direct]}" "${M_P50[direct]}" "${M_P99[direct]}" "${M_CPU[direct]}")" \
  --argjson nginx "$(printf '{"rps":%s,"p50_ms":%s,"p99_ms":%s,"cpu_us_per_req":%s}' "${M_RPS[nginx]}" "${M_P50[nginx]}" "${M_P99[nginx]}" "${M_CPU[nginx]}")" \
  --argjson trustmesh "$(printf '{"rps":%s,"p50_ms":%s,"p99_ms":%s,"cpu_us_per_req":%s}' "${M_RPS[trustmesh]}" "${M_P50[trustmesh]}" "${M_P99[trustmesh]}" "${M_CPU[trustmesh]}")" \
  --argjson rss "$(printf '{"tm_out_idle_kib":%s,"tm_in_idle_kib":%s,"tm_out_served_kib":%s,"tm_in_served_kib":%s,"tm_out_loaded_kib":%s,"tm_in_loaded_kib":%s,"nginx_out_idle_kib":%s,"nginx_in_idle_kib":%s,"nginx_out_loaded_kib":%s,"nginx_in_loaded_kib":%s}' \
    "${IDLE[tm-out]}" "${IDLE[tm-in]}" "${SERVED[tm-out]}" "${SERVED[tm-in]}" "${LOADED[tm-out]}" "${LOADED[tm-in]}" "${IDLE[nginx-out]}" "${IDLE[nginx-in]}" "${LOADED[nginx-out]}" "${LOADED[nginx-in]}")" \
  '{rounds: $rounds, duration_s: $duration, connections: $conns, threads: $threads, direct: $direct, nginx: $nginx, trustmesh: $trustmesh, rss: $rss}'

if [ "$PROFILE" = 1 ]; then
  echo
  for n in tm-out tm-in; do
    f=$PROFILE_DIR/$n.cpu.pprof
    [ -s "$f" ] || { echo "$n: no CPU profile"; continue; }
    cp "$tm" "$PROFILE_DIR/trustmesh"
    echo "--- $n CPU profile under load (top 25 by cumulative; $f)"
    go tool pprof -top -cum -nodecount=25 "$PROFILE_DIR/trustmesh" "$f" 2>/dev/null | sed -n '1,32p'
  done
  echo "profiles kept in $PROFILE_DIR (go tool pprof -http=: $PROFILE_DIR/trustmesh $PROFILE_DIR/tm-in.cpu.pprof)"
fi
