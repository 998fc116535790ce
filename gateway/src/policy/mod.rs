//! Security and traffic policies: KrakenD's `security/*`, `auth/*` and `qos/*`
//! components, plus Weir's own.
//!
//! Each component is compiled once from its `extra_config` namespace into an
//! immutable value; per request it only reads headers and shared counters. A
//! component's `compile` reports every problem of its settings with the config
//! path, so `weir check` shows them together with the rest of the config.

use crate::config::Problem;

pub mod breaker;
pub mod cache;

/// Problems found while compiling a component's settings.
pub type Problems = Vec<Problem>;

/// A problem at `path` (the namespace path plus the key).
pub fn problem(path: &str, message: impl Into<String>) -> Problem {
    Problem { path: path.to_owned(), message: message.into() }
}
