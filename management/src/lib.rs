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
pub mod portal_store;
pub mod store;
pub mod ui;

/// Serves the management API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: api::AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
