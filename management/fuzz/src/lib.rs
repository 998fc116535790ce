//! The control plane's fuzz harnesses, one module per cargo-fuzz target, each with a
//! `run(data)` that panics where an invariant does not hold. libFuzzer drives them
//! through `fuzz_targets/` (`cargo +nightly fuzz run --features libfuzzer <target>`);
//! `tests/corpus.rs` replays the committed corpora through them in `cargo test`, so
//! the regression seeds are checked on stable Rust too.
// A harness reports a broken invariant by panicking: its `expect`s are assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod otlp;
