//! Capture: the real pg_dump with Heroku's flags, compressed by the agent
//! and streamed into storage.
//!
//! - default: `pg_dump -Fc -Z0`, its stdout compressed with zstd on all
//!   cores and uploaded as one object, `backup.dump.zst`: no local copy.
//! - `jobs => N`: `pg_dump -Fd -j N -Z0` into a staging directory; each file
//!   is compressed, uploaded and deleted as soon as pg_dump closes it, so the
//!   disk only holds the tables in flight. See `parallel`.
//!
//! Either way a manifest (`manifest.json`) describes the stored files, and
//! the transfer becomes `completed` only after every upload completed and its
//! checksum is recorded.

use std::process::Stdio;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::io::SyncIoBridge;

use crate::agent::Ctx;
use crate::manifest::{FileEntry, Manifest};
use crate::progress::Progress;
use crate::queue::{Beat, Reporter};
use crate::upload::{self, Pipe};
use crate::{db, parallel};

/// How a transfer ended, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Cancelled,
    /// The agent is shutting down: give it back to the queue.
    HandBack,
}

/// The source to dump: a named source from the configuration, or a
/// database of the control cluster. Returns (connection string, label used
/// in storage keys).
pub fn source(ctx: &Ctx, name: Option<&str>, database: &str) -> Result<(String, String)> {
    match name {
        Some(name) => {
            let s = ctx.cfg.sources.get(name).ok_or_else(|| {
                anyhow!(
                    "unknown source {name:?}: define it in the agent configuration as [sources.{name}] url = \"postgres://...\" \
                     (or PGBACKUPS_SOURCE_{}=postgres://...)",
                    name.to_ascii_uppercase()
                )
            })?;
            Ok((s.url.clone(), name.to_string()))
        }
        None => Ok((db::with_dbname(&ctx.cfg.database_url, database)?, database.to_string())),
    }
}

pub async fn tool_version(ctx: &Ctx, tool: &str) -> Result<String> {
    let path = ctx.cfg.pg_tool(tool);
    let out = Command::new(&path).arg("--version").output().await.with_context(|| {
        format!("cannot run {}: install the PostgreSQL client tools or set --pg-bin-dir", path.display())
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// pg_dump's command line, Heroku's flags plus ours.
fn pg_dump(ctx: &Ctx, conn: &str, password: Option<&str>) -> Command {
    let mut c = Command::new(ctx.cfg.pg_tool("pg_dump"));
    c.args(["--no-acl", "--no-owner", "--quote-all-identifiers", "--verbose", "--compress=0"]);
    for s in &ctx.cfg.exclude_schema {
        c.arg(format!("--exclude-schema={s}"));
    }
    if let Some(t) = &ctx.cfg.lock_wait_timeout {
        c.arg(format!("--lock-wait-timeout={t}"));
    }
    c.arg("--dbname").arg(conn);
    if let Some(p) = password {
        c.env("PGPASSWORD", p);
    }
    c.env("PGAPPNAME", "pgbackups").stdin(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    c
}

pub async fn run(ctx: Arc<Ctx>, rep: &Reporter, mut stop: watch::Receiver<bool>) -> Result<Outcome> {
    let t = &rep.transfer;
    let (url, label) = source(&ctx, t.source.as_deref(), &t.database)?;
    let (conn, password) = db::libpq_target(&url, None)?;

    let src = db::connect(&url).await.context("connecting to the source database")?;
    let source_size: i64 = src.query_one("SELECT pg_database_size(current_database())", &[]).await?.get(0);
    let server_version: String = src.query_one("SHOW server_version", &[]).await?.get(0);
    drop(src);
    let pg_dump_version = tool_version(&ctx, "pg_dump").await?;
    let versions =
        serde_json::json!({ "pg_dump": pg_dump_version, "server": server_version, "agent": env!("CARGO_PKG_VERSION") });

    let folder = ctx.storage.backup_dir(&label, &t.name);
    // A retried attempt writes new objects, never over a previous attempt's.
    let suffix = if t.attempt > 1 { format!("-{}", t.attempt) } else { String::new() };
    let mut progress = Progress::new();

    let (format, files) = match t.jobs() {
        None => {
            let key = folder.child(format!("backup{suffix}.dump.zst"));
            rep.started(Some(source_size), "custom", ctx.storage.relative(&key), &versions).await?;
            rep.log(
                "info",
                &format!(
                    "{pg_dump_version}: custom format, compressed by the agent with zstd level {} on all cores",
                    ctx.cfg.compression_level
                ),
            )
            .await;
            let mut cmd = pg_dump(&ctx, &conn, password.as_deref());
            cmd.arg("--format=custom").stdout(Stdio::piped());
            match stream_custom(&ctx, rep, cmd, key.clone(), &mut progress, &mut stop).await? {
                Ended::Done(stored) => (
                    "custom",
                    vec![FileEntry {
                        path: ctx.storage.relative(&key).to_string(),
                        name: "backup.dump".into(),
                        size: progress.processed.load(std::sync::atomic::Ordering::Relaxed),
                        stored_size: stored.size,
                        sha256: stored.sha256,
                    }],
                ),
                Ended::Stopped(o) => return Ok(o),
            }
        }
        Some(jobs) => {
            let prefix = folder.child(format!("dump{suffix}"));
            rep.started(Some(source_size), "directory", ctx.storage.relative(&prefix), &versions).await?;
            rep.log("info", &format!("{pg_dump_version}: directory format with {jobs} jobs, each file compressed and uploaded as pg_dump finishes it")).await;
            let staging = ctx.cfg.staging_dir.join(format!("{}-{}", t.name, t.attempt));
            let mut cmd = pg_dump(&ctx, &conn, password.as_deref());
            cmd.arg("--format=directory")
                .arg(format!("--jobs={jobs}"))
                .arg("--file")
                .arg(&staging)
                .stdout(Stdio::null());
            match parallel::dump(&ctx, rep, cmd, &staging, &prefix, &mut progress, &mut stop).await? {
                parallel::Ended::Done(files) => ("directory", files),
                parallel::Ended::Stopped(o) => return Ok(o),
            }
        }
    };

    let manifest = Manifest::new(t, &label, format, source_size, &versions, files);
    let processed = manifest.files.iter().map(|f| f.size).sum::<u64>() as i64;
    let stored = manifest.files.iter().map(|f| f.stored_size).sum::<u64>() as i64;
    let (manifest_bytes, checksum) = manifest.to_bytes(format)?;
    let manifest_key = folder.child(format!("manifest{suffix}.json"));
    let recorded = async {
        ctx.storage.store.put(&manifest_key, manifest_bytes.into()).await.context("writing the manifest")?;
        progress.flush(rep).await;
        rep.completed(processed, stored, &checksum, progress.warnings).await
    }
    .await;
    if let Err(e) = recorded {
        // Not completed, so nothing of this attempt may stay visible.
        for f in &manifest.files {
            let _ = ctx.storage.store.delete(&ctx.storage.absolute(&f.path)).await;
        }
        let _ = ctx.storage.store.delete(&manifest_key).await;
        return Err(e);
    }
    rep.log(
        "info",
        &format!(
            "completed: {} processed, {} stored, sha256 {checksum}",
            human(processed as u64),
            human(stored as u64)
        ),
    )
    .await;
    Ok(Outcome::Completed)
}

pub enum Ended<T> {
    Done(T),
    Stopped(Outcome),
}

/// Run pg_dump with its stdout compressed into one uploaded object.
async fn stream_custom(
    ctx: &Ctx,
    rep: &Reporter,
    mut cmd: Command,
    key: object_store::path::Path,
    progress: &mut Progress,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended<upload::Stored>> {
    let mut child = cmd.spawn().with_context(|| format!("starting {}", ctx.cfg.pg_tool("pg_dump").display()))?;
    let stderr = progress.follow(child.stderr.take().expect("piped stderr"));
    let stdout = SyncIoBridge::new(child.stdout.take().expect("piped stdout"));
    let pipe = Pipe::start(ctx.storage.store.clone(), key);
    let tx = pipe.tx.clone();
    let processed = progress.processed.clone();
    let level = ctx.cfg.compression_level;
    let compressor =
        tokio::task::spawn_blocking(move || upload::compress(stdout, tx, level, upload::all_cores(), &processed));

    let mut ticker = tokio::time::interval(ctx.cfg.heartbeat_interval);
    let mut stopped = None;
    let status = loop {
        tokio::select! {
            st = child.wait() => break st?,
            _ = ticker.tick() => {
                if progress.tick(rep).await? == Beat::CancelRequested && stopped.is_none() {
                    rep.log("info", "cancel requested: stopping pg_dump and aborting the upload").await;
                    stopped = Some(Outcome::Cancelled);
                    child.start_kill()?;
                }
                if pipe.is_finished() && stopped.is_none() {
                    // The upload gave up (storage error): stop pg_dump too.
                    child.start_kill()?;
                }
            }
            _ = stop.changed(), if stopped.is_none() => {
                stopped = Some(Outcome::HandBack);
                child.start_kill()?;
            }
        }
    };
    let compressed = compressor.await.context("compressor panicked")?;
    let _ = stderr.await;
    progress.flush(rep).await;
    let upload_died = pipe.is_finished();
    let ok = stopped.is_none() && status.success() && compressed.is_ok();
    let stored = pipe.finish(ok).await;
    if let Some(o) = stopped {
        return Ok(Ended::Stopped(o));
    }
    if upload_died {
        // The upload gave up first (storage error); pg_dump was stopped for it.
        return Err(stored.err().unwrap_or_else(|| anyhow!("the upload stopped early")));
    }
    if !status.success() {
        let errors = progress.errors();
        bail!("pg_dump failed ({status}): {}", if errors.is_empty() { progress.tail(5) } else { errors });
    }
    // A storage error shows up as the upload's error; the compressor then
    // only saw its channel close.
    let stored = stored?;
    compressed?;
    Ok(Ended::Done(stored))
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
