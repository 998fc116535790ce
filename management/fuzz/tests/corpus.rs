//! The committed corpora (`corpus/<target>`) replayed through the harnesses that
//! libFuzzer drives, failing with the name of every seed whose invariants broke.
//!
//! One test, alone in this binary: a panic on any thread of the process counts against
//! the seed being replayed (see `weir_gateway_fuzz::corpus`).

use std::path::Path;

use weir_gateway_fuzz::corpus::replay_all;
use weir_management_fuzz::otlp;

#[test]
fn every_seed_passes_its_target() {
    replay_all(Path::new(env!("CARGO_MANIFEST_DIR")), |target| match target {
        "otlp" => Some(otlp::run),
        _ => None,
    });
}
