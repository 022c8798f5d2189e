//! `pgbackups agent`: LISTEN for work, poll as well (a NOTIFY sent while the
//! agent was disconnected is lost), claim up to `max_concurrent` transfers,
//! run them, purge deleted and expired backups. Survives the control
//! database going away; on SIGTERM/SIGINT stops claiming, lets running
//! transfers finish within the grace period, then hands them back.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tracing::Instrument;

use crate::capture::{self, Outcome};
use crate::config::Config;
use crate::queue::{self, Lost, Reporter, Transfer};
use crate::storage::Storage;
use crate::{copy, db, links, purge, restore};

pub struct Ctx {
    pub cfg: Config,
    pub storage: Storage,
}

const PURGE_EVERY: Duration = Duration::from_secs(10);

pub async fn run(cfg: Config) -> Result<()> {
    let storage = Storage::open(&cfg.storage, &cfg.storage_options, cfg.storage_retry_timeout)?;
    let ctx = Arc::new(Ctx { cfg, storage });
    capture::tool_version(&ctx, "pg_dump").await?;
    let url = ctx.cfg.database_url.clone();
    let mut control =
        db::connect_with_retry(&url, Duration::from_secs(10)).await.context("cannot reach the control database")?;
    let sources: Vec<String> = ctx.cfg.sources.keys().cloned().collect();
    queue::announce(&control, &ctx.cfg.agent_id, &sources).await?;
    tracing::info!(agent = %ctx.cfg.agent_id, storage = %ctx.storage.url, max_concurrent = ctx.cfg.max_concurrent, "agent started");

    if let (Some(addr), Some(secret)) = (ctx.cfg.listen, ctx.cfg.link_secret.clone()) {
        let (c, s) = (ctx.clone(), secret.into_bytes());
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tokio::spawn(async move {
            if let Err(e) = links::serve(c, listener, s).await {
                tracing::error!("download links: {e:#}");
            }
        });
    }
    let (wake_tx, mut wake) = mpsc::channel::<String>(64);
    let mut listener = listen(&url, wake_tx.clone()).await.ok();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = Box::pin(shutdown_signal());
    let mut tasks = JoinSet::new();
    let mut last_purge = tokio::time::Instant::now() - PURGE_EVERY;

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = wake.recv() => {}
            _ = tokio::time::sleep(ctx.cfg.poll_interval) => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
        if control.is_closed() {
            tracing::warn!("control database connection lost; reconnecting");
            match db::connect(&url).await {
                Ok(c) => control = c,
                Err(e) => {
                    tracing::warn!("{e:#}");
                    continue;
                }
            }
        }
        if listener.as_ref().is_none_or(|h| h.is_finished()) {
            listener = listen(&url, wake_tx.clone()).await.ok();
        }
        if let Err(e) = queue::announce(&control, &ctx.cfg.agent_id, &sources).await {
            tracing::warn!("{e:#}");
            continue;
        }
        if last_purge.elapsed() >= PURGE_EVERY {
            last_purge = tokio::time::Instant::now();
            if let Err(e) = purge::purge(&control, &ctx.storage).await {
                tracing::warn!("purge: {e:#}");
            }
        }
        while tasks.len() < ctx.cfg.max_concurrent {
            match queue::claim(&control, &ctx.cfg.agent_id, &sources).await {
                Ok(Some(t)) => {
                    tasks.spawn(run_transfer(ctx.clone(), t, stop_rx.clone()));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("{e:#}");
                    break;
                }
            }
        }
    }

    // Shutdown: no more claims; running transfers get the grace period.
    if !tasks.is_empty() {
        tracing::info!(running = tasks.len(), grace = ?ctx.cfg.shutdown_grace, "shutting down: waiting for running transfers");
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(ctx.cfg.shutdown_grace, drain).await.is_err() {
            tracing::info!("grace period over: handing running transfers back to the queue");
            let _ = stop_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(30), async { while tasks.join_next().await.is_some() {} })
                .await;
        }
    }
    let _ = control.execute("DELETE FROM backups.agents WHERE agent_id = $1", &[&ctx.cfg.agent_id]).await;
    tracing::info!("agent stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A connection that LISTENs on the extension's channel and forwards each
/// notification's payload to `wake`. The returned task ends when the
/// connection does.
async fn listen(url: &str, wake: mpsc::Sender<String>) -> Result<tokio::task::JoinHandle<()>> {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.batch_execute("LISTEN pg_backups").await?;
    Ok(tokio::spawn(async move {
        let _keep: Client = client;
        while let Some(payload) = rx.recv().await {
            let _ = wake.try_send(payload);
        }
    }))
}

async fn run_transfer(ctx: Arc<Ctx>, t: Transfer, stop: watch::Receiver<bool>) {
    let span = tracing::info_span!("transfer", name = %t.name, kind = %t.kind, attempt = t.attempt);
    async move {
        tracing::info!("claimed");
        let rep = match Reporter::new(&ctx.cfg.database_url, t.clone(), &ctx.cfg.agent_id).await {
            Ok(r) => r,
            Err(e) => {
                // The worker requeues it when the heartbeat stays silent.
                tracing::error!("cannot report on the transfer: {e:#}");
                return;
            }
        };
        rep.log("info", &format!("claimed by agent {} (attempt {})", ctx.cfg.agent_id, t.attempt)).await;
        let result = match t.kind.as_str() {
            "capture" => capture::run(ctx.clone(), &rep, stop).await,
            "restore" => restore::run(ctx.clone(), &rep, stop).await,
            "copy" => copy::run(ctx.clone(), &rep, stop).await,
            other => Err(anyhow::anyhow!("this agent cannot run {other} transfers")),
        };
        let written = match result {
            Ok(Outcome::Completed) => {
                tracing::info!("completed");
                Ok(())
            }
            Ok(Outcome::Cancelled) => {
                tracing::info!("cancelled");
                rep.log("info", "cancelled; nothing was kept in storage").await;
                rep.cancelled().await
            }
            Ok(Outcome::HandBack) => rep.hand_back("the agent is shutting down").await,
            Err(e) if e.is::<Lost>() => Err(e),
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::warn!("failed: {msg}");
                rep.log("error", &msg).await;
                rep.failed(&msg).await
            }
        };
        if let Err(e) = written {
            tracing::warn!("{e:#}");
        }
    }
    .instrument(span)
    .await
}
