//! What the agent serves over HTTP (`--listen`): signed download links.
//! One listener, one router; each page is its own module with its routes.

pub mod chart;
pub mod links;
pub mod metrics;
pub mod status;

use std::sync::Arc;

use anyhow::Result;
use axum::http::StatusCode;
use axum::Router;

use crate::ctx::Ctx;
use crate::shutdown::{Phase, Shutdown};

/// What every handler gets.
#[derive(Clone)]
pub struct Served {
    pub ctx: Arc<Ctx>,
    /// The link secret, the same as backups.link_secret.
    pub secret: Arc<Vec<u8>>,
}

/// Serve on `listener` (bound by the caller, so that a taken port is a
/// start-up error) until the agent drains.
pub async fn serve(
    ctx: Arc<Ctx>,
    listener: tokio::net::TcpListener,
    secret: Vec<u8>,
    mut shutdown: Shutdown,
) -> Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "serving download links");
    let app = Router::new()
        .merge(links::routes())
        .merge(metrics::routes())
        .merge(status::routes())
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(Served { ctx, secret: Arc::new(secret) });
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.reached(Phase::Draining).await }).await?;
    Ok(())
}
