#!/usr/bin/env bash
# Load benchmark: weir against nginx as a reverse proxy, side by side in one run, on this
# machine. Prints a table and writes it to tests/bench/results.md (git-ignored).
#
#   tests/bench/run.sh                      # defaults: 5 s per scenario, 64 connections
#   PGO=1 tests/bench/run.sh                # weir built with profile-guided optimisation
#   DURATION=10 ROUNDS=5 tests/bench/run.sh # longer runs
#   WEIR_BIN=/path/to/weir tests/bench/run.sh
#   OTHER_GATEWAY_CMD='./my-krakend.sh {port} {upstream}' tests/bench/run.sh
#
# Environment:
#   DURATION            seconds per measurement (default 5)
#   ROUNDS              rounds of all scenarios, interleaved; each row is the round with the
#                       median req/s (default 3)
#   WARMUP              seconds of warm-up load before each measurement (default 2)
#   CONNECTIONS         keep-alive connections of wrk (default 64)
#   SLICES              pairs of alternating short slices of the no-op proxy and nginx, both
#                       running at once (default 5; 0 leaves them out)
#   SLICE_SECONDS       seconds per slice (default 2)
#   WEIR_BIN            use this weir binary instead of building target/release/weir
#   PGO=1               build weir with profile-guided optimisation first (tests/bench/pgo.sh)
#   OTHER_GATEWAY_CMD   another gateway to measure under the same pinning: one command,
#                       exec'd (a wrapper script should end with `exec`, so that the RSS
#                       measured is the gateway's); `{port}` is the port it must listen on
#                       (127.0.0.1), `{upstream}` the upstream base URL (http://127.0.0.1:N).
#                       It must proxy GET $OTHER_GATEWAY_PATH (default /user) to
#                       {upstream}/user.
#   OTHER_GATEWAY_NAME  its label in the table (default "other gateway")
#   RESULTS_MD          where the Markdown table goes (default tests/bench/results.md)
#   KEEP_TMP=1          keep the generated configs, logs and wrk outputs
#
# Layout: the proxy under test runs alone on one CPU; the upstream (nginx serving two JSON
# documents from memory) and wrk share another, so the proxy's numbers are not disturbed by
# the load generator. Only loopback addresses are used.
set -Eeuo pipefail
trap 'echo "run.sh: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
SLICES=${SLICES:-5}
SLICE_SECONDS=${SLICE_SECONDS:-2}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
MANY_CONNECTIONS=1000
MANY_DURATION=5
STARTUP_ENDPOINTS=1000

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RESULTS_MD=${RESULTS_MD:-$ROOT/tests/bench/results.md}

log() { printf '%s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || die "DURATION must be a positive number of seconds"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a number of seconds"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -gt 0 ]] || die "ROUNDS must be a positive number"
[[ $CONNECTIONS =~ ^[0-9]+$ && $CONNECTIONS -gt 0 ]] || die "CONNECTIONS must be a positive number"
[[ $SLICES =~ ^[0-9]+$ ]] || die "SLICES must be a number"
[[ $SLICE_SECONDS =~ ^[0-9]+$ && $SLICE_SECONDS -gt 0 ]] || die "SLICE_SECONDS must be a positive number of seconds"

# ---------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------

find_nginx() {
    command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true
}

NGINX=$(find_nginx)
missing=()
[[ -n $NGINX ]] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]} > 0)); then
    log "missing: ${missing[*]}"
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "install them first, e.g. on Debian/Ubuntu:"
        log "  sudo apt-get install -y nginx-light wrk curl    (or 'nginx' where nginx-light does not exist)"
        exit 1
    fi
    pkgs=()
    for m in "${missing[@]}"; do
        case $m in
        nginx) pkgs+=(nginx-light) ;;
        *) pkgs+=("$m") ;;
        esac
    done
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -q "$@" >/dev/null; }
    if ! apt_install "${pkgs[@]}"; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update -q >/dev/null
        apt_install "${pkgs[@]}" || apt_install "${pkgs[@]/nginx-light/nginx}" ||
            die "could not install ${pkgs[*]}"
    fi
    NGINX=$(find_nginx)
    [[ -n $NGINX ]] || die "nginx installed but not found on PATH or in /usr/sbin"
fi

if [[ -n ${WEIR_BIN:-} ]]; then
    WEIR_BUILD="given as WEIR_BIN"
elif [[ ${PGO:-0} == 1 ]]; then
    log "building weir (release, profile-guided: tests/bench/pgo.sh, about 20 minutes)..."
    WEIR_BIN=$("$ROOT/tests/bench/pgo.sh") || die "the profile-guided build failed"
    WEIR_BUILD="release, profile-guided (tests/bench/pgo.sh)"
else
    log "building weir (release)..."
    (cd "$ROOT" && cargo build --release -q -p weir-gateway --bin weir) || die "cargo build failed"
    WEIR_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/weir
    [[ $WEIR_BIN = /* ]] || WEIR_BIN=$ROOT/$WEIR_BIN
    WEIR_BUILD="release"
fi
[[ -x $WEIR_BIN ]] || die "weir binary not found or not executable: $WEIR_BIN"

# ---------------------------------------------------------------------------------------
# CPU pinning: proxy on one CPU, upstream + wrk on another (not the proxy's SMT sibling if
# another CPU is available).
# ---------------------------------------------------------------------------------------

expand_cpu_list() {
    local part lo hi c parts out=()
    IFS=, read -ra parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then
            lo=${part%-*} hi=${part#*-}
            for ((c = lo; c <= hi; c++)); do out+=("$c"); done
        elif [[ -n $part ]]; then
            out+=("$part")
        fi
    done
    echo "${out[@]}"
}

PIN_PROXY=()
PIN_LOAD=()
PINNING="unpinned"
read -ra CPUS <<<"$(expand_cpu_list "$(awk '/^Cpus_allowed_list:/{print $2}' /proc/self/status 2>/dev/null || true)")"
if ((${#CPUS[@]} < 2)); then
    log "warning: only one CPU available; running unpinned (proxy, upstream and wrk compete for it)"
elif ! command -v taskset >/dev/null 2>&1; then
    log "warning: taskset not found (package util-linux); running unpinned"
else
    PROXY_CPU=${CPUS[0]}
    LOAD_CPU=${CPUS[1]}
    siblings=$(expand_cpu_list "$(cat "/sys/devices/system/cpu/cpu$PROXY_CPU/topology/thread_siblings_list" 2>/dev/null || echo "$PROXY_CPU")")
    for c in "${CPUS[@]:1}"; do
        if [[ " $siblings " != *" $c "* ]]; then
            LOAD_CPU=$c
            break
        fi
    done
    PIN_PROXY=(taskset -c "$PROXY_CPU")
    PIN_LOAD=(taskset -c "$LOAD_CPU")
    PINNING="proxy on CPU $PROXY_CPU, upstream + wrk on CPU $LOAD_CPU"
fi

# Enough descriptors for 1,000 client connections plus as many upstream connections.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < 2 * MANY_CONNECTIONS + 100)); then
    log "warning: open-files limit is $(ulimit -n); the $MANY_CONNECTIONS-connection run may see socket errors"
fi

# ---------------------------------------------------------------------------------------
# Processes and cleanup
# ---------------------------------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/weir-bench.XXXXXX")
PIDS=()

# child_pids PID: its direct children.
child_pids() {
    if command -v pgrep >/dev/null 2>&1; then
        pgrep -P "$1" || true
    else
        ps -o pid= --ppid "$1" 2>/dev/null || true
    fi
}

# stop_pid PID: TERM, then KILL after 5 s; children too (an nginx master's workers).
stop_pid() {
    local pid=$1 i children
    children=$(child_pids "$pid")
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        # shellcheck disable=SC2086 # a list of pids
        kill -KILL "$pid" $children 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_bg VAR LOG CMD...: starts CMD in the background with output to LOG, pid in VAR.
start_bg() {
    local var=$1 logfile=$2
    shift 2
    "$@" >"$logfile" 2>&1 &
    PIDS+=($!)
    printf -v "$var" '%s' "$!"
}

stop_and_forget() {
    local pid=$1 p keep=()
    stop_pid "$pid"
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# alloc_port VAR: a free loopback port, never handed out twice in this run. Taken below the
# ephemeral range: thousands of client connections use local ports there, and one of them
# would make a later listener fail with "address in use".
PORT_LOW=10000
PORT_HIGH=$(awk '{print $1 - 1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32767)
((PORT_HIGH > PORT_LOW + 1000)) || PORT_HIGH=$((PORT_LOW + 1000))
NEXT_PORT=$((PORT_LOW + RANDOM % (PORT_HIGH - PORT_LOW - 200)))
alloc_port() {
    local i
    for ((i = 0; i < 500; i++)); do
        NEXT_PORT=$((NEXT_PORT + 1))
        ((NEXT_PORT <= PORT_HIGH)) || NEXT_PORT=$PORT_LOW
        if ! port_in_use "$NEXT_PORT"; then
            printf -v "$1" '%s' "$NEXT_PORT"
            return 0
        fi
    done
    die "no free port found"
}

# http_status URL [curl args...]: the status code, or 000 when nothing answered.
http_status() {
    local url=$1
    shift
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" 2>/dev/null || true
}

# wait_ready URL PID SECONDS: until URL answers 200, the process dies or time runs out.
wait_ready() {
    local url=$1 pid=$2 deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        [[ $(http_status "$url") == 200 ]] && return 0
        sleep 0.05
    done
    return 1
}

# vmhwm_kb PID: peak resident set size in kB.
vmhwm_kb() {
    local kb
    kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true)
    echo "${kb:-0}"
}

# Other processes' CPU use during a measurement, to flag numbers that are not comparable:
# all busy CPU time (/proc/stat, with (soft)irq time, which the kernel mostly charges to the
# task it interrupted, and steal time, which a hypervisor takes away) minus the time of the
# proxy, the upstream and wrk (a waited-for child, so counted by `times`).
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
NCPU_ALL=$(grep -c '^cpu[0-9]' /proc/stat)
NOISY_CPUS=0.10
machine_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
proc_ticks() {
    local t=0 p v
    for p in "$@"; do
        v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
# cpu_sample VAR PIDS...: "busy total ours" now, into VAR. Not to be called in a subshell,
# whose `times` would not count this shell's children.
cpu_sample() {
    local var=$1 children
    shift
    times >"$TMP/times"
    children=$(awk -v hz="$CLK_TCK" 'function sec(v, a) { split(v, a, "m"); return a[1] * 60 + a[2] }
        NR == 2 { printf "%.0f", (sec($1) + sec($2)) * hz }' "$TMP/times")
    printf -v "$var" '%s %s' "$(machine_ticks)" "$(($(proc_ticks "$@") + ${children:-0}))"
}
# other_cpus BEFORE AFTER: CPUs' worth of time used by other processes in between.
other_cpus() {
    awk -v a="$1" -v b="$2" -v n="$NCPU_ALL" 'BEGIN { split(a, x, " "); split(b, y, " ");
        wall = (y[2] - x[2]) / n; other = (y[1] - x[1]) - (y[3] - x[3]);
        printf "%.2f", ((wall > 0 && other > 0) ? other / wall : 0) }'
}
is_noisy() { awk -v v="$1" -v t="$NOISY_CPUS" 'BEGIN { exit !(v > t) }'; }
# per_cpu RPS PROXY_CPU: req/s per CPU-second of the proxy.
per_cpu() {
    awk -v r="$1" -v c="$2" 'BEGIN { if (r ~ /^[0-9]+$/ && c ~ /^[0-9.]+$/ && c > 0) printf "%.0f", r / c; else printf "-" }'
}

# load_ticks: "busy total" jiffies of the load CPU (all of it, softirq included), or nothing
# when unpinned.
load_ticks() {
    [[ -n ${LOAD_CPU:-} ]] || return 0
    awk -v c="cpu$LOAD_CPU" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat
}
# busy_fraction BEFORE AFTER: the share of the load CPU's time it was busy in between.
busy_fraction() {
    [[ -n $1 && -n $2 ]] || {
        echo -
        return 0
    }
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[2] - x[2];
        printf "%.2f", (t > 0 ? (y[1] - x[1]) / t : 0) }'
}

# ---------------------------------------------------------------------------------------
# Upstream: nginx serving two JSON documents from memory
# ---------------------------------------------------------------------------------------

# ~500 bytes each: a flat user record, and a profile with nested objects and arrays.
# (No single quotes, `$` or backslashes: they are inlined in nginx `return` strings.)
USER_JSON='{"id":48213,"username":"jdoe","email":"jane.doe@example.com","first_name":"Jane","last_name":"Doe","phone":"+1-202-555-0143","locale":"en-US","timezone":"America/New_York","status":"active","email_verified":true,"created_at":"2021-03-14T09:26:53Z","updated_at":"2024-11-02T17:45:10Z","last_login_at":"2025-01-20T08:12:44Z","login_count":1287,"plan":"premium","avatar_url":"https://cdn.example.com/avatars/48213.png","bio":"Backend engineer, coffee drinker and occasional cyclist.","newsletter":false}'
PROFILE_JSON='{"profile_id":"p-48213","display_name":"Jane D.","company":"Acme Corp","job_title":"Staff Engineer","address":{"street":"1600 Pennsylvania Ave NW","city":"Washington","state":"DC","postal_code":"20500","country":"US","geo":{"lat":38.8977,"lng":-77.0365}},"roles":["admin","editor","billing"],"preferences":{"theme":"dark","language":"en","notifications":{"email":true,"sms":false}},"social":[{"network":"github","handle":"janedoe"},{"network":"mastodon","handle":"@jane@example.social"}],"score":4.87}'

# nginx_main NAME / nginx_http_common NAME: main- and http-context lines shared by every
# nginx instance, with its pid file, logs and temp paths under $TMP/NAME.
nginx_main() {
    local name=$1
    mkdir -p "$TMP/$name"
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile 8192;
pid $TMP/$name/nginx.pid;
error_log $TMP/$name/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() {
    local name=$1
    cat <<EOF
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path $TMP/$name/body;
    proxy_temp_path $TMP/$name/proxy;
    fastcgi_temp_path $TMP/$name/fastcgi;
    uwsgi_temp_path $TMP/$name/uwsgi;
    scgi_temp_path $TMP/$name/scgi;
EOF
}

alloc_port UPSTREAM_PORT
UPSTREAM=http://127.0.0.1:$UPSTREAM_PORT
{
    nginx_main upstream
    echo "http {"
    nginx_http_common upstream
    cat <<EOF
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        default_type application/json;
        location = /user { return 200 '$USER_JSON'; }
        location = /profile { return 200 '$PROFILE_JSON'; }
        # A stand-in OpenTelemetry Collector for the telemetry scenario.
        location /v1/ { return 200 '{}'; }
        location / { return 404; }
    }
}
EOF
} >"$TMP/upstream.conf"

start_nginx() { # VAR NAME CONF PIN...
    local var=$1 name=$2 conf=$3
    shift 3
    start_bg "$var" "$TMP/$name.log" "$@" "$NGINX" -p "$TMP/$name/" -c "$conf" -e "$TMP/$name/error.log" -g 'daemon off;'
}

start_nginx UPSTREAM_PID upstream "$TMP/upstream.conf" "${PIN_LOAD[@]}"
if ! wait_ready "$UPSTREAM/user" "$UPSTREAM_PID" 10; then
    cat "$TMP/upstream.log" "$TMP/upstream/error.log" >&2 2>/dev/null || true
    die "upstream nginx did not start"
fi

write_nginx_proxy_conf() { # PORT FILE
    {
        nginx_main nginx-proxy
        echo "http {"
        nginx_http_common nginx-proxy
        cat <<EOF
    upstream up {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$2"
}

# ---------------------------------------------------------------------------------------
# weir configs
# ---------------------------------------------------------------------------------------

# weir_config PORT ENDPOINTS_JSON [ROOT_EXTRA_CONFIG_JSON]
weir_config() {
    local extra=${3:-}
    [[ -n $extra ]] || extra='{}'
    cat <<EOF
{
  "version": 3,
  "name": "weir-bench",
  "listen_ip": "127.0.0.1",
  "port": $1,
  "host": ["$UPSTREAM"],
  "timeout": "3s",
  "extra_config": $extra,
  "endpoints": [$2]
}
EOF
}

EP_PLAIN='{"endpoint": "/user", "output_encoding": "no-op",
   "backend": [{"url_pattern": "/user", "encoding": "no-op"}]}'

SHAPE_BACKEND='{"url_pattern": "/profile", "encoding": "json",
     "allow": ["profile_id", "display_name", "address.city", "address.country", "roles", "preferences.theme"],
     "mapping": {"profile_id": "id", "display_name": "name"},
     "group": "profile"}'
EP_SHAPE="{\"endpoint\": \"/profile\", \"output_encoding\": \"json\", \"backend\": [$SHAPE_BACKEND]}"

EP_MERGE='{"endpoint": "/merged", "output_encoding": "json",
   "backend": [{"url_pattern": "/user", "encoding": "json"},
               {"url_pattern": "/profile", "encoding": "json"}]}'

# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------

ROW_NAME=() ROW_RPS=() ROW_P50=() ROW_P99=() ROW_RSS=() ROW_ERR=() ROW_NOTE=() ROW_OTHER=() ROW_PCPU=() ROW_LCPU=()
NOTES=()
NOISY=0

add_row() { # name rps p50 p99 rss_mb errors note [other_cpus proxy_cpu load_cpu]
    ROW_NAME+=("$1") ROW_RPS+=("$2") ROW_P50+=("$3") ROW_P99+=("$4") ROW_RSS+=("$5") ROW_ERR+=("$6") ROW_NOTE+=("$7")
    ROW_OTHER+=("${8:--}") ROW_PCPU+=("${9:--}") ROW_LCPU+=("${10:--}")
}

# telemetry_cost: the cost of telemetry as the median over rounds of each round's ratio of
# "no-op + telemetry" to "no-op" req/s. Both ran back to back in the same round, so the ratio
# is steadier than the ratio of the two median rows on a noisy machine.
telemetry_cost() {
    local plain=() tele=() i ratios
    for i in "${!ROW_NAME[@]}"; do
        case ${ROW_NAME[$i]} in
        "weir no-op proxy") plain+=("${ROW_RPS[$i]}") ;;
        "weir no-op + telemetry") tele+=("${ROW_RPS[$i]}") ;;
        esac
    done
    ((${#plain[@]} > 0 && ${#plain[@]} == ${#tele[@]})) || return 0
    ratios=$(for i in "${!plain[@]}"; do
        [[ ${plain[$i]} =~ ^[0-9]+$ && ${tele[$i]} =~ ^[0-9]+$ && ${plain[$i]} -gt 0 ]] || continue
        awk -v t="${tele[$i]}" -v p="${plain[$i]}" 'BEGIN { printf "%.3f\n", t / p }'
    done | sort -n)
    [[ -n $ratios ]] || return 0
    NOTES+=("telemetry cost: no-op + telemetry / no-op req/s per round: $(echo "$ratios" | paste -sd' '); median $(echo "$ratios" | awk '{ r[NR] = $1 } END { printf "%.3f", (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2 }')")
}

# paired_ratios WHAT VALUES: for each weir scenario, its value (VALUES, an array parallel to
# the rows) over nginx's in the same round, and the median of those. On a machine whose
# speed drifts between rounds (shared VMs), a ratio of two measurements taken a minute apart
# is steadier than the ratio of two median rows, which may come from different rounds.
paired_ratios() {
    ((ROUNDS > 1)) || return 0
    local what=$1
    local -n values=$2
    local reference=() i n k ratios
    local -A count=()
    local -a order=()
    for i in "${!ROW_NAME[@]}"; do
        [[ ${ROW_NAME[$i]} == "nginx proxy_pass (reference)" ]] && reference+=("${values[$i]}")
    done
    for i in "${!ROW_NAME[@]}"; do
        n=${ROW_NAME[$i]}
        [[ $n == weir* ]] || continue
        [[ -n ${count[$n]:-} ]] || order+=("$n")
        count[$n]=1
    done
    for n in "${order[@]}"; do
        k=0
        ratios=$(for i in "${!ROW_NAME[@]}"; do
            [[ ${ROW_NAME[$i]} == "$n" ]] || continue
            local r=${values[$i]} ref=${reference[$k]:-}
            k=$((k + 1))
            [[ $r =~ ^[0-9]+$ && $ref =~ ^[0-9]+$ && $ref -gt 0 ]] || continue
            awk -v a="$r" -v b="$ref" 'BEGIN { printf "%.2f\n", a / b }'
        done)
        [[ -n $ratios ]] || continue
        NOTES+=("$n: $what over nginx's in the same round: $(echo "$ratios" | paste -sd' '); median $(echo "$ratios" | sort -n | awk '{ r[NR] = $1 } END { printf "%.2fx", (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2 }')")
    done
}

# median_rows: with several rounds, keeps one row per scenario: the round with the median
# req/s (a failed round counts as 0), with the highest peak RSS of all its rounds; notes
# every round's req/s.
median_rows() {
    ((ROUNDS > 1)) || return 0
    local -A seen=()
    local order=() i n m rss kb per_round
    for i in "${!ROW_NAME[@]}"; do
        n=${ROW_NAME[$i]}
        if [[ -z ${seen[$n]:-} ]]; then
            seen[$n]=1
            order+=("$n")
        fi
    done
    local names=() rps=() p50=() p99=() rsss=() errs=() notes=() others=() pcpus=() lcpus=()
    for n in "${order[@]}"; do
        local idx=() sorted=()
        for i in "${!ROW_NAME[@]}"; do
            [[ ${ROW_NAME[$i]} != "$n" ]] || idx+=("$i")
        done
        mapfile -t sorted < <(for i in "${idx[@]}"; do
            r=${ROW_RPS[$i]}
            [[ $r =~ ^[0-9]+$ ]] || r=0
            echo "$r $i"
        done | sort -n | awk '{print $2}')
        m=${sorted[$((${#sorted[@]} / 2))]}
        rss=${ROW_RSS[$m]} per_round=""
        for i in "${idx[@]}"; do
            kb=${ROW_RSS[$i]}
            if [[ $kb =~ ^[0-9.]+$ && $rss =~ ^[0-9.]+$ ]] && awk -v a="$kb" -v b="$rss" 'BEGIN { exit !(a > b) }'; then
                rss=$kb
            fi
            per_round+="${per_round:+, }${ROW_RPS[$i]}"
        done
        names+=("$n") rps+=("${ROW_RPS[$m]}") p50+=("${ROW_P50[$m]}") p99+=("${ROW_P99[$m]}") rsss+=("$rss")
        errs+=("${ROW_ERR[$m]}") notes+=("${ROW_NOTE[$m]}") others+=("${ROW_OTHER[$m]}") pcpus+=("${ROW_PCPU[$m]}") lcpus+=("${ROW_LCPU[$m]}")
        NOTES+=("$n: req/s per round: $per_round")
    done
    ROW_NAME=("${names[@]}") ROW_RPS=("${rps[@]}") ROW_P50=("${p50[@]}") ROW_P99=("${p99[@]}") ROW_RSS=("${rsss[@]}")
    ROW_ERR=("${errs[@]}") ROW_NOTE=("${notes[@]}") ROW_OTHER=("${others[@]}") ROW_PCPU=("${pcpus[@]}") ROW_LCPU=("${lcpus[@]}")
}

# run_wrk OUT CONNECTIONS SECONDS URL [wrk args...]
run_wrk() {
    local out=$1 conns=$2 secs=$3 url=$4
    shift 4
    timeout $((secs + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$conns" -d"${secs}s" --timeout 5s --latency "$@" "$url" >"$out" 2>&1 || true
}

# parse_wrk FILE: sets W_RPS, W_P50, W_P99 (ms) and W_ERR ("0" or a description).
parse_wrk() {
    local f=$1 non2xx sock
    W_RPS=$(awk '/^Requests\/sec:/{printf "%.0f", $2}' "$f")
    local to_ms='function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /m$/) return v * 60000; if (v ~ /s$/) return v * 1000; return v + 0 }'
    W_P50=$(awk "$to_ms"' $1 == "50%" { printf "%.2f", ms($2) }' "$f")
    W_P99=$(awk "$to_ms"' $1 == "99%" { printf "%.2f", ms($2) }' "$f")
    non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF}' "$f")
    sock=$(awk '/Socket errors:/{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i} END {print s + 0}' "$f")
    W_ERR=0
    if [[ -n $non2xx && $non2xx != 0 ]] || [[ $sock != 0 ]]; then
        W_ERR="non-2xx ${non2xx:-0}, socket errors $sock"
    fi
    if [[ -z $W_RPS ]]; then
        W_RPS=0 W_P50=- W_P99=- W_ERR="wrk failed: $(head -c 200 "$f" | tr '\n' ' ')"
    fi
}

mb() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'; }

# measure NAME URL PID RSS_PIDS [wrk args...]: verifies a 200, warms up, measures.
measure() {
    local name=$1 url=$2 pid=$3 rss_pids=$4
    shift 4
    local status
    status=$(http_status "$url" "$@")
    if [[ $status != 200 ]]; then
        log "  $name: $url answered $status, not 200; skipped"
        add_row "$name" - - - - "status $status" "FAILED: GET $url answered $status"
        return 0
    fi
    log "  $name: warm-up ${WARMUP}s, measuring ${DURATION}s"
    if ((WARMUP > 0)); then
        run_wrk "$TMP/warmup-${#ROW_NAME[@]}.txt" "$CONNECTIONS" "$WARMUP" "$url" "$@"
    fi
    local out="$TMP/wrk-${#ROW_NAME[@]}.txt" ours before after other note=""
    ours="$UPSTREAM_PID $(child_pids "$UPSTREAM_PID") $pid $(child_pids "$pid")"
    local proxy_pids proxy0 proxy1 t0 t1 proxy_cpu load0 load1 load_cpu
    proxy_pids="$pid $(child_pids "$pid")"
    cpu_sample before $ours
    proxy0=$(proc_ticks $proxy_pids) t0=$(date +%s%N) load0=$(load_ticks)
    run_wrk "$out" "$CONNECTIONS" "$DURATION" "$url" "$@"
    proxy1=$(proc_ticks $proxy_pids) t1=$(date +%s%N) load1=$(load_ticks)
    cpu_sample after $ours
    other=$(other_cpus "$before" "$after")
    load_cpu=$(busy_fraction "$load0" "$load1")
    # The proxy's CPU time per second (its softirq work included). Near 1.00 with the load
    # CPU well below, the proxy was the bottleneck, as intended; with both near 1.00 (two
    # CPUs, a proxy as cheap per request as wrk and the upstream together), either may have
    # been, and req/s per proxy CPU is the fairer measure of the proxy.
    proxy_cpu=$(awk -v d="$((proxy1 - proxy0))" -v hz="$CLK_TCK" -v ns="$((t1 - t0))" 'BEGIN { printf "%.2f", (ns > 0 ? d / hz / (ns / 1e9) : 0) }')
    parse_wrk "$out"
    local kb=0 p
    for p in $rss_pids; do kb=$((kb + $(vmhwm_kb "$p"))); done
    if ! kill -0 "$pid" 2>/dev/null; then
        W_ERR="process exited during the run"
    fi
    if is_noisy "$other"; then
        note="noisy: other processes used $other CPU"
        NOISY=1
    fi
    add_row "$name" "$W_RPS" "$W_P50" "$W_P99" "$(mb "$kb")" "$W_ERR" "$note" "$other" "$proxy_cpu" "$load_cpu"
    log "    $W_RPS req/s, p50 $W_P50 ms, p99 $W_P99 ms, peak RSS $(mb "$kb") MB, errors: $W_ERR, proxy CPU $proxy_cpu, load CPU $load_cpu, other CPU $other${note:+ (noisy)}"
}

# start_weir VAR CONFIG PORT: starts weir pinned, waits for /__health; returns 1 on failure.
start_weir() {
    local var=$1 cfg=$2 port=$3 name
    name=$(basename "$cfg" .json)
    start_bg "$var" "$TMP/$name.log" "${PIN_PROXY[@]}" "$WEIR_BIN" run -c "$cfg" --workers 1
    if ! wait_ready "http://127.0.0.1:$port/__health" "${!var}" 15; then
        log "  weir did not start with $cfg:"
        tail -n 20 "$TMP/$name.log" >&2 || true
        stop_and_forget "${!var}"
        return 1
    fi
}

# weir_scenario NAME FILE PORT PATH [wrk args...]
weir_scenario() {
    local name=$1 cfg=$2 port=$3 path=$4 pid check
    shift 4
    if ! check=$("$WEIR_BIN" check -c "$cfg" 2>&1); then
        log "  $name: weir check rejected the config:"
        log "$check"
        add_row "$name" - - - - "config rejected" "FAILED: weir check rejected the config"
        return 0
    fi
    if ! start_weir pid "$cfg" "$port"; then
        add_row "$name" - - - - "did not start" "FAILED: weir did not start"
        return 0
    fi
    local unauth=""
    if [[ -n ${EXPECT_401:-} ]]; then
        # Proof that the validator is in the path: no token, no entry.
        unauth=$(http_status "http://127.0.0.1:$port$path")
    fi
    measure "$name" "http://127.0.0.1:$port$path" "$pid" "$pid" "$@"
    if [[ -n $unauth && $unauth != 401 ]]; then
        ROW_NOTE[-1]="${ROW_NOTE[-1]:+${ROW_NOTE[-1]}; }without a token: $unauth, not 401"
    fi
    stop_and_forget "$pid"
}

# Other work on the machine skews everything; say so rather than publish noise.
cpu_busy_pct() {
    local a b
    a=$(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2];
        printf "%.0f", ((busy + idle > 0) ? 100 * busy / (busy + idle) : 0) }'
}
BUSY_BEFORE=$(cpu_busy_pct)
if ((BUSY_BEFORE > 20)); then
    log "warning: the CPUs were ${BUSY_BEFORE}% busy before the run (upstream idle); results will be noisy"
fi

log "weir:     $WEIR_BIN ($("$WEIR_BIN" version 2>/dev/null || echo '?'))"
log "nginx:    $("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
log "pinning:  $PINNING"
log "upstream: $UPSTREAM (/user ${#USER_JSON} B, /profile ${#PROFILE_JSON} B)"
log "load:     wrk -t1 -c$CONNECTIONS -d${DURATION}s after ${WARMUP}s of warm-up, $ROUNDS round(s) of every scenario"
log ""

# 5. weir with JWT validation, rate limit and telemetry, on top of scenario 3.
POLICY_NAME="weir jwt+ratelimit+telemetry"
alloc_port POLICY_PORT
alloc_port METRICS_PORT
EP_POLICY="{\"endpoint\": \"/secure\", \"output_encoding\": \"json\",
   \"extra_config\": {
     \"auth/validator\": {\"alg\": \"RS256\", \"jwk_local_path\": \"$TMP/jwk.json\", \"disable_jwk_security\": true,
       \"cache\": true, \"issuer\": \"https://auth.bench.local\", \"audience\": [\"weir-bench\"],
       \"roles_key\": \"roles\", \"roles\": [\"user\"]},
     \"qos/ratelimit/router\": {\"max_rate\": 10000000, \"every\": \"1s\", \"client_max_rate\": 10000000, \"strategy\": \"ip\"}
   },
   \"backend\": [$SHAPE_BACKEND]}"
TELEMETRY="{\"telemetry/opentelemetry\": {\"service_name\": \"weir-bench\", \"metric_reporting_period\": 1,
   \"exporters\": {\"prometheus\": [{\"name\": \"local\", \"port\": $METRICS_PORT, \"listen_ip\": \"127.0.0.1\"}]}}}"
weir_config "$POLICY_PORT" "$EP_POLICY" "$TELEMETRY" >"$TMP/weir-policy.json"

# Writes $TMP/key.pem, $TMP/jwk.json and prints a token valid for a day.
make_jwt() {
    openssl genrsa -out "$TMP/key.pem" 2048 2>/dev/null
    python3 "$ROOT/tests/bench/make_jwt.py" "$TMP/key.pem" "$TMP/jwk.json"
}

# The scenario runs once weir implements the components: a first check, before any key
# exists, looks only for the unsupported components `run` would refuse; the real check,
# with the JWK in place, happens in weir_scenario.
precheck=$("$WEIR_BIN" check -c "$TMP/weir-policy.json" 2>&1 || true)
# e.g. `unsupported: endpoints[0].extra_config: "auth/validator" is not supported yet (run refuses ...)`
# unsupported_list blocking|ignored: the namespaces of that kind, comma-separated.
unsupported_list() {
    local line ns out=()
    while IFS= read -r line; do
        [[ $line == unsupported:* ]] || continue
        if [[ $line == *"(ignored)"* ]]; then
            [[ $1 == ignored ]] || continue
        else
            [[ $1 == blocking ]] || continue
        fi
        ns=$(sed -n 's/^[^"]*"\([^"]*\)".*/\1/p' <<<"$line")
        [[ -z $ns || " ${out[*]} " == *" $ns "* ]] || out+=("$ns")
    done <<<"$precheck"
    local joined
    printf -v joined '%s, ' "${out[@]}"
    [[ ${#out[@]} -eq 0 ]] || echo "${joined%, }"
}
BLOCKING=$(unsupported_list blocking)
IGNORED=$(unsupported_list ignored)
POLICY_SKIP=""
if [[ -n $BLOCKING ]]; then
    POLICY_SKIP="skipped: needs $BLOCKING (not implemented yet)"
elif ! command -v openssl >/dev/null 2>&1 || ! command -v python3 >/dev/null 2>&1; then
    POLICY_SKIP="skipped: needs openssl and python3 to make a JWT"
elif ! TOKEN=$(make_jwt); then
    POLICY_SKIP="skipped: could not make a JWT"
else
    NOTES+=("$POLICY_NAME: every request carries the same RS256 token, so after the first one its verification may come from a cache; rate limits set high enough never to reject")
fi
[[ -z $POLICY_SKIP ]] || log "  $POLICY_NAME: $POLICY_SKIP"

# The scenarios, each measuring one proxy alone on its CPU.

# 1. nginx reverse proxy: the reference.
scenario_nginx() {
    alloc_port NGINX_PORT
    write_nginx_proxy_conf "$NGINX_PORT" "$TMP/nginx-proxy.conf"
    NGINX_NAME="nginx proxy_pass (reference)"
    start_nginx NGINX_PID nginx-proxy "$TMP/nginx-proxy.conf" "${PIN_PROXY[@]}"
    if wait_ready "http://127.0.0.1:$NGINX_PORT/user" "$NGINX_PID" 10; then
        # The worker serves the traffic; the master only supervises it.
        measure "$NGINX_NAME" "http://127.0.0.1:$NGINX_PORT/user" "$NGINX_PID" "$(child_pids "$NGINX_PID")"
    else
        cat "$TMP/nginx-proxy/error.log" >&2 2>/dev/null || true
        add_row "$NGINX_NAME" - - - - "did not start" "FAILED: nginx proxy did not start"
    fi
    stop_and_forget "$NGINX_PID"
}

# 2. weir, plain proxy (no-op).
scenario_plain() {
    alloc_port P
    weir_config "$P" "$EP_PLAIN" >"$TMP/weir-plain.json"
    weir_scenario "weir no-op proxy" "$TMP/weir-plain.json" "$P" /user
}

# 2b. The same with telemetry: Prometheus, and OTLP/HTTP metrics and traces (10 % of
# requests sampled) sent to the upstream standing in for a collector.
scenario_plain_telemetry() {
    alloc_port P
    alloc_port MP
    weir_config "$P" "$EP_PLAIN" "{\"telemetry/opentelemetry\": {\"service_name\": \"weir-bench\",
        \"metric_reporting_period\": 1, \"trace_sample_rate\": 0.1, \"exporters\": {
        \"prometheus\": [{\"name\": \"local\", \"port\": $MP, \"listen_ip\": \"127.0.0.1\"}],
        \"otlp\": [{\"name\": \"collector\", \"host\": \"127.0.0.1\", \"port\": $UPSTREAM_PORT, \"use_http\": true}]}}}" \
        >"$TMP/weir-plain-telemetry.json"
    weir_scenario "weir no-op + telemetry" "$TMP/weir-plain-telemetry.json" "$P" /user
}

# 3. weir, one JSON backend with allow + mapping + group.
scenario_shape() {
    alloc_port P
    weir_config "$P" "$EP_SHAPE" >"$TMP/weir-shape.json"
    weir_scenario "weir json allow+mapping+group" "$TMP/weir-shape.json" "$P" /profile
}

# 4. weir, two backends merged.
scenario_merge() {
    alloc_port P
    weir_config "$P" "$EP_MERGE" >"$TMP/weir-merge.json"
    weir_scenario "weir 2 backends merged" "$TMP/weir-merge.json" "$P" /merged
}

# 5. weir with JWT validation, rate limit and telemetry, on top of scenario 3.
scenario_policy() {
    if [[ -n $POLICY_SKIP ]]; then
        add_row "$POLICY_NAME" - - - - - "$POLICY_SKIP"
    else
        EXPECT_401=1 weir_scenario "$POLICY_NAME" "$TMP/weir-policy.json" "$POLICY_PORT" /secure -H "Authorization: Bearer $TOKEN"
        if [[ -n $IGNORED ]]; then
            ROW_NOTE[-1]="${ROW_NOTE[-1]:+${ROW_NOTE[-1]}; }$IGNORED ignored by weir (not implemented yet)"
        fi
    fi
}

# 6. Any other gateway, under the same pinning.
scenario_other() {
    if [[ -n ${OTHER_GATEWAY_CMD:-} ]]; then
        OTHER_NAME=${OTHER_GATEWAY_NAME:-other gateway}
        alloc_port P
        cmd=${OTHER_GATEWAY_CMD//\{port\}/$P}
        cmd=${cmd//\{upstream\}/$UPSTREAM}
        url="http://127.0.0.1:$P${OTHER_GATEWAY_PATH:-/user}"
        log "  $OTHER_NAME: $cmd"
        start_bg OTHER_PID "$TMP/other.log" "${PIN_PROXY[@]}" bash -c "exec $cmd"
        if wait_ready "$url" "$OTHER_PID" 30; then
            measure "$OTHER_NAME" "$url" "$OTHER_PID" "$OTHER_PID"
            ROW_NOTE[-1]="${ROW_NOTE[-1]:+${ROW_NOTE[-1]}; }RSS of the started process only"
        else
            tail -n 20 "$TMP/other.log" >&2 || true
            add_row "$OTHER_NAME" - - - - "did not start" "FAILED: no 200 from $url within 30 s"
        fi
        stop_and_forget "$OTHER_PID"
    fi
}

SCENARIOS=(scenario_nginx scenario_plain scenario_plain_telemetry scenario_shape scenario_merge scenario_policy scenario_other)

# One round: every scenario once. Every other round runs them in reverse order, so that a
# drift of the machine's speed within a round, or whatever one scenario leaves behind for
# the next, falls on the first and the last scenario alike.
run_round() {
    local order=() i
    for i in "${!SCENARIOS[@]}"; do
        if ((ROUND % 2 == 0)); then
            order=("${SCENARIOS[$i]}" "${order[@]}")
        else
            order+=("${SCENARIOS[$i]}")
        fi
    done
    for i in "${order[@]}"; do
        "$i"
    done
}

# Rounds interleave the scenarios, so that drift in the machine's speed (large on shared
# VMs) reaches every scenario alike; each row is then the round with the median req/s.
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    ((ROUNDS == 1)) || log "round $ROUND of $ROUNDS"
    run_round
done
telemetry_cost
paired_ratios "req/s" ROW_RPS
ROW_PER_CPU=()
for i in "${!ROW_NAME[@]}"; do
    ROW_PER_CPU+=("$(per_cpu "${ROW_RPS[$i]}" "${ROW_PCPU[$i]}")")
done
paired_ratios "req/s per proxy CPU" ROW_PER_CPU
median_rows

# The plain proxy against nginx in alternating short slices: both run at once, pinned to the
# proxy CPU (the one not loaded costs nothing), and wrk switches between them every
# SLICE_SECONDS, so that a change of the machine's speed (minutes apart on shared VMs, and
# as large as the difference measured) falls inside one pair at most. Each pair runs in the
# opposite order of the one before.
alternate() {
    ((SLICES > 0)) || return 0
    local np wp nport wport i a b n_rps n_per w_rps w_per per_cpu=() rps=()
    log ""
    log "weir no-op proxy and nginx in $SLICES alternating pairs of ${SLICE_SECONDS}s:"
    alloc_port nport
    write_nginx_proxy_conf "$nport" "$TMP/nginx-slices.conf"
    start_nginx np nginx-proxy "$TMP/nginx-slices.conf" "${PIN_PROXY[@]}"
    alloc_port wport
    weir_config "$wport" "$EP_PLAIN" >"$TMP/weir-slices.json"
    if ! wait_ready "http://127.0.0.1:$nport/user" "$np" 10 || ! start_weir wp "$TMP/weir-slices.json" "$wport"; then
        NOTES+=("alternating slices: FAILED, a proxy did not start")
        stop_and_forget "$np"
        return 0
    fi
    local nginx_url="http://127.0.0.1:$nport/user" weir_url="http://127.0.0.1:$wport/user"
    local nginx_pids weir_pids
    nginx_pids="$np $(child_pids "$np")"
    weir_pids="$wp $(child_pids "$wp")"
    # slice_once URL PIDS: "req/s req/s-per-proxy-CPU" of one slice.
    slice_once() {
        local c0 c1 t0 t1
        c0=$(proc_ticks $2) t0=$(date +%s%N)
        run_wrk "$TMP/slice.txt" "$CONNECTIONS" "$SLICE_SECONDS" "$1"
        c1=$(proc_ticks $2) t1=$(date +%s%N)
        parse_wrk "$TMP/slice.txt"
        awk -v r="$W_RPS" -v d="$((c1 - c0))" -v hz="$CLK_TCK" -v ns="$((t1 - t0))" \
            'BEGIN { cpu = d / hz / (ns / 1e9); printf "%d %.0f\n", r, (cpu > 0 ? r / cpu : 0) }'
    }
    run_wrk "$TMP/slice-warmup.txt" "$CONNECTIONS" 1 "$nginx_url"
    run_wrk "$TMP/slice-warmup.txt" "$CONNECTIONS" 1 "$weir_url"
    for ((i = 1; i <= SLICES; i++)); do
        if ((i % 2)); then
            a=$(slice_once "$nginx_url" "$nginx_pids")
            b=$(slice_once "$weir_url" "$weir_pids")
        else
            b=$(slice_once "$weir_url" "$weir_pids")
            a=$(slice_once "$nginx_url" "$nginx_pids")
        fi
        read -r n_rps n_per <<<"$a"
        read -r w_rps w_per <<<"$b"
        if ((n_rps > 0 && n_per > 0)); then
            rps+=("$(awk -v w="$w_rps" -v n="$n_rps" 'BEGIN { printf "%.2f", w / n }')")
            per_cpu+=("$(awk -v w="$w_per" -v n="$n_per" 'BEGIN { printf "%.2f", w / n }')")
            log "  pair $i: nginx $n_rps req/s ($n_per per proxy CPU), weir $w_rps req/s ($w_per per proxy CPU)"
        fi
    done
    stop_and_forget "$wp"
    stop_and_forget "$np"
    ((${#per_cpu[@]} > 0)) || return 0
    median_of() { printf '%s\n' "$@" | sort -n | awk '{ r[NR] = $1 } END { printf "%.2fx", (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2 }'; }
    NOTES+=("weir no-op proxy and nginx in $SLICES alternating pairs of ${SLICE_SECONDS}s slices: req/s per proxy CPU over nginx's: ${per_cpu[*]}; median $(median_of "${per_cpu[@]}"); req/s over nginx's: ${rps[*]}; median $(median_of "${rps[@]}")")
}
alternate

# 1,000 concurrent connections: peak RSS of weir (no-op proxy) and of nginx for reference.
log ""
log "$MANY_CONNECTIONS concurrent connections (${MANY_DURATION}s):"
many() { # NAME URL PID RSS_PIDS
    local out="$TMP/many-$3.txt" kb=0 p ours before after other
    ours="$UPSTREAM_PID $(child_pids "$UPSTREAM_PID") $3 $(child_pids "$3")"
    cpu_sample before $ours
    run_wrk "$out" "$MANY_CONNECTIONS" "$MANY_DURATION" "$2"
    cpu_sample after $ours
    other=$(other_cpus "$before" "$after")
    parse_wrk "$out"
    for p in $4; do kb=$((kb + $(vmhwm_kb "$p"))); done
    local line="$1 with $MANY_CONNECTIONS connections: peak RSS $(mb "$kb") MB, $W_RPS req/s, p99 $W_P99 ms, errors: $W_ERR"
    if is_noisy "$other"; then
        line+=" (noisy: other processes used $other CPU)"
        NOISY=1
    fi
    log "  $line"
    NOTES+=("$line")
}
alloc_port P
weir_config "$P" "$EP_PLAIN" >"$TMP/weir-many.json"
if start_weir PID "$TMP/weir-many.json" "$P"; then
    many "weir no-op proxy" "http://127.0.0.1:$P/user" "$PID" "$PID"
    stop_and_forget "$PID"
else
    NOTES+=("weir with $MANY_CONNECTIONS connections: FAILED, weir did not start")
fi
alloc_port P
write_nginx_proxy_conf "$P" "$TMP/nginx-many.conf"
start_nginx PID nginx-proxy "$TMP/nginx-many.conf" "${PIN_PROXY[@]}"
if wait_ready "http://127.0.0.1:$P/user" "$PID" 10; then
    many "nginx proxy_pass (worker)" "http://127.0.0.1:$P/user" "$PID" "$(child_pids "$PID")"
fi
stop_and_forget "$PID"

# Start-up with a 1,000-endpoint config: from exec to the first 200 of a proxied endpoint.
log ""
log "start-up with $STARTUP_ENDPOINTS endpoints:"
alloc_port P
{
    for ((i = 0; i < STARTUP_ENDPOINTS; i++)); do
        ((i == 0)) || echo ","
        printf '{"endpoint": "/api/v1/resource-%d/{id}", "backend": [{"url_pattern": "/%s?id={id}", "encoding": "json", "allow": ["id", "email"]}]}' \
            "$i" "$([[ $((i % 2)) == 0 ]] && echo user || echo profile)"
    done
} >"$TMP/endpoints.json"
weir_config "$P" "$(cat "$TMP/endpoints.json")" >"$TMP/weir-1000.json"
if ! check=$("$WEIR_BIN" check -c "$TMP/weir-1000.json" 2>&1); then
    log "$check"
    NOTES+=("start-up with $STARTUP_ENDPOINTS endpoints: FAILED, weir check rejected the config")
else
    last="http://127.0.0.1:$P/api/v1/resource-$((STARTUP_ENDPOINTS - 1))/42"
    t0=$(date +%s%N)
    start_bg PID "$TMP/weir-1000.log" "${PIN_PROXY[@]}" "$WEIR_BIN" run -c "$TMP/weir-1000.json" --workers 1
    ok=0
    deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)) && kill -0 "$PID" 2>/dev/null; do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$last" 2>/dev/null || true) == 200 ]]; then
            ok=1
            break
        fi
    done
    t1=$(date +%s%N)
    if ((ok)); then
        ms=$(((t1 - t0) / 1000000))
        line="start-up with $STARTUP_ENDPOINTS endpoints to the first served request: $ms ms (RSS then $(mb "$(vmhwm_kb "$PID")") MB)"
    else
        tail -n 20 "$TMP/weir-1000.log" >&2 || true
        line="start-up with $STARTUP_ENDPOINTS endpoints: FAILED, no 200 from $last within 20 s"
    fi
    log "  $line"
    NOTES+=("$line")
    stop_and_forget "$PID"
fi

# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

ratio() { # value reference
    awk -v v="$1" -v r="$2" 'BEGIN { if (v ~ /^[0-9.]+$/ && r ~ /^[0-9.]+$/ && r > 0) printf "%.2fx", v / r; else printf "-" }'
}

HEADERS=("scenario" "req/s" "p50 ms" "p99 ms" "peak RSS MB" "req/s vs nginx" "p99 vs nginx" "proxy CPU" "load CPU" "req/s per proxy CPU" "vs nginx" "other CPU" "errors")
CELLS=()
for i in "${!ROW_NAME[@]}"; do
    errors=${ROW_ERR[$i]}
    if [[ -n ${ROW_NOTE[$i]} ]]; then
        case $errors in
        0 | -) errors=${ROW_NOTE[$i]} ;;
        *) errors="$errors; ${ROW_NOTE[$i]}" ;;
        esac
    fi
    per=$(per_cpu "${ROW_RPS[$i]}" "${ROW_PCPU[$i]}")
    CELLS+=("${ROW_NAME[$i]}|${ROW_RPS[$i]}|${ROW_P50[$i]}|${ROW_P99[$i]}|${ROW_RSS[$i]}|$(ratio "${ROW_RPS[$i]}" "${ROW_RPS[0]}")|$(ratio "${ROW_P99[$i]}" "${ROW_P99[0]}")|${ROW_PCPU[$i]}|${ROW_LCPU[$i]}|$per|$(ratio "$per" "$(per_cpu "${ROW_RPS[0]}" "${ROW_PCPU[0]}")")|${ROW_OTHER[$i]}|$errors")
done

print_table() {
    local row
    local format='%-30s %9s %7s %7s %12s %15s %13s %9s %9s %20s %9s %9s  %s\n'
    # shellcheck disable=SC2059 # the format is the one above
    printf "$format" "${HEADERS[@]}"
    for row in "${CELLS[@]}"; do
        IFS='|' read -ra c <<<"$row"
        # shellcheck disable=SC2059
        printf "$format" "${c[@]}"
    done
}

markdown_table() {
    local row
    printf '| %s |' "${HEADERS[0]}"
    printf ' %s |' "${HEADERS[@]:1}"
    printf '\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n'
    for row in "${CELLS[@]}"; do
        printf '| %s |\n' "${row//|/ | }"
    done
}

CPU_MODEL=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
CPU_MODEL=${CPU_MODEL:-$(uname -m)}
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ $REV != unknown ]] && ! git -C "$ROOT" diff --quiet HEAD -- gateway Cargo.toml Cargo.lock 2>/dev/null; then
    REV="$REV-dirty"
fi
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')

echo
print_table
echo
for n in "${NOTES[@]}"; do echo "* $n"; done
echo "* $DATE, $CPU_MODEL ($(nproc) CPUs), $PINNING; weir $REV ($WEIR_BUILD); other CPU use before the run ${BUSY_BEFORE}%"

{
    echo "# Weir load benchmark"
    echo
    echo "* Date: $DATE"
    echo "* CPU: $CPU_MODEL ($(nproc) CPUs available), $PINNING"
    echo "* weir: git $REV, \`$("$WEIR_BIN" version 2>/dev/null || echo '?')\`, build: $WEIR_BUILD, \`run --workers 1\`"
    echo "* nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), worker_processes 1, upstream keepalive 64"
    echo "* Load: \`wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency\` after ${WARMUP}s of warm-up, $ROUNDS interleaved round(s) of every scenario (every other round in reverse order), each row the round with the median req/s; upstream: nginx serving /user (${#USER_JSON} B) and /profile (${#PROFILE_JSON} B) from memory"
    echo "* CPU use by other processes just before the run: ${BUSY_BEFORE}% (keep it near 0 for comparable numbers)"
    echo "* proxy CPU: CPU time of the proxy (softirq work done in its name included) per second of the measurement; load CPU: the share of the load CPU (upstream + wrk) that was busy. With the proxy near 1.00 and the load CPU well below, the proxy was the bottleneck; with both near 1.00, either may have been, and req/s then says little more than that the proxy kept up with the load side."
    echo "* req/s per proxy CPU: req/s over proxy CPU, the requests one CPU of the proxy serves per second at this load; its ratio is to nginx's of the same run."
    echo "* other CPU: CPUs' worth of time used by processes other than the proxy, the upstream and wrk during the measurement; above $NOISY_CPUS the row is marked noisy."
    echo "* Ratios are to the nginx row of the same run; peak RSS is VmHWM (nginx: its worker)."
    echo
    markdown_table
    echo
    for n in "${NOTES[@]}"; do echo "* $n"; done
} >"$RESULTS_MD"
if ((NOISY)); then
    log "warning: other processes used the CPUs during some measurements (see 'other CPU'); rerun on a quiet machine"
fi
log ""
log "written to ${RESULTS_MD#"$ROOT"/}"
