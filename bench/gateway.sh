#!/usr/bin/env bash
# Gateway benchmark: requests/s and latency through `trustmesh gateway run`
# (reverse-proxy mode, audit log on) with a valid session cookie and with a
# valid bearer JWT, next to the same load straight to the upstream, in one
# run on this machine, interleaved round by round.
#
#   bench/gateway.sh                          # 3 rounds of 10 s per setup
#   ROUNDS=5 DURATION=20 CONNS=128 bench/gateway.sh
#
# A real OIDC provider (mockoidc) issues the session (the helper signs in
# through the gateway's /oauth2/start like a browser) and the bearer token
# is signed with its key. Targets: gateway >= 0.5x direct throughput,
# added p99 <= 1 ms. When nginx is installed, a plain nginx reverse proxy
# (no authentication at all, keep-alive upstream, access log on) runs in
# the same rounds as a reference: what one proxy hop costs on this machine.
#
# Environment: ROUNDS (3), DURATION seconds (10), WARMUP seconds (2),
# THREADS (2), CONNS (32), BASE_PORT (18600; uses BASE_PORT..+7), KEEP=1
# keeps the work directory. PROFILE=DIR runs the gateway from a bench-only
# wrapper with net/http/pprof on BASE_PORT+4 (the product has no pprof
# endpoint) and, after the rounds, writes DIR/session.pprof and
# DIR/bearer.pprof: CPU profiles of one more DURATION run of each
# (`go tool pprof -top DIR/session.pprof`). PERF=1 also counts, with
# `perf stat`, the system calls and context switches per request of the
# proxying processes (the gateway; nginx's master and workers): where the
# two do as many system calls, the rest of the difference in CPU per
# request is user space. GO_FLOOR=1 adds two more references, bench/floor's
# Go proxies with no authentication and no log (BASE_PORT+6, +7): "go-copy"
# copies the request head and a Content-Length response without parsing
# them into anything (the least any Go proxy does per request), "go-parse"
# does the same through net/http's parser and framing (http.ReadRequest,
# Request.Write, http.ReadResponse, Response.Write, as the proxy's HTTP/1.1
# loop does). Between the two lies what HTTP parsing costs in Go here.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
BASE_PORT=${BASE_PORT:-18600}
KEEP=${KEEP:-0}
PROFILE=${PROFILE:-}
PERF=${PERF:-0}
GO_FLOOR=${GO_FLOOR:-0}
PPROF_ADDR=127.0.0.1:$((BASE_PORT + 4))
IDP_ADDR=127.0.0.1:$((BASE_PORT + 1))
BACKEND_ADDR=127.0.0.1:$((BASE_PORT + 2))
GW_ADDR=127.0.0.1:$((BASE_PORT + 3))
NGINX_ADDR=127.0.0.1:$((BASE_PORT + 5))
COPY_ADDR=127.0.0.1:$((BASE_PORT + 6))
PARSE_ADDR=127.0.0.1:$((BASE_PORT + 7))
NGINX=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)

command -v wrk >/dev/null || { echo "gateway bench: wrk is required (apt-get install wrk)" >&2; exit 1; }
[ "$PERF" != 1 ] || command -v perf >/dev/null || { echo "gateway bench: PERF=1 needs perf (apt-get install linux-perf)" >&2; exit 1; }
work=$(mktemp -d)
helper_dir=$(mktemp -d -p bench .gateway-helper-XXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$helper_dir"
  if [ "$KEEP" = 1 ]; then echo "work directory: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# The helper: the IdP, the upstream, and the credentials (in the repo's
# module for mockoidc; removed on exit).
cat >"$helper_dir/main.go" <<'GO'
package main

import (
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/oauth2-proxy/mockoidc"
)

func main() {
	idpAddr, backendAddr, gwURL, out := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	m, _ := mockoidc.NewServer(key)
	m.ClientID, m.ClientSecret = "bench-client", "bench-secret"
	m.AccessTTL, m.RefreshTTL = 12*time.Hour, 24*time.Hour
	ln, err := net.Listen("tcp", idpAddr)
	if err != nil {
		panic(err)
	}
	if err := m.Start(ln, nil); err != nil {
		panic(err)
	}
	body := strings.Repeat("x", 128)
	bln, err := net.Listen("tcp", backendAddr)
	if err != nil {
		panic(err)
	}
	go http.Serve(bln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
	os.WriteFile(out+".idp", []byte(m.Issuer()+"\n"), 0o600)
	// Wait for the gateway, then sign in like a browser.
	for i := 0; ; i++ {
		if resp, err := http.Get(gwURL + "/ping"); err == nil {
			resp.Body.Close()
			break
		}
		if i > 600 {
			panic("gateway not up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err := c.Get(gwURL + "/oauth2/start?rd=/")
	if err != nil || resp.StatusCode != 200 {
		panic(fmt.Sprintf("login: %v %v", err, resp))
	}
	resp.Body.Close()
	cookie := ""
	for _, ck := range resp.Request.Response.Cookies() {
		if ck.Name == "_trustmesh_session" {
			cookie = ck.Value
		}
	}
	if cookie == "" {
		for _, ck := range jar.Cookies(resp.Request.URL) {
			if ck.Name == "_trustmesh_session" {
				cookie = ck.Value
			}
		}
	}
	kid, _ := m.Keypair.KeyID()
	s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	now := time.Now()
	tok, _ := jwt.Signed(s).Claims(map[string]any{"iss": m.Issuer(), "sub": "bench-api", "aud": "bench-api",
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(), "groups": []string{"engineering"}}).Serialize()
	os.WriteFile(out, []byte(cookie+"\n"+tok+"\n"), 0o600)
	select {}
}
GO

# The profiling wrapper: `gateway run` with pprof on PPROF_ADDR.
if [ -n "$PROFILE" ]; then
  mkdir -p "$helper_dir/prof" "$PROFILE"
  PROFILE=$(cd "$PROFILE" && pwd)
  cat >"$helper_dir/prof/main.go" <<'GO'
package main

import (
	"context"
	"log/slog"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"syscall"

	"github.com/trustmesh/trustmesh/internal/gateway"
	"github.com/trustmesh/trustmesh/internal/gctune"
)

func main() {
	pprofAddr, config := os.Args[1], os.Args[2]
	go func() { panic(http.ListenAndServe(pprofAddr, nil)) }()
	set, err := gateway.LoadSettings(config, nil)
	if err != nil {
		panic(err)
	}
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(set.LogLevel))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	gctune.Start(ctx, 32<<20) // as `gateway run` (gatewayGCHeadroom in internal/cli)
	if err := gateway.New(set, log, gateway.Options{}).Run(ctx); err != nil {
		panic(err)
	}
}
GO
fi

echo "building" >&2
go build -o "$work/trustmesh" ./cmd/trustmesh
go build -o "$work/helper" "./$helper_dir"
[ -z "$PROFILE" ] || go build -o "$work/gateway-prof" "./$helper_dir/prof"
[ "$GO_FLOOR" != 1 ] || go build -o "$work/floor" ./bench/floor
"$work/helper" "$IDP_ADDR" "$BACKEND_ADDR" "http://$GW_ADDR" "$work/creds" >"$work/helper.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do [ -s "$work/creds.idp" ] && break; sleep 0.05; done
[ -s "$work/creds.idp" ] || { cat "$work/helper.log" >&2; exit 1; }
cat >"$work/gateway.yaml" <<YAML
listen: $GW_ADDR
external_url: http://$GW_ADDR
identity_providers:
  - {name: corp, issuer: "$(cat "$work/creds.idp")", client_id: bench-client, client_secret: bench-secret, scopes: [openid, profile, email, groups]}
bearer_tokens:
  - {issuer: "$(cat "$work/creds.idp")", audiences: [bench-api]}
session: {store: memory, idle_timeout: 1h, max_lifetime: 12h}
routes:
  - {name: app, upstream: "http://$BACKEND_ADDR", identity_provider: corp, allow: {groups: [engineering]}}
audit_log: $work/audit.log
log_level: warn
YAML
if [ -n "$PROFILE" ]; then
  "$work/gateway-prof" "$PPROF_ADDR" "$work/gateway.yaml" >"$work/gateway.log" 2>&1 &
else
  "$work/trustmesh" gateway run --config "$work/gateway.yaml" >"$work/gateway.log" 2>&1 &
fi
pids+=($!)
GW_PID=$!
for _ in $(seq 1 400); do [ -s "$work/creds" ] && break; sleep 0.05; done
[ -s "$work/creds" ] || { cat "$work/helper.log" "$work/gateway.log" >&2; exit 1; }
COOKIE=$(sed -n 1p "$work/creds")
TOKEN=$(sed -n 2p "$work/creds")
[ -n "$COOKIE" ] && [ -n "$TOKEN" ] || { echo "no credentials" >&2; exit 1; }
curl -fsS -o /dev/null -H "Cookie: _trustmesh_session=$COOKIE" "http://$GW_ADDR/" || { echo "session request failed" >&2; exit 1; }
curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" "http://$GW_ADDR/" || { echo "bearer request failed" >&2; exit 1; }

# CPU time (user + system, clock ticks) so far of the processes that do a
# setup's proxying: the gateway's; nginx's master and workers.
NGINX_PIDS=()
COPY_PID=0
PARSE_PID=0
ticks() { # setup name
  case $1 in
    session | bearer) awk '{print $14 + $15}' "/proc/$GW_PID/stat" ;;
    nginx) cat $(printf '/proc/%s/stat ' "${NGINX_PIDS[@]}") | awk '{t += $14 + $15} END {print t}' ;;
    go-copy) awk '{print $14 + $15}' "/proc/$COPY_PID/stat" ;;
    go-parse) awk '{print $14 + $15}' "/proc/$PARSE_PID/stat" ;;
    *) echo 0 ;;
  esac
}
proxy_pids() { # setup name: the proxying processes, comma-separated
  case $1 in
    session | bearer) echo "$GW_PID" ;;
    nginx) (IFS=,; echo "${NGINX_PIDS[*]}") ;;
    go-copy) echo "$COPY_PID" ;;
    go-parse) echo "$PARSE_PID" ;;
  esac
}
TICK=$(getconf CLK_TCK)
# wrk prints Requests/sec and, with --latency, the 99% line. Also printed:
# the proxying processes' CPU time per request in microseconds (the
# gateway's; nginx's master and workers; 0 for direct), which varies less
# than requests/s on a shared machine.
measure() { # name duration args...
  local name=$1 d=$2; shift 2
  local out t0 t1 perf_out="" perf_job=""
  if [ "$PERF" = 1 ] && [ "$name" != direct ]; then
    perf_out=$work/perf.$name.$RANDOM
    perf stat -x, -e context-switches,raw_syscalls:sys_enter -p "$(proxy_pids "$name")" -o "$perf_out" -- sleep "$d" 2>/dev/null &
    perf_job=$!
  fi
  t0=$(ticks "$name")
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"${d}s" --latency "$@")
  t1=$(ticks "$name")
  local rps p99 n cpu sysc=0 csw=0
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu=0
  [ "$name" = direct ] || cpu=$(awk -v a="$t0" -v b="$t1" -v n="$n" -v hz="$TICK" 'BEGIN {printf "%.1f", (b - a) / hz * 1e6 / n}')
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  local errs
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
  [ -z "$errs" ] || echo "  $name: $errs" >&2
  if [ -n "$perf_job" ]; then
    wait "$perf_job" || true
    sysc=$(awk -F, -v n="$n" '$3 ~ /raw_syscalls:sys_enter/ {printf "%.2f", $1 / n}' "$perf_out")
    csw=$(awk -F, -v n="$n" '$3 ~ /context-switches/ {printf "%.2f", $1 / n}' "$perf_out")
  fi
  echo "$name $rps $p99 $cpu ${sysc:-0} ${csw:-0}"
}
if [ -n "$NGINX" ]; then
  mkdir -p "$work/nginx"
  cat >"$work/nginx.conf" <<NGINX
worker_processes 2;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log $work/nginx/access.log;
  client_body_temp_path $work/nginx/body; proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi; uwsgi_temp_path $work/nginx/uwsgi; scgi_temp_path $work/nginx/scgi;
  upstream backend { server $BACKEND_ADDR; keepalive 64; }
  server {
    listen $NGINX_ADDR;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
  "$NGINX" -p "$work/nginx" -c "$work/nginx.conf" 2>"$work/nginx/stderr" &
  pids+=($!)
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://$NGINX_ADDR/" 2>/dev/null && break; sleep 0.05; done
  curl -fsS -o /dev/null "http://$NGINX_ADDR/" || { cat "$work/nginx/stderr" "$work/nginx/error.log" >&2; exit 1; }
  NGINX_PIDS=("${pids[-1]}" $(pgrep -P "${pids[-1]}"))
fi
if [ "$GO_FLOOR" = 1 ]; then
  "$work/floor" -listen "$COPY_ADDR" -upstream "$BACKEND_ADDR" >"$work/go-copy.log" 2>&1 &
  pids+=($!)
  COPY_PID=$!
  "$work/floor" -listen "$PARSE_ADDR" -upstream "$BACKEND_ADDR" -parse >"$work/go-parse.log" 2>&1 &
  pids+=($!)
  PARSE_PID=$!
  for a in "$COPY_ADDR" "$PARSE_ADDR"; do
    for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://$a/" 2>/dev/null && break; sleep 0.05; done
    curl -fsS -o /dev/null "http://$a/" || { cat "$work"/go-*.log >&2; exit 1; }
  done
fi
direct=(http://$BACKEND_ADDR/)
ngx=(http://$NGINX_ADDR/)
gocopy=(http://$COPY_ADDR/)
goparse=(http://$PARSE_ADDR/)
sess=(-H "Cookie: _trustmesh_session=$COOKIE" http://$GW_ADDR/)
bear=(-H "Authorization: Bearer $TOKEN" http://$GW_ADDR/)

echo "warming up" >&2
measure direct "$WARMUP" "${direct[@]}" >/dev/null
measure session "$WARMUP" "${sess[@]}" >/dev/null
measure bearer "$WARMUP" "${bear[@]}" >/dev/null
setups=(direct session bearer)
if [ -n "$NGINX" ]; then
  measure nginx "$WARMUP" "${ngx[@]}" >/dev/null
  setups+=(nginx)
fi
if [ "$GO_FLOOR" = 1 ]; then
  measure go-copy "$WARMUP" "${gocopy[@]}" >/dev/null
  measure go-parse "$WARMUP" "${goparse[@]}" >/dev/null
  setups+=(go-copy go-parse)
fi
results=$work/results
: >"$results"
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  for i in "${!setups[@]}"; do
    s=${setups[$(((i + r) % ${#setups[@]}))]}
    case $s in
      direct) measure direct "$DURATION" "${direct[@]}" >>"$results" ;;
      session) measure session "$DURATION" "${sess[@]}" >>"$results" ;;
      bearer) measure bearer "$DURATION" "${bear[@]}" >>"$results" ;;
      nginx) measure nginx "$DURATION" "${ngx[@]}" >>"$results" ;;
      go-copy) measure go-copy "$DURATION" "${gocopy[@]}" >>"$results" ;;
      go-parse) measure go-parse "$DURATION" "${goparse[@]}" >>"$results" ;;
    esac
  done
done
if [ -n "$PROFILE" ]; then
  for s in session bearer; do
    echo "profiling $s" >&2
    curl -fsS -o "$PROFILE/$s.pprof" "http://$PPROF_ADDR/debug/pprof/profile?seconds=$DURATION" &
    cp=$!
    case $s in
      session) measure session "$DURATION" "${sess[@]}" >/dev/null ;;
      bearer) measure bearer "$DURATION" "${bear[@]}" >/dev/null ;;
    esac
    wait "$cp"
  done
  echo "profiles: $PROFILE/session.pprof $PROFILE/bearer.pprof (the figures below are from the profiling wrapper)" >&2
fi
echo
echo "wrk -t$THREADS -c$CONNS, $ROUNDS rounds of ${DURATION}s, medians:"
awk '
{ rps[$1, ++n[$1]] = $2; p99[$1, n[$1]] = $3; cpu[$1, n[$1]] = $4; sysc[$1, n[$1]] = $5; csw[$1, n[$1]] = $6 }
function median(arr, name, k,   i, j, t, v) {
  for (i = 1; i <= k; i++) v[i] = arr[name, i]
  for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
  return (k % 2) ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
}
END {
  dr = median(rps, "direct", n["direct"]); dp = median(p99, "direct", n["direct"])
  printf "%-10s %12s %10s %10s %12s %14s\n", "setup", "requests/s", "p99 ms", "x direct", "added p99", "proxy CPU us/req"
  printf "%-10s %12.0f %10.2f %10s %12s %14s\n", "direct", dr, dp, "1.00", "-", "-"
  split("session bearer", names, " ")
  for (i = 1; i <= 2; i++) {
    s = names[i]; r = median(rps, s, n[s]); p = median(p99, s, n[s]); c = median(cpu, s, n[s])
    printf "%-10s %12.0f %10.2f %10.2f %9.2f ms %14.1f\n", s, r, p, r / dr, p - dp, c
  }
  if (n["nginx"] > 0) {
    r = median(rps, "nginx", n["nginx"]); p = median(p99, "nginx", n["nginx"]); c = median(cpu, "nginx", n["nginx"])
    printf "%-10s %12.0f %10.2f %10.2f %9.2f ms %14.1f   (reference: plain nginx reverse proxy, no auth)\n", "nginx", r, p, r / dr, p - dp, c
  }
  split("go-copy go-parse", refs, " ")
  what["go-copy"] = "(reference: Go, copies heads unparsed, no auth, no log)"
  what["go-parse"] = "(reference: Go, net/http parsing and framing, no auth, no log)"
  for (i = 1; i <= 2; i++) if (n[refs[i]] > 0) {
    s = refs[i]; r = median(rps, s, n[s]); p = median(p99, s, n[s]); c = median(cpu, s, n[s])
    printf "%-10s %12.0f %10.2f %10.2f %9.2f ms %14.1f   %s\n", s, r, p, r / dr, p - dp, c, what[s]
  }
  if (perf) {
    printf "\nper request, the proxying processes (perf stat, medians):\n"
    split("session bearer nginx go-copy go-parse", all, " ")
    for (i = 1; i <= 5; i++) if (n[all[i]] > 0)
      printf "  %-8s %6.1f syscalls  %5.2f context switches  %6.1f CPU us\n", all[i], median(sysc, all[i], n[all[i]]), median(csw, all[i], n[all[i]]), median(cpu, all[i], n[all[i]])
  }
  printf "\nTargets: >= 0.50x direct throughput, added p99 <= 1 ms.\n"
}' perf="$([ "$PERF" = 1 ] && echo 1 || echo 0)" "$results"
