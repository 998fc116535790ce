//! End-to-end tests: real gateways and backends on port 0, real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aggregation;
mod backends;
mod bundles;
mod cli;
mod encodings;
mod faults;
mod http1;
mod policies;
mod routing;
mod sequential;
mod server;
mod support;
