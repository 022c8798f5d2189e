//! What the agent serves over HTTP (`--listen`): signed download links.
//! One listener, one router; each page is its own module with its routes.

pub mod chart;
pub mod links;
pub mod metrics;
pub mod status;

use std::sync::Arc;

use std::time::Duration;

use anyhow::{Context, Result};
use axum::http::StatusCode;
use axum::Router;

use crate::ctx::Ctx;
use crate::pg::conn;
use crate::shutdown::{Phase, Shutdown};

/// What every handler gets.
#[derive(Clone)]
pub struct Served {
    pub ctx: Arc<Ctx>,
    /// The link secret, the same as backups.link_secret.
    pub secret: Arc<Vec<u8>>,
    /// Download links served at once (`--max-downloads`).
    pub downloads: Arc<tokio::sync::Semaphore>,
}

/// Serve on `listener` (bound by the caller, so that a taken port is a
/// start-up error), at most `max_downloads` downloads at once, until the
/// agent drains.
pub async fn serve(
    ctx: Arc<Ctx>,
    listener: tokio::net::TcpListener,
    secret: Vec<u8>,
    max_downloads: usize,
    mut shutdown: Shutdown,
) -> Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "serving download links");
    let app = Router::new()
        .merge(links::routes())
        .merge(metrics::routes())
        .merge(status::routes())
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(Served {
            downloads: Arc::new(tokio::sync::Semaphore::new(max_downloads)),
            ctx,
            secret: Arc::new(secret),
        });
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.reached(Phase::Draining).await }).await?;
    Ok(())
}

/// `backups._overview(charts)`, what the status page and /metrics show, on
/// a connection of its own, within `patience` (connecting included). The
/// server gives up on the query when this side does (its own
/// statement_timeout): an abandoned query never runs on.
pub async fn overview(ctx: &Ctx, charts: bool, patience: Duration) -> Result<serde_json::Value> {
    let read = async {
        let control = conn::connect(ctx.cfg.control()?).await?;
        control.batch_execute(&format!("SET statement_timeout = {}", patience.as_millis().max(1))).await?;
        let row = control
            .query_one("SELECT backups._overview($1)", &[&charts])
            .await
            .context("reading backups._overview()")?;
        Ok::<_, anyhow::Error>(row.get(0))
    };
    tokio::time::timeout(patience, read)
        .await
        .map_err(|_| anyhow::anyhow!("the control database did not answer within {patience:?}"))?
}
