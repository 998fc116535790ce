#!/usr/bin/env bash
# Scale-out benchmark: a PostgreSQL-backed `weir-control serve`, then
#   1. throughput of 1 and then 2 managed gateway nodes behind HAProxy (TCP mode), each node
#      pinned to its own CPU, driven by wrk through HAProxy to an nginx upstream;
#   2. a fleet of 500 simulated nodes (tests/bench/fleet_sim.rs) long-polling bundles,
#      reporting status and exporting OTLP at production intervals against that control
#      plane, with promotions timed until every node holds them.
# Everything listens on 127.0.0.1 and stops by itself. Prints a table and writes it to
# tests/bench/results-scale-out.md (git-ignored).
#
#   tests/bench/scale-out.sh                   # 10 s per throughput run, 500 nodes, 60 s steady
#   DURATION=30 NODES=1000 tests/bench/scale-out.sh
#
# Environment: DURATION (s, per throughput run), CONNECTIONS (wrk, default 128), NODES
# (simulated, default 500), STEADY (s of simulated fleet, default 60), POSTGRES_URL
# (server to create the benchmark database on; default postgres://postgres@127.0.0.1:5432),
# KEEP_TMP=1 keeps logs and configs.
set -Eeuo pipefail
trap 'echo "scale-out.sh: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-128}
NODES=${NODES:-500}
STEADY=${STEADY:-60}
POSTGRES_URL=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RESULTS_MD=$ROOT/tests/bench/results-scale-out.md

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------
# Tools and binaries
# ---------------------------------------------------------------------------------------
missing=()
for tool in haproxy wrk curl psql taskset python3; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || missing+=("$tool")
done
NGINX=$(command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true)
[[ -n $NGINX ]] || missing+=(nginx)
if ((${#missing[@]} > 0)); then
    log "missing: ${missing[*]}"
    [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null || die "install them first (Debian: haproxy nginx-light wrk curl postgresql-client util-linux python3)"
    pkgs=()
    for m in "${missing[@]}"; do
        case $m in nginx) pkgs+=(nginx-light) ;; psql) pkgs+=(postgresql-client) ;; taskset) pkgs+=(util-linux) ;; *) pkgs+=("$m") ;; esac
    done
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null; } ||
        die "could not install ${pkgs[*]}"
    NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
fi
HAPROXY=$(command -v haproxy 2>/dev/null || echo /usr/sbin/haproxy)

log "building weir, weir-control and weir-fleet-sim (release)..."
(cd "$ROOT" && cargo build --release -q --locked --bins) || die "cargo build failed"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
[[ $BIN = /* ]] || BIN=$ROOT/$BIN

read -ra CPUS <<<"$(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
((${#CPUS[@]} >= 2)) || die "needs 2 CPUs to pin one node per CPU (found ${#CPUS[@]})"
CPU_A=${CPUS[0]} CPU_B=${CPUS[1]}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# ---------------------------------------------------------------------------------------
# Processes, ports, cleanup
# ---------------------------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/weir-scale-out.XXXXXX")
PIDS=()
DB=weir_scaleout_$$
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    psql -q "$POSTGRES_URL/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_bg() { # VAR LOG CMD...
    local var=$1 logfile=$2
    shift 2
    "$@" >"$logfile" 2>&1 &
    PIDS+=($!)
    printf -v "$var" '%s' "$!"
}
stop() { # PID
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ok() { # URL SECONDS
    local deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true) == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}
ticks() { # PIDS...: CPU ticks (user + system) used so far
    local t=0 p v
    for p in "$@"; do
        v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        t=$((t + v))
    done
    echo "$t"
}
HZ=$(getconf CLK_TCK)
rss_mb() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

# ---------------------------------------------------------------------------------------
# Control plane on PostgreSQL
# ---------------------------------------------------------------------------------------
psql -q "$POSTGRES_URL/postgres" -c "CREATE DATABASE $DB" >/dev/null || die "cannot create a database on $POSTGRES_URL"
export WEIR_DATABASE_URL=$POSTGRES_URL/$DB WEIR_LOG=warn
"$BIN/weir-control" keys init --signing-key "$TMP/signing.key" >/dev/null
"$BIN/weir-control" migrate >/dev/null
ADMIN=$("$BIN/weir-control" tokens create --name bench --role admin)
echo "$ADMIN" >"$TMP/admin-token"
CONTROL_PORT=$(free_port)
CONTROL=http://127.0.0.1:$CONTROL_PORT
start_bg CONTROL_PID "$TMP/control.log" "$BIN/weir-control" serve \
    --listen "127.0.0.1:$CONTROL_PORT" --signing-key "$TMP/signing.key"
wait_ok "$CONTROL/api/v1/ready" 20 || die "control plane did not start: $(tail -5 "$TMP/control.log")"
api() { # METHOD PATH [JSON]
    curl -sS --fail-with-body -X "$1" -H "Authorization: Bearer $ADMIN" -H 'content-type: application/json' \
        ${3:+--data "$3"} "$CONTROL/api/v1$2"
}

# Upstream: nginx, one worker, a 500-byte JSON document from memory.
UPSTREAM_PORT=$(free_port)
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        default_type application/json;
        location = /user { return 200 '{"id":48213,"username":"jdoe","email":"jane.doe@example.com","first_name":"Jane","last_name":"Doe","locale":"en-US","timezone":"America/New_York","status":"active","email_verified":true,"created_at":"2021-03-14T09:26:53Z","login_count":1287,"plan":"premium","avatar_url":"https://cdn.example.com/avatars/48213.png","bio":"Backend engineer, coffee drinker and occasional cyclist."}'; }
    }
}
EOF
start_bg NGINX_PID "$TMP/nginx.log" "$NGINX" -c "$TMP/nginx/nginx.conf" -g 'daemon off;'
wait_ok "http://127.0.0.1:$UPSTREAM_PORT/user" 10 || die "nginx did not start"

# The gateway config, twice (the promotions alternate between them).
config() { # TIMEOUT
    printf '{"version":3,"timeout":"%s","endpoints":[{"endpoint":"/user","backend":[{"host":["http://127.0.0.1:%s"],"url_pattern":"/user"}]}]}' "$1" "$UPSTREAM_PORT"
}
api POST /gateways '{"name":"shop"}' >/dev/null
api POST /gateways/shop/environments '{"name":"prod"}' >/dev/null
api POST '/gateways/shop/versions?message=v1' "$(config 3s)" >/dev/null
api POST '/gateways/shop/versions?message=v2' "$(config 4s)" >/dev/null
api POST /gateways/shop/environments/prod/promote '{"version":1}' >/dev/null
api POST /gateways/shop/environments/prod/node-tokens '{"name":"bench"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' >"$TMP/node-token"
cp "$TMP/signing.pub" "$TMP/trust.pub"

# ---------------------------------------------------------------------------------------
# 1. Throughput: 1 node, then 2 nodes, behind HAProxy
# ---------------------------------------------------------------------------------------
start_node() { # VAR CPU NAME -> pid in VAR, port in ${VAR}_PORT
    local port
    port=$(free_port)
    start_bg "$1" "$TMP/node-$3.log" taskset -c "$2" "$BIN/weir" run --workers 1 \
        --control "$CONTROL" --gateway shop --env prod --token-file "$TMP/node-token" --trust "$TMP/trust.pub" \
        --cache-dir "$TMP/cache-$3" --node-id "$3" -p "$port"
    printf -v "${1}_PORT" '%s' "$port"
    wait_ok "http://127.0.0.1:$port/user" 20 || die "node $3 did not start: $(tail -5 "$TMP/node-$3.log")"
}
start_node NODE_A "$CPU_A" node-a
start_node NODE_B "$CPU_B" node-b

LB_PORT=$(free_port)
haproxy_run() { # PORTS... -> HAPROXY_PID
    {
        printf 'global\n    nbthread 2\n    maxconn 4000\n    log stderr format short local0 warning\n'
        printf 'defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n'
        printf 'frontend gateways\n    bind 127.0.0.1:%s\n    default_backend nodes\n' "$LB_PORT"
        printf 'backend nodes\n    balance roundrobin\n'
        local p i=0
        for p in "$@"; do
            i=$((i + 1))
            printf '    server node%s 127.0.0.1:%s\n' "$i" "$p"
        done
    } >"$TMP/haproxy.cfg"
    "$HAPROXY" -c -q -f "$TMP/haproxy.cfg" || die "invalid HAProxy config"
    start_bg HAPROXY_PID "$TMP/haproxy.log" "$HAPROXY" -db -f "$TMP/haproxy.cfg"
    wait_ok "http://127.0.0.1:$LB_PORT/user" 10 || die "HAProxy did not start"
}

# run_load LABEL NODES_PIDS... : wrk through HAProxy; prints "rps p99 gateway_cpu other_cpu"
run_load() {
    local label=$1
    shift
    local pin=()
    # One node: the load generator, HAProxy and the upstream stay off the node's CPU.
    (($# == 1)) && pin=(taskset -c "$CPU_B")
    wrk -t2 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$LB_PORT/user" >/dev/null 2>&1 # warm-up
    local g0 o0 t0 g1 o1 t1
    g0=$(ticks "$@") o0=$(ticks "$HAPROXY_PID" "$NGINX_PID" $(pgrep -P "$NGINX_PID" || true)) t0=$(date +%s.%N)
    "${pin[@]}" wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$LB_PORT/user" >"$TMP/wrk-$label.txt"
    g1=$(ticks "$@") o1=$(ticks "$HAPROXY_PID" "$NGINX_PID" $(pgrep -P "$NGINX_PID" || true)) t1=$(date +%s.%N)
    local rps p99 non2xx errors
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$TMP/wrk-$label.txt")
    p99=$(awk '$1 == "99%" {print $2}' "$TMP/wrk-$label.txt")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$TMP/wrk-$label.txt")
    errors=$(awk '/Socket errors/ {print}' "$TMP/wrk-$label.txt")
    [[ -z $non2xx && -z $errors ]] || log "warning: $label: non-2xx ${non2xx:-0}; ${errors:-no socket errors}"
    awk -v rps="$rps" -v p99="$p99" -v g="$((g1 - g0))" -v o="$((o1 - o0))" -v hz="$HZ" -v t0="$t0" -v t1="$t1" \
        'BEGIN { w = t1 - t0; printf "%s %s %.2f %.2f\n", rps, p99, g / hz / w, o / hz / w }'
}

log "throughput: 1 node (CPU $CPU_A), then 2 nodes (CPUs $CPU_A and $CPU_B), ${DURATION}s each, $CONNECTIONS connections"
haproxy_run "$NODE_A_PORT"
read -r RPS1 P99_1 GCPU1 OCPU1 <<<"$(run_load one "$NODE_A")"
stop "$HAPROXY_PID"
haproxy_run "$NODE_A_PORT" "$NODE_B_PORT"
read -r RPS2 P99_2 GCPU2 OCPU2 <<<"$(run_load two "$NODE_A" "$NODE_B")"
stop "$HAPROXY_PID"
RSS_A=$(rss_mb "$NODE_A")

# ---------------------------------------------------------------------------------------
# 2. A simulated fleet against the same control plane
# ---------------------------------------------------------------------------------------
log "fleet: $NODES simulated nodes, ${STEADY}s steady, 5 promotions"
stop "$NODE_A"
stop "$NODE_B"
db_bytes() { psql -qtA "$POSTGRES_URL/postgres" -c "SELECT pg_database_size('$DB')"; }
DB0=$(db_bytes)
c0=$(ticks "$CONTROL_PID") t0=$(date +%s.%N)
"$BIN/weir-fleet-sim" --control "$CONTROL" --gateway shop --env prod --node-token-file "$TMP/node-token" \
    --admin-token-file "$TMP/admin-token" --nodes "$NODES" --ramp 10s --steady "${STEADY}s" \
    --promote 2,1,2,1,2 >"$TMP/fleet.json" 2>"$TMP/fleet.log" || die "fleet simulation failed: $(tail -5 "$TMP/fleet.log")"
c1=$(ticks "$CONTROL_PID") t1=$(date +%s.%N)
CONTROL_CPU=$(awk -v c="$((c1 - c0))" -v hz="$HZ" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", 100 * c / hz / (b - a) }')
CONTROL_RSS=$(awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$CONTROL_PID/status")
# Database growth while the fleet ran, per day (metric rollups and node reports).
DB_PER_DAY=$(awk -v a="$DB0" -v b="$(db_bytes)" -v s="$t0" -v e="$t1" 'BEGIN { printf "%.0f", (b - a) / (e - s) * 86400 / 1048576 }')

# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
python3 - "$TMP/fleet.json" "$RESULTS_MD" <<PY
import json, sys
f = json.load(open(sys.argv[1]))
rps1, rps2 = float("$RPS1"), float("$RPS2")
g1, g2 = float("$GCPU1"), float("$GCPU2")
per_core1, per_core2 = rps1 / max(g1, 1e-9), rps2 / max(g2, 1e-9)
promos = f["promotions"]
alls = sorted(p["all_nodes_ms"] for p in promos if p["all_nodes_ms"] is not None)
lines = [
    "# Scale-out benchmark",
    "",
    "## Throughput behind HAProxy (TCP mode), nodes pinned one per CPU",
    "",
    "| nodes | requests/s | p99 | gateway CPUs used | HAProxy + nginx CPUs | requests/s per gateway CPU |",
    "|---|---|---|---|---|---|",
    f"| 1 | {rps1:,.0f} | $P99_1 | {g1:.2f} | $OCPU1 | {per_core1:,.0f} |",
    f"| 2 | {rps2:,.0f} | $P99_2 | {g2:.2f} | $OCPU2 | {per_core2:,.0f} |",
    "",
    f"Raw ratio 2 nodes / 1 node: **{rps2 / rps1:.2f}x**. Per gateway CPU: **{per_core2 / per_core1:.2f}x** "
    f"(1.00 = no loss from adding a node). The machine has $((${#CPUS[@]})) CPUs: with two nodes, wrk, HAProxy "
    f"and nginx run on the nodes' CPUs, so the raw ratio is capped by the load generator; the per-CPU figure "
    f"is what a second dedicated core would add. Node RSS after the runs: $RSS_A MB.",
    "",
    f"## {f['nodes']} simulated nodes against one control plane (PostgreSQL)",
    "",
    f"- Steady state {f['steady_s']:.0f} s after a {f['booted_s']:.1f} s rolling start; control plane CPU **$CONTROL_CPU %** "
    f"of one core over the whole run (start, steady state, promotions), peak RSS $CONTROL_RSS MB; "
    f"{f['otlp_export']['count'] / (f['steady_s'] + f['booted_s']):.0f} OTLP exports/s of 20 routes each; "
    f"the database grew at a rate of $DB_PER_DAY MB/day (the first hour's minute rollups, before any roll-up).",
    f"- Boot bundle fetch: p50 {f['boot_fetch']['p50_ms']:.1f} ms, **p95 {f['boot_fetch']['p95_ms']:.1f} ms**, "
    f"p99 {f['boot_fetch']['p99_ms']:.1f} ms ({f['boot_fetch']['count']} fetches, {f['boot_fetch']['failed']} failed).",
    f"- Status reports: p95 {f['status']['p95_ms']:.1f} ms ({f['status']['count']}, {f['status']['failed']} failed); "
    f"OTLP exports: p95 {f['otlp_export']['p95_ms']:.1f} ms ({f['otlp_export']['count']}, {f['otlp_export']['failed']} failed); "
    f"long polls ended without news: {f['long_poll']['count']} ({f['long_poll']['failed']} failed).",
    f"- Promotion → all {f['nodes']} nodes hold the new serial: "
    + ", ".join(f"{p['all_nodes_ms']} ms" if p["all_nodes_ms"] is not None else f"only {p['nodes_updated']} nodes" for p in promos)
    + (f" (median {alls[len(alls) // 2]} ms, worst {alls[-1]} ms)." if alls else "."),
    f"- Per node, promotion → that node updated: p50 {sorted(p['p50_ms'] for p in promos)[len(promos) // 2]} ms, "
    f"p95 {max(p['p95_ms'] for p in promos)} ms (worst promotion).",
]
text = "\n".join(lines) + "\n"
open(sys.argv[2], "w").write(text)
print(text)
PY
