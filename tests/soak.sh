#!/usr/bin/env bash
# Soak test: `weir` under steady load for DURATION seconds (default 600), with a hot reload
# (SIGHUP, alternating between two configs) and a backend that flaps (stopped and started
# again) every WINDOW seconds. Loopback only; stops by itself.
#
#   tests/soak.sh                 # 10 minutes
#   DURATION=60 WINDOW=10 tests/soak.sh
#
# Per window it records the gateway's RSS and open descriptors, and wrk's throughput, p99
# and non-2xx answers for the stable endpoint and for the one whose backend flaps. It fails
# when the stable endpoint saw any error, when RSS grew more than 5 % between the end of
# the warm-up (the second window) and the end, or when descriptors kept growing. The table
# is printed and written to tests/bench/results-soak.md (git-ignored).
set -Eeuo pipefail
trap 'echo "soak.sh: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

DURATION=${DURATION:-600}
WINDOW=${WINDOW:-30}
CONNECTIONS=${CONNECTIONS:-32}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS_MD=$ROOT/tests/bench/results-soak.md
((DURATION >= 3 * WINDOW)) || { echo "DURATION must be at least 3 windows" >&2; exit 2; }

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

NGINX=$(command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true)
if [[ -z $NGINX ]] || ! command -v wrk >/dev/null; then
    [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null || die "install nginx and wrk first"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light wrk >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light wrk >/dev/null; }
    NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
fi
log "building weir (release)..."
(cd "$ROOT" && cargo build --release -q --locked --bin weir) || die "cargo build failed"
WEIR=${CARGO_TARGET_DIR:-$ROOT/target}/release/weir
[[ $WEIR = /* ]] || WEIR=$ROOT/$WEIR

TMP=$(mktemp -d "${TMPDIR:-/tmp}/weir-soak.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [[ ${KEEP_TMP:-0} == 1 ]] && log "kept $TMP" || rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ok() {
    local deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true) == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

# Two nginx upstreams: a stable one and one that flaps.
nginx_conf() { # NAME PORT
    mkdir -p "$TMP/$1"
    cat >"$TMP/$1/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/$1/nginx.pid;
error_log $TMP/$1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $TMP/$1/body; proxy_temp_path $TMP/$1/proxy; fastcgi_temp_path $TMP/$1/fcgi;
    uwsgi_temp_path $TMP/$1/uwsgi; scgi_temp_path $TMP/$1/scgi;
    server {
        listen 127.0.0.1:$2;
        default_type application/json;
        location / { return 200 '{"id":7,"name":"soak","tags":["a","b","c"],"nested":{"x":1,"y":[1,2,3]}}'; }
    }
}
EOF
}
STABLE_PORT=$(free_port) FLAPPY_PORT=$(free_port)
nginx_conf stable "$STABLE_PORT"
nginx_conf flappy "$FLAPPY_PORT"
"$NGINX" -c "$TMP/stable/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
start_flappy() { "$NGINX" -c "$TMP/flappy/nginx.conf" -g 'daemon off;' & FLAPPY_PID=$!; PIDS+=("$FLAPPY_PID"); }
start_flappy
wait_ok "http://127.0.0.1:$STABLE_PORT/" 10 || die "nginx did not start"

# Two configs that differ in what they return; SIGHUP alternates between them.
PORT=$(free_port)
config() { # FIELDS
    cat <<EOF
{"version": 3, "timeout": "1s", "endpoints": [
  {"endpoint": "/stable", "backend": [{"host": ["http://127.0.0.1:$STABLE_PORT"], "url_pattern": "/", "allow": $1}]},
  {"endpoint": "/flappy", "backend": [{"host": ["http://127.0.0.1:$FLAPPY_PORT"], "url_pattern": "/",
     "extra_config": {"qos/circuit-breaker": {"interval": 5, "timeout": 2, "max_errors": 3}}}]},
  {"endpoint": "/both", "backend": [
     {"host": ["http://127.0.0.1:$STABLE_PORT"], "url_pattern": "/", "group": "stable"},
     {"host": ["http://127.0.0.1:$FLAPPY_PORT"], "url_pattern": "/", "group": "flappy"}]}
]}
EOF
}
config '["id","name"]' >"$TMP/a.json"
config '["id","tags","nested"]' >"$TMP/b.json"
cp "$TMP/a.json" "$TMP/krakend.json"
WEIR_LOG=info "$WEIR" run -c "$TMP/krakend.json" -p "$PORT" 2>"$TMP/weir.log" &
WEIR_PID=$!
PIDS+=("$WEIR_PID")
wait_ok "http://127.0.0.1:$PORT/stable" 10 || die "weir did not start: $(tail -5 "$TMP/weir.log")"

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$WEIR_PID/status"; }
fds() { ls "/proc/$WEIR_PID/fd" | wc -l; }
wrk_field() { # FILE FIELD
    case $2 in
    rps) awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$1" ;;
    p99) awk '$1 == "99%" {print $2}' "$1" ;;
    non2xx) awk '/Non-2xx/ {n = $NF} END {print n + 0}' "$1" ;;
    errors) awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10; f = 1} END {if (!f) print 0}' "$1" ;;
    esac
}

windows=$((DURATION / WINDOW))
log "soak: $windows windows of ${WINDOW}s; reload and flap at the end of each"
printf 'window,seconds,rss_kb,fds,stable_rps,stable_p99,stable_non2xx,stable_errors,flappy_rps,flappy_non2xx,both_non2xx,flappy_up\n' >"$TMP/soak.csv"
flappy_up=1
for ((w = 1; w <= windows; w++)); do
    wrk -t1 -c"$CONNECTIONS" -d"${WINDOW}s" --latency "http://127.0.0.1:$PORT/stable" >"$TMP/stable-$w.txt" 2>&1 &
    s=$!
    wrk -t1 -c8 -d"${WINDOW}s" "http://127.0.0.1:$PORT/flappy" >"$TMP/flappy-$w.txt" 2>&1 &
    f=$!
    wrk -t1 -c4 -d"${WINDOW}s" "http://127.0.0.1:$PORT/both" >"$TMP/both-$w.txt" 2>&1 &
    b=$!
    # Mid-window: a hot reload to the other config.
    sleep $((WINDOW / 2))
    if ((w % 2)); then cp "$TMP/b.json" "$TMP/krakend.json"; else cp "$TMP/a.json" "$TMP/krakend.json"; fi
    kill -HUP "$WEIR_PID"
    wait "$s" "$f" "$b"
    kill -0 "$WEIR_PID" 2>/dev/null || die "weir died: $(tail -20 "$TMP/weir.log")"
    printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$w" "$((w * WINDOW))" "$(rss_kb)" "$(fds)" \
        "$(wrk_field "$TMP/stable-$w.txt" rps)" "$(wrk_field "$TMP/stable-$w.txt" p99)" \
        "$(wrk_field "$TMP/stable-$w.txt" non2xx)" "$(wrk_field "$TMP/stable-$w.txt" errors)" \
        "$(wrk_field "$TMP/flappy-$w.txt" rps)" "$(wrk_field "$TMP/flappy-$w.txt" non2xx)" \
        "$(wrk_field "$TMP/both-$w.txt" non2xx)" "$flappy_up" >>"$TMP/soak.csv"
    tail -1 "$TMP/soak.csv" >&2
    # The flapping backend changes state for the next window.
    if ((flappy_up)); then
        kill -TERM "$FLAPPY_PID"
        wait "$FLAPPY_PID" 2>/dev/null || true
        flappy_up=0
    else
        start_flappy
        flappy_up=1
    fi
done

python3 - "$TMP/soak.csv" "$RESULTS_MD" "$TMP/weir.log" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
log = open(sys.argv[3]).read()
panics = log.count("panicked")
reloads = log.count("config reloaded")
base = int(rows[1]["rss_kb"])  # the end of the warm-up: the second window
last = int(rows[-1]["rss_kb"])
growth = 100.0 * (last - base) / base
fds = [int(r["fds"]) for r in rows]
stable_bad = sum(int(r["stable_non2xx"]) + int(r["stable_errors"]) for r in rows)
p99s = [r["stable_p99"] for r in rows]
out = ["# Soak", "", f"{len(rows)} windows of {int(rows[0]['seconds'])} s; a hot reload in each, the flapping backend down every other window.", "",
       "| window | s | RSS MB | fds | stable req/s | stable p99 | stable errors | flappy req/s | flappy non-2xx | both non-2xx | flappy backend |",
       "|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    out.append(f"| {r['window']} | {r['seconds']} | {int(r['rss_kb']) / 1024:.1f} | {r['fds']} | {r['stable_rps']} | {r['stable_p99']} | "
               f"{int(r['stable_non2xx']) + int(r['stable_errors'])} | {r['flappy_rps']} | {r['flappy_non2xx']} | {r['both_non2xx']} | "
               f"{'up' if r['flappy_up'] == '1' else 'down'} |")
verdicts = [
    (stable_bad == 0, f"stable endpoint errors: {stable_bad}"),
    (growth < 5.0, f"RSS growth after warm-up: {growth:+.1f} % ({base / 1024:.1f} -> {last / 1024:.1f} MB)"),
    (max(fds[1:]) <= fds[1] + 16, f"descriptors: {fds[1]} after warm-up, at most {max(fds[1:])} later"),
    (panics == 0, f"panics in the log: {panics}"),
    (reloads == len(rows), f"hot reloads applied: {reloads} of {len(rows)}"),
]
out += ["", *[f"- {'ok' if ok else 'FAIL'}: {what}" for ok, what in verdicts],
        f"- stable p99 per window: {', '.join(p99s)}"]
text = "\n".join(out) + "\n"
open(sys.argv[2], "w").write(text)
print(text)
sys.exit(0 if all(ok for ok, _ in verdicts) else 1)
PY
