//! Control-plane tests: the real service on port 0, against real SQLite and PostgreSQL,
//! and real `weir` / `weir-control` processes where a user would run them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod authz;
mod browser;
mod cli;
mod fleet;
mod oidc;
mod portal;
mod resilience;
mod secrets;
mod support;
mod traffic;
mod ui;
