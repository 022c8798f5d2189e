//! `pgbackups agent`: LISTEN for work, poll as well (a NOTIFY sent while the
//! agent was disconnected is lost), claim up to `max_concurrent` transfers
//! and hand each to a supervisor. Beside the claim loop, on connections of
//! their own: the purge of deleted and expired backups, the HTTP listener
//! (download links, /metrics) and webhook deliveries. Survives the control
//! database going away; on SIGTERM or SIGINT it drains (no new claims;
//! running transfers go on for the grace period), then hands what still
//! runs back to the queue.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tokio_postgres::{AsyncMessage, Client};

use crate::config::Config;
use crate::ctx::Ctx;
use crate::pg::tools::bins::Bins;
use crate::pg::{self, conn};
use crate::serve;
use crate::shutdown::{self, Phase};
use crate::staging::StagingArea;
use crate::store::purge;
use crate::store::storage::Storage;
use crate::telemetry::Telemetry;
use crate::transfer::report::CALL_TIMEOUT;
use crate::transfer::{queue, supervisor};
use crate::webhook::{self, Hooks};

pub async fn run(cfg: Config) -> Result<()> {
    let storage = Storage::open(&cfg.store)?;
    let bins = Bins::discover(&cfg.pg_bin_dir).await?;
    let staging = StagingArea::claim(&cfg.staging_dir, &cfg.agent_id);
    let telemetry = Telemetry::new(&cfg.agent_id);
    let (hooks, hook_queue) = Hooks::new(&cfg.webhooks);
    // Webhook deliveries run apart, and outlive the drain by a short grace.
    let hooks_stop = tokio_util::sync::CancellationToken::new();
    let deliveries = hook_queue.map(|q| tokio::spawn(webhook::deliver(cfg.webhooks.clone(), q, hooks_stop.clone())));
    let ctx = Arc::new(Ctx { cfg, storage, staging, bins, telemetry, hooks });
    let url = ctx.cfg.control()?.to_string();
    let mut control =
        conn::connect_with_retry(&url, Duration::from_secs(10)).await.context("cannot reach the control database")?;
    let agent_id = ctx.cfg.agent_id.clone();
    let sources: Vec<String> = ctx.cfg.sources.keys().cloned().collect();
    queue::announce(&control, &agent_id, &sources).await?;
    // What agents killed before left behind, whose transfers are over.
    pg::cluster::leftovers::sweep(&ctx.cfg);
    let (trigger, shutdown) = shutdown::channel();

    let mut background = JoinSet::new();
    if let Some(listen) = &ctx.cfg.listen {
        let listener = tokio::net::TcpListener::bind(listen.addr)
            .await
            .with_context(|| format!("cannot listen on {}", listen.addr))?;
        let (c, secret, s) = (ctx.clone(), listen.secret.clone().into_bytes(), shutdown.clone());
        let downloads = listen.max_downloads;
        background.spawn(async move {
            if let Err(e) = serve::serve(c, listener, secret, downloads, s).await {
                tracing::error!("the HTTP listener: {e:#}");
            }
        });
    }
    let (purge_wake, purge_woken) = watch::channel(());
    background.spawn(purge::run(url.clone(), ctx.storage.clone(), purge_woken, shutdown.clone()));
    tracing::info!(agent = %agent_id, storage = %ctx.storage.url, max_concurrent = ctx.cfg.max_concurrent, "agent started");
    tracing::info!("PostgreSQL client tools found: {}", ctx.bins.describe());
    if !ctx.cfg.encrypt_to.is_empty() {
        tracing::info!("new backups are encrypted with age to {}", ctx.cfg.encrypt_to.names().join(", "));
    }
    if !ctx.cfg.store.identities.is_empty() {
        tracing::info!("encrypted backups are decrypted with {:?}", ctx.cfg.store.identities);
    }

    let (events, _) = broadcast::channel::<String>(256);
    let mut listener = listen(&url, events.clone()).await.ok();
    let mut heard = events.subscribe();
    let mut stop = Box::pin(stop_signal());
    let mut transfers = JoinSet::new();
    let mut spare: Option<Client> = None;
    // A call that got no answer: the connection is taken for dead.
    let mut stale = false;

    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = heard.recv() => {
                if let Ok(ev) = ev {
                    if ev.starts_with("delete ") || ev.starts_with("keep ") || ev == "expire" {
                        let _ = purge_wake.send(());
                    }
                }
            }
            _ = tokio::time::sleep(ctx.cfg.poll_interval) => {}
            Some(_) = transfers.join_next(), if !transfers.is_empty() => {}
        }
        if control.is_closed() || stale {
            tracing::warn!("control database connection lost; reconnecting");
            match conn::connect(&url).await {
                Ok(c) => {
                    control = c;
                    stale = false;
                }
                Err(e) => {
                    tracing::warn!("{e:#}");
                    continue;
                }
            }
        }
        if listener.as_ref().is_none_or(|h| h.is_finished()) {
            listener = listen(&url, events.clone()).await.ok();
        }
        if let Err(e) = within(queue::announce(&control, &agent_id, &sources)).await {
            tracing::warn!("{e:#}");
            stale = true;
            continue;
        }
        while transfers.len() < ctx.cfg.max_concurrent {
            // The supervisor's own connection first: nothing is claimed
            // without a line to report on it.
            if spare.as_ref().is_none_or(|c| c.is_closed()) {
                match conn::connect(&url).await {
                    Ok(c) => spare = Some(c),
                    Err(e) => {
                        tracing::warn!("not claiming: {e:#}");
                        break;
                    }
                }
            }
            match within(queue::claim(&control, &agent_id, &sources, ctx.cfg.max_per_owner)).await {
                Ok(Some(claimed)) => {
                    let line = spare.take().expect("opened above");
                    transfers.spawn(supervisor::supervise(
                        ctx.clone(),
                        claimed,
                        line,
                        events.subscribe(),
                        shutdown.clone(),
                    ));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("{e:#}");
                    stale = true;
                    break;
                }
            }
        }
    }

    // Drain: no more claims or purges; running transfers get the grace period.
    trigger.enter(Phase::Draining);
    if !transfers.is_empty() {
        tracing::info!(running = transfers.len(), grace = ?ctx.cfg.shutdown_grace, "shutting down: waiting for running transfers");
        let drain = async { while transfers.join_next().await.is_some() {} };
        if tokio::time::timeout(ctx.cfg.shutdown_grace, drain).await.is_err() {
            tracing::info!("grace period over: handing running transfers back to the queue");
            trigger.enter(Phase::HandBack);
            let rest = async { while transfers.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(supervisor::hand_back_patience(&ctx), rest).await;
        }
    }
    hooks_stop.cancel();
    let _ =
        tokio::time::timeout(Duration::from_secs(5), async { while background.join_next().await.is_some() {} }).await;
    if let Some(d) = deliveries {
        // (deliver gives itself 3 s; this bounds it whatever happens.)
        let _ = tokio::time::timeout(Duration::from_secs(5), d).await;
    }
    let _ = queue::retire(&control, &agent_id).await;
    tracing::info!("agent stopped");
    Ok(())
}

/// A call on the control connection, given up after `CALL_TIMEOUT` (a
/// half-open connection would otherwise stall the loop for many minutes).
async fn within<T>(call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from the control database within {CALL_TIMEOUT:?}"))?
}

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A connection that LISTENs on the extension's channel and broadcasts each
/// notification's payload (a transfer name, `cancel b001`, `delete b001`...).
/// The returned task ends when the connection does.
async fn listen(url: &str, events: broadcast::Sender<String>) -> Result<tokio::task::JoinHandle<()>> {
    let (client, mut connection) = conn::open(url).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
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
            let _ = events.send(payload);
        }
    }))
}
