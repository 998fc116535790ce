//! Weir gateway node: runs KrakenD v3 configs.
//!
//! The crate is split the way a request is handled: [`config`] reads and validates a
//! `krakend.json`, [`runtime`] compiles it once into an immutable routing table,
//! [`proxy`] calls backends and shapes their responses, and [`server`] owns the
//! listeners. Nothing on the request path parses or looks anything up by name that
//! could have been prepared when the config was compiled.
#![forbid(unsafe_code)]

pub mod audit;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod error;
pub mod node;
pub mod policy;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod time;

/// The version reported by `weir version` and in the `User-Agent` sent to backends.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
