//! The committed corpora (`corpus/<target>`) replayed through the harnesses that
//! libFuzzer drives, failing with the name of every seed whose invariants broke.
//!
//! One test, alone in this binary: a panic on any thread of the process counts against
//! the seed being replayed (see `weir_gateway_fuzz::corpus`).

use std::path::Path;

use weir_gateway_fuzz::corpus::replay_all;
use weir_gateway_fuzz::{bundle, config, http_request, jwt, manipulate, url_pattern};

#[test]
fn every_seed_passes_its_target() {
    replay_all(Path::new(env!("CARGO_MANIFEST_DIR")), |target| match target {
        "bundle" => Some(bundle::run),
        "config" => Some(config::run),
        "http_request" => Some(http_request::run),
        "jwt" => Some(jwt::run),
        "manipulate" => Some(manipulate::run),
        "url_pattern" => Some(url_pattern::run),
        _ => None,
    });
}
