#!/usr/bin/env bash
# Property-based tests of the management API and the portal API with schemathesis: it reads
# each API's own OpenAPI document and sends generated requests to every operation: to the
# management API as an admin, as a node and with no credentials, to the portal as a signed-in
# developer and with no credentials. Every answer must be documented for its operation, match the
# documented schema and media type, and none may be a 5xx. Runs against `weir-control dev`
# on free loopback ports, in a temporary data directory; stops by itself.
#
#   tests/api-fuzz.sh            # 30 examples per operation and caller (tests/run.sh)
#   EXAMPLES=500 tests/api-fuzz.sh
#
# DELETE operations are left out of the admin run: revoking the token the run uses would
# turn the rest of it into 401s (revocation is covered by the integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."

EXAMPLES=${EXAMPLES:-30}
BIN=${WEIR_CONTROL_BIN:-target/debug/weir-control}
[ -x "$BIN" ] || { echo "api-fuzz.sh: $BIN is missing: cargo build --bins first" >&2; exit 1; }

venv=target/tools/api-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "--> installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check schemathesis
fi

tmp=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api=$(port)
portal=$(port)
WEIR_LOG=warn "$BIN" dev --data-dir "$tmp/data" --listen "127.0.0.1:$api" --gateway-port "$(port)" \
  --demo-port "$(port)" --portal-port "$portal" >"$tmp/dev.log" 2>&1 &
pid=$!
for _ in $(seq 200); do
  curl -sf "http://127.0.0.1:$api/api/v1/ready" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$tmp/dev.log" >&2; exit 1; }
  sleep 0.1
done
admin=$(cat "$tmp/data/admin-token")
node=$(curl -sf -H "Authorization: Bearer $admin" -d '{"name":"api-fuzz"}' \
  "http://127.0.0.1:$api/api/v1/gateways/demo/environments/dev/node-tokens" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

credentials='{"email":"api-fuzz@example.com","password":"a long enough password"}'
curl -sf -H 'content-type: application/json' -d "$credentials" "http://127.0.0.1:$portal/api/v1/signup" >/dev/null
developer=$(curl -sf -H 'content-type: application/json' -d "$credentials" "http://127.0.0.1:$portal/api/v1/tokens" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
# Request bodies are documented by example, not by schema, so "a schema-valid body must be
# accepted" (positive_data_acceptance) does not apply; every other check does.
checks=(--checks all --exclude-checks positive_data_acceptance --max-examples "$EXAMPLES" --no-color)
total=0
run() { # LABEL SCHEMA ARGS...
  local label=$1 schema=$2
  shift 2
  echo "--> schemathesis as $label"
  if ! (cd "$tmp" && "$OLDPWD/$venv/bin/schemathesis" run "$schema" "${checks[@]}" "$@" >"$tmp/$label.txt" 2>&1); then
    sed -n '/FAILURES/,$p' "$tmp/$label.txt" >&2
    echo "api-fuzz.sh: schemathesis found failures as $label" >&2
    exit 1
  fi
  local line
  line=$(grep -Eo '[0-9]+ generated, [0-9]+ passed' "$tmp/$label.txt" | tail -1)
  echo "    $line"
  total=$((total + ${line%% generated*}))
}
management="http://127.0.0.1:$api/api/v1/openapi.json"
run admin "$management" -H "Authorization: Bearer $admin" --exclude-method DELETE
run node "$management" -H "Authorization: Bearer $node" --include-path-regex '/(bundle|status|v1/metrics)'
run anonymous "$management"
portal_schema="http://127.0.0.1:$portal/api/v1/openapi.json"
run developer "$portal_schema" -H "Authorization: Bearer $developer"
run portal-anonymous "$portal_schema"
echo "api-fuzz: $total generated requests, no failures"
