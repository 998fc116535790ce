//! The control plane's rules, apart from storage and HTTP.

pub mod access;
pub mod annotate;
pub mod diff;
pub mod fleet;
pub mod otlp_proto;
pub mod signing;
pub mod traffic;
pub mod upload;
