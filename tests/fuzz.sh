#!/usr/bin/env bash
# Runs every cargo-fuzz target of the gateway (gateway/fuzz) and of the control plane
# (management/fuzz) for a fixed time each, then prints a table of executions and crashes.
#
#   tests/fuzz.sh            # 600 s per target
#   tests/fuzz.sh 60         # 60 s per target
#   tests/fuzz.sh --smoke    # 10 s per target
#
# Both crates are built with `cargo +nightly fuzz build -O -a --features libfuzzer` into
# target/fuzz: optimised, with AddressSanitizer, and with debug assertions and overflow
# checks (cargo-fuzz's -O alone turns those off, and an overflow is a finding). The
# `libfuzzer` feature builds the targets; the workspace's stable builds leave it off, and
# `cargo test` replays the committed corpora through the same harnesses. The crates'
# .cargo/config.toml keeps the workspace's release profile (fat LTO) out of these builds.
#
# Each target reads its committed seeds (<crate>/fuzz/corpus/<target>) and
# target/fuzz-corpus/<target>, and writes the new inputs it finds only to the latter, so
# the committed corpus does not churn. Targets listen, when they do, on 127.0.0.1 only,
# and every run stops by itself (-max_total_time, with `timeout` as a backstop).
#
# Exits 1 if a target crashed, timed out or ran out of memory, naming the input that
# did it (<crate>/fuzz/artifacts/<target>/) and how to replay and minimise it.
set -Eeuo pipefail
trap 'echo "fuzz.sh: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CRATES=(gateway/fuzz management/fuzz)
# libFuzzer's per-input limits: an input taking longer is a hang, one using more is a leak
# or a blow-up; both are findings.
PER_INPUT_TIMEOUT=10
RSS_LIMIT_MB=2048
# Optimised, AddressSanitizer, debug assertions; the feature that builds the targets.
FUZZ_FLAGS=(-O -a --features libfuzzer)

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "${1:-600}" in
  --smoke) SECONDS_PER_TARGET=10 ;;
  -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *[!0-9]* | '') die "usage: tests/fuzz.sh [SECONDS_PER_TARGET | --smoke]" ;;
  *) SECONDS_PER_TARGET=$1 ;;
esac
[ "$SECONDS_PER_TARGET" -gt 0 ] || die "SECONDS_PER_TARGET must be above zero"

# libFuzzer and -Zsanitizer need nightly; cargo-fuzz drives them.
cargo +nightly --version >/dev/null 2>&1 ||
  die "no nightly toolchain: install one with \`rustup toolchain install nightly\`"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  log "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export CARGO_TARGET_DIR="$ROOT/target/fuzz"
SCRATCH="$ROOT/target/fuzz-corpus"
LOGS="$ROOT/target/fuzz-logs"
mkdir -p "$SCRATCH" "$LOGS"

for crate in "${CRATES[@]}"; do
  log "==> cargo +nightly fuzz build ${FUZZ_FLAGS[*]} ($crate)"
  started=$(date +%s)
  (cd "$ROOT/$crate" && cargo +nightly fuzz build "${FUZZ_FLAGS[@]}")
  log "    built in $(($(date +%s) - started)) s"
done

rows=()
failures=()
for crate in "${CRATES[@]}"; do
  targets=$(cd "$ROOT/$crate" && cargo +nightly fuzz list)
  for target in $targets; do
    committed="$ROOT/$crate/corpus/$target"
    scratch="$SCRATCH/$target"
    logfile="$LOGS/$target.log"
    mkdir -p "$committed" "$scratch"
    log "==> $target: ${SECONDS_PER_TARGET} s (log: ${logfile#"$ROOT"/})"
    started=$(date +%s)
    status=0
    # The first corpus directory is where libFuzzer writes what it finds.
    (cd "$ROOT/$crate" && timeout --kill-after=30 $((SECONDS_PER_TARGET + 300)) \
      cargo +nightly fuzz run "${FUZZ_FLAGS[@]}" "$target" "$scratch" "$committed" -- \
      -max_total_time="$SECONDS_PER_TARGET" -timeout="$PER_INPUT_TIMEOUT" -rss_limit_mb="$RSS_LIMIT_MB" \
      -print_final_stats=1) >"$logfile" 2>&1 || status=$?
    elapsed=$(($(date +%s) - started))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logfile" | tail -1)
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$logfile" | tail -1)
    if [ "$status" -eq 0 ]; then
      outcome=0
    else
      kind=crash
      grep -q 'ERROR: libFuzzer: timeout' "$logfile" && kind=timeout
      grep -q 'ERROR: libFuzzer: out-of-memory' "$logfile" && kind=out-of-memory
      [ "$status" -eq 124 ] && kind="no exit after $((SECONDS_PER_TARGET + 300)) s"
      outcome="1 ($kind)"
      input=${artifact#"$ROOT/$crate"/}
      failures+=("$target: $kind; input: ${artifact:+$crate/}${input:-"(none written; see ${logfile#"$ROOT"/})"}")
      panic=$(grep -m1 -A1 'panicked at' "$logfile" | tr '\n' ' ' || true)
      [ -z "$panic" ] || failures+=("  $panic")
      frame=$(grep -m1 -oE '(gateway|management)/src/[^ ]+:[0-9]+:[0-9]+' "$logfile" || true)
      [ -z "$frame" ] || failures+=("  first Weir frame: $frame")
      if [ -n "$artifact" ]; then
        failures+=("  replay:   (cd $crate && cargo +nightly fuzz run ${FUZZ_FLAGS[*]} $target $input)")
        failures+=("  minimise: (cd $crate && cargo +nightly fuzz tmin ${FUZZ_FLAGS[*]} $target $input)")
      fi
    fi
    rows+=("$target|$elapsed|${execs:-?}|$outcome")
  done
done

printf '\n%-14s %8s %14s  %s\n' target seconds execs crashes
for row in "${rows[@]}"; do
  IFS='|' read -r target elapsed execs outcome <<<"$row"
  printf '%-14s %8s %14s  %s\n' "$target" "$elapsed" "$execs" "$outcome"
done

if [ "${#failures[@]}" -gt 0 ]; then
  log ""
  for line in "${failures[@]}"; do log "$line"; done
  exit 1
fi
