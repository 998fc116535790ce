//! The gateway's fuzz harnesses, one module per cargo-fuzz target, each with a
//! `run(data)` that panics where an invariant does not hold. libFuzzer drives them
//! through `fuzz_targets/` (`cargo +nightly fuzz run --features libfuzzer <target>`);
//! `tests/corpus.rs` replays the committed corpora through them in `cargo test`, so
//! the regression seeds are checked on stable Rust too.
//!
//! Also what the targets share: reading settings out of the fuzz input, and the test
//! fixtures some targets load. Every target splits its input the same way: a first
//! line of control bytes that picks settings (formats, field names, operations), then
//! the data itself. Seeds stay readable text, and libFuzzer mutates settings and data
//! together.
// A harness reports a broken invariant by panicking: its `expect`s are assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bundle;
pub mod config;
pub mod corpus;
pub mod http_request;
pub mod jwt;
pub mod manipulate;
pub mod url_pattern;

use std::path::PathBuf;

/// Control bytes, read one at a time; an exhausted input reads as zeros so that every
/// input, however short, selects something.
pub struct Control<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Control<'a> {
    /// Control bytes read from the first.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    /// The next byte, or 0 past the end.
    pub fn byte(&mut self) -> u8 {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    /// The lowest bit of the next byte.
    pub fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// One of `items` (non-empty).
    pub fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[self.below(items.len())]
    }
}

/// Splits an input at its first newline: control bytes, then the rest. Without a
/// newline everything is data.
pub fn split_control(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[], data),
    }
}

/// A file of the repository's `tests/fixtures`, found from this crate's directory.
pub fn fixture(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(relative)
}

/// Whether `WEIR_FUZZ_PRINT` is set: targets then print what the gateway answered, for
/// replaying one input:
/// `WEIR_FUZZ_PRINT=1 cargo +nightly fuzz run --features libfuzzer <target> <file>`.
pub fn replaying() -> bool {
    static PRINT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRINT.get_or_init(|| std::env::var_os("WEIR_FUZZ_PRINT").is_some())
}
