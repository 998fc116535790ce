#!/usr/bin/env bash
# Instructions per request: each scenario's weir runs under valgrind's callgrind, which
# counts the instructions the gateway executes (user space only), and the count over a
# measured window is divided by the requests served in it. Unlike req/s, the figure does not
# move with whatever else the machine is doing, so two builds or two scenarios can be compared
# on a busy machine. Start-up and warm-up are left out of the window; background work in it
# (exporters, timers) is counted, as it is part of each scenario's cost.
#
#   tests/bench/instructions.sh               # 10 s window per scenario
#   WINDOW=20 tests/bench/instructions.sh
#   WEIR_BIN=/path/to/weir tests/bench/instructions.sh
#   ONLY='merged|jwt' tests/bench/instructions.sh   # scenarios whose name matches the regex
#   KEEP=/tmp/cg tests/bench/instructions.sh         # keep each profile for callgrind_annotate
#
# Needs valgrind, nginx, wrk and curl (Debian packages). Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/../.."

WINDOW=${WINDOW:-10}
for tool in valgrind callgrind_control wrk curl; do
  command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is missing (apt-get install valgrind wrk curl)" >&2; exit 1; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "instructions.sh: nginx is missing (apt-get install nginx-light)" >&2; exit 1; }
if [ -z "${WEIR_BIN:-}" ]; then
  cargo build --release -p weir-gateway --bin weir --locked >&2
  WEIR_BIN=target/release/weir
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The upstream: nginx serving a ~500-byte JSON document, and standing in for an OTLP/HTTP
# collector.
up=$(port)
mkdir -p "$tmp/nginx"
cat >"$tmp/upstream.conf" <<EOF
worker_processes 1;
pid $tmp/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $tmp/nginx;
  server {
    listen 127.0.0.1:$up;
    default_type application/json;
    location = /user { return 200 '{"id":48213,"name":"Ada Lovelace","email":"ada@example.com","active":true,"created_at":"2024-03-01T12:00:00Z","tags":["admin","beta","ops"],"address":{"street":"12 Analytical Row","city":"London","country":"GB","zip":"N1 9GU"},"plan":{"tier":"pro","seats":25,"renews":"2027-01-01"},"stats":{"logins":1289,"last_seen":"2026-11-20T08:15:00Z","score":97.5},"bio":"Mathematician and writer."}'; }
    location = /profile { return 200 '{"profile_id":"p-48213","display_name":"Ada L.","address":{"city":"London","country":"GB","street":"12 Analytical Row"},"roles":["admin","ops"],"preferences":{"theme":"dark","language":"en-GB","notifications":{"email":true,"sms":false}},"history":[{"at":"2026-01-01","event":"login"},{"at":"2026-02-01","event":"upgrade"}],"note":"A profile document of about five hundred bytes for the merge scenario."}'; }
    location /v1/ { return 200 '{}'; }
  }
}
EOF
"$NGINX" -p "$tmp/nginx/" -c "$tmp/upstream.conf" -e "$tmp/nginx/error.log" -g 'daemon off;' &
pids+=($!)
for _ in $(seq 50); do curl -fsS -o /dev/null "http://127.0.0.1:$up/user" 2>/dev/null && break; sleep 0.1; done

config() { # PORT EXTRA_CONFIG ENDPOINT
  cat <<EOF
{"version": 3, "listen_ip": "127.0.0.1", "port": $1, "host": ["http://127.0.0.1:$up"], "timeout": "3s",
 "extra_config": $2, "endpoints": [$3]}
EOF
}
PLAIN='{"endpoint": "/user", "output_encoding": "no-op", "backend": [{"url_pattern": "/user", "encoding": "no-op"}]}'
SHAPE='{"endpoint": "/user", "backend": [{"url_pattern": "/user", "allow": ["id", "name", "address.city"], "mapping": {"name": "full_name"}, "group": "user"}]}'
MERGE='{"endpoint": "/user", "backend": [{"url_pattern": "/user"}, {"url_pattern": "/profile"}]}'
telemetry() { # PROMETHEUS_PORT
  echo "{\"telemetry/opentelemetry\": {\"service_name\": \"weir-bench\", \"metric_reporting_period\": 1, \"trace_sample_rate\": 0.1,
    \"exporters\": {\"prometheus\": [{\"name\": \"local\", \"port\": $1, \"listen_ip\": \"127.0.0.1\"}],
    \"otlp\": [{\"name\": \"collector\", \"host\": \"127.0.0.1\", \"port\": $up, \"use_http\": true}]}}}"
}

# measure NAME EXTRA_CONFIG ENDPOINT [HEADER]: prints "NAME  instructions/request  requests".
measure() {
  local name=$1 p pid ir requests header=()
  [[ $name =~ ${ONLY:-.} ]] || return 0
  [ -z "${4:-}" ] || header=(-H "$4")
  p=$(port)
  config "$p" "$2" "$3" >"$tmp/weir.json"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$tmp/callgrind.out" \
    "$WEIR_BIN" run -c "$tmp/weir.json" --workers 1 >"$tmp/weir.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 300); do curl -fsS -o /dev/null "${header[@]}" "http://127.0.0.1:$p/user" 2>/dev/null && break; sleep 0.1; done
  wrk -t1 -c8 -d2s "${header[@]}" "http://127.0.0.1:$p/user" >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  requests=$(wrk -t1 -c8 -d"${WINDOW}s" "${header[@]}" "http://127.0.0.1:$p/user" | awk '/requests in/ {print $1}')
  callgrind_control -i off "$pid" >/dev/null 2>&1
  kill -INT "$pid"
  wait "$pid" 2>/dev/null || true
  ir=$(callgrind_annotate "$tmp/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP" && mv "$tmp/callgrind.out" "$KEEP/callgrind.${name//[^a-z0-9]/-}.out"
  fi
  rm -f "$tmp"/callgrind.out*
  printf '%-36s %10d %10d\n' "$name" $((ir / requests)) "$requests"
}

printf '%-36s %10s %10s\n' scenario instr/req requests
measure "no-op proxy" '{}' "$PLAIN"
measure "no-op + telemetry" "$(telemetry "$(port)")" "$PLAIN"
measure "json allow+mapping+group" '{}' "$SHAPE"
measure "json + telemetry" "$(telemetry "$(port)")" "$SHAPE"
measure "2 backends merged" '{}' "$MERGE"

# JWT (RS256, local JWK, cache on) + rate limit + telemetry, as run.sh's scenario 5.
if command -v openssl >/dev/null && command -v python3 >/dev/null; then
  openssl genrsa -out "$tmp/key.pem" 2048 2>/dev/null
  token=$(python3 tests/bench/make_jwt.py "$tmp/key.pem" "$tmp/jwk.json")
  POLICY='{"endpoint": "/user", "extra_config": {
    "auth/validator": {"alg": "RS256", "jwk_local_path": "'"$tmp"'/jwk.json", "disable_jwk_security": true, "cache": true,
      "issuer": "https://auth.bench.local", "audience": ["weir-bench"], "roles_key": "roles", "roles": ["user"]},
    "qos/ratelimit/router": {"max_rate": 10000000, "every": "1s", "client_max_rate": 10000000, "strategy": "ip"}},
    "backend": [{"url_pattern": "/user", "allow": ["id", "name", "address.city"], "mapping": {"name": "full_name"}, "group": "user"}]}'
  PROMETHEUS_ONLY="{\"telemetry/opentelemetry\": {\"service_name\": \"weir-bench\", \"metric_reporting_period\": 1,
    \"exporters\": {\"prometheus\": [{\"name\": \"local\", \"port\": $(port), \"listen_ip\": \"127.0.0.1\"}]}}}"
  measure "jwt+ratelimit+telemetry" "$PROMETHEUS_ONLY" "$POLICY" "Authorization: Bearer $token"
fi
