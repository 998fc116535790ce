//! Weir control plane: config versions, promotion, signed bundles and the node fleet.
//!
//! [`store`] keeps everything in PostgreSQL or SQLite, [`domain`] holds the rules that
//! need no database (access, diffs, fleet states, signing keys, upload checks),
//! [`control`] performs the audited actions, [`api`] serves them over HTTP, and [`cli`]
//! is `weir-control` (including the one-command [`dev`] suite).
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
mod client;
pub mod control;
pub mod dev;
pub mod domain;
pub mod store;

/// Serves the management API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: api::AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, api::router(state)).with_graceful_shutdown(shutdown).await
}
