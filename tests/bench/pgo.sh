#!/usr/bin/env bash
# Builds weir with profile-guided optimisation (PGO): an instrumented build serves the load
# benchmark's scenarios (tests/bench/run.sh, one short round), and the release build is
# compiled again with the profile that run recorded, so that LLVM lays out and inlines the
# request path as it actually runs. The binary is target/pgo/release/weir, and its path is
# the one line this script prints; the plain release build (target/release/weir) is left as
# it is.
#
#   tests/bench/pgo.sh                                   # build target/pgo/release/weir
#   WEIR_BIN=target/pgo/release/weir tests/bench/run.sh  # then measure it
#
# Needs what run.sh needs (nginx, wrk, curl) and llvm-profdata of the Rust toolchain's own
# LLVM (rustup's llvm-tools component, added when missing). Two release builds and a short
# benchmark: about 20 minutes on 2 cores. Loopback only; stops by itself.
set -Eeuo pipefail
trap 'echo "pgo.sh: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
log() { printf '%s\n' "$*" >&2; }

HOST=$(rustc -vV | awk '/^host:/ {print $2}')
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"
if [[ ! -x $PROFDATA ]]; then
    log "llvm-profdata is missing: adding rustup's llvm-tools component"
    rustup component add llvm-tools >&2 || rustup component add llvm-tools-preview >&2
fi
[[ -x $PROFDATA ]] || {
    log "error: $PROFDATA not found (rustup component add llvm-tools)"
    exit 1
}

# Each build has its own target directory: other flags would rebuild the usual one.
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET = /* ]] || TARGET=$ROOT/$TARGET
GEN_TARGET=$TARGET/pgo-generate
USE_TARGET=$TARGET/pgo
DATA=$GEN_TARGET/profiles
rm -rf "$DATA"
mkdir -p "$DATA"

log "1/3 instrumented build"
RUSTFLAGS="-Cprofile-generate=$DATA" CARGO_TARGET_DIR=$GEN_TARGET \
    cargo build --release --locked -p weir-gateway --bin weir >&2

log "2/3 recording a profile: every benchmark scenario, one short round"
DURATION=${PGO_DURATION:-3} WARMUP=1 ROUNDS=1 WEIR_BIN=$GEN_TARGET/release/weir \
    RESULTS_MD=$GEN_TARGET/training-results.md "$ROOT/tests/bench/run.sh" >&2
shopt -s nullglob
raw=("$DATA"/*.profraw)
((${#raw[@]} > 0)) || {
    log "error: the instrumented weir wrote no profile to $DATA"
    exit 1
}
"$PROFDATA" merge -o "$DATA/merged.profdata" "${raw[@]}"
# Named by its content: cargo tells builds apart by their flags, not by the files the flags
# name, so a new profile under the same name would leave every dependency built with the old.
profile=$DATA/weir-$(sha256sum "$DATA/merged.profdata" | cut -c1-16).profdata
mv "$DATA/merged.profdata" "$profile"

log "3/3 release build with the profile"
RUSTFLAGS="-Cprofile-use=$profile" CARGO_TARGET_DIR=$USE_TARGET \
    cargo build --release --locked -p weir-gateway --bin weir >&2
log "built $USE_TARGET/release/weir"
echo "$USE_TARGET/release/weir"
