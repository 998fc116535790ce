#!/usr/bin/env bash
# Every check and test of the project, as CI runs it: formatting, lints, the
# binaries the end-to-end tests start, then all unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build the binaries the end-to-end tests run"
cargo build --workspace --bins --locked

step "tests"
cargo test --workspace --locked
