#!/usr/bin/env bash
# OTLP over gRPC end to end: a `weir` node with an `exporters.otlp[]` entry without
# `use_http` (KrakenD's default, gRPC) sends its metrics and spans to a collector built from
# the OpenTelemetry project's own Python classes (opentelemetry-proto on grpcio). The
# collector refuses the first export with UNAVAILABLE; the node must log the gRPC status,
# keep serving, and the next exports must carry exactly the requests sent: the request
# count in the duration histogram, and a server span with a linked client span each.
# Loopback only; stops by itself (30 s at most).
#
#   tests/otlp-grpc.sh        # run by tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${WEIR_BIN:-target/debug/weir}
REQUESTS=25
[ -x "$BIN" ] || { echo "otlp-grpc.sh: $BIN is missing: cargo build --bins first" >&2; exit 1; }

venv=target/tools/otlp-venv
if ! "$venv/bin/python" -c 'import grpc, opentelemetry.proto' 2>/dev/null; then
  echo "--> installing grpcio and opentelemetry-proto into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check grpcio opentelemetry-proto
fi

tmp=$(mktemp -d)
collector= node=
cleanup() {
  for p in $node $collector; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT

"$venv/bin/python" tests/otlp-grpc/collector.py "$tmp/ports" "$REQUESTS" 30 >"$tmp/collector.out" 2>&1 &
collector=$!
for _ in $(seq 100); do [ -s "$tmp/ports" ] && break; sleep 0.1; done
[ -s "$tmp/ports" ] || { cat "$tmp/collector.out" >&2; echo "otlp-grpc.sh: the collector did not start" >&2; exit 1; }
read -r grpc_port backend_port <"$tmp/ports"
gateway_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

cat >"$tmp/krakend.json" <<EOF
{"version": 3, "port": $gateway_port, "listen_ip": "127.0.0.1", "host": ["http://127.0.0.1:$backend_port"],
 "extra_config": {"telemetry/opentelemetry": {"service_name": "grpc-test", "metric_reporting_period": 1,
   "trace_sample_rate": 1, "exporters": {"otlp": [{"name": "agent", "host": "127.0.0.1", "port": $grpc_port}]}}},
 "endpoints": [{"endpoint": "/user", "backend": [{"url_pattern": "/user"}]}]}
EOF
WEIR_LOG=info "$BIN" run -c "$tmp/krakend.json" >"$tmp/node.log" 2>&1 &
node=$!
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$gateway_port/__health" 2>/dev/null && break; sleep 0.1; done

for _ in $(seq "$REQUESTS"); do
  curl -fsS -o /dev/null "http://127.0.0.1:$gateway_port/user"
done

status=0
wait "$collector" || status=$?
collector=
echo "collector saw: $(cat "$tmp/collector.out")"
if [ "$status" != 0 ]; then
  echo "otlp-grpc.sh: the collector did not get the expected metrics and spans; node log:" >&2
  tail -n 30 "$tmp/node.log" >&2
  exit 1
fi
if ! grep -q "gRPC status 14: warming up" "$tmp/node.log"; then
  echo "otlp-grpc.sh: the refused export was not logged with its gRPC status; node log:" >&2
  tail -n 30 "$tmp/node.log" >&2
  exit 1
fi
kill -0 "$node" || { echo "otlp-grpc.sh: the node exited" >&2; exit 1; }
echo "otlp-grpc.sh: $REQUESTS requests arrived over OTLP/gRPC as metrics and spans; the refused export was logged"
