//! Parallel capture: `pg_dump -Fd -j N` writes one file per table into a
//! staging directory; inotify reports each file as pg_dump closes it, and
//! the file is compressed, uploaded and deleted at once, so local disk holds
//! only the files still being written. After pg_dump exits, a last scan
//! catches anything an event queue overflow might have missed.
//!
//! The files are separate objects, visible as they are uploaded; the backup
//! only exists once its manifest is written and the transfer completed. A
//! failed or cancelled dump deletes whatever it had uploaded.

use std::collections::HashSet;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use inotify::{Inotify, WatchMask};
use object_store::path::Path;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use crate::agent::Ctx;
use crate::capture::Outcome;
use crate::manifest::FileEntry;
use crate::progress::Progress;
use crate::queue::{Beat, Reporter};
use crate::upload::{self, Pipe};

pub enum Ended {
    Done(Vec<FileEntry>),
    Stopped(Outcome),
}

pub async fn dump(
    ctx: &Ctx,
    rep: &Reporter,
    mut cmd: Command,
    staging: &FsPath,
    prefix: &Path,
    progress: &mut Progress,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended> {
    prepare_staging(staging)?;
    let result = run(ctx, rep, &mut cmd, staging, prefix, progress, stop).await;
    let _ = std::fs::remove_dir_all(staging);
    if !matches!(result, Ok(Ended::Done(_))) {
        // Nothing partial stays in storage.
        if let Err(e) = ctx.storage.delete_dir(prefix).await {
            rep.log("warning", &format!("could not remove the partial upload under {prefix}: {e:#}")).await;
        }
    }
    result
}

fn prepare_staging(staging: &FsPath) -> Result<()> {
    let parent = staging.parent().context("staging path has no parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("staging directory {} cannot be created", parent.display()))?;
    if staging.exists() {
        std::fs::remove_dir_all(staging).with_context(|| format!("removing stale {}", staging.display()))?;
    }
    std::fs::create_dir(staging).with_context(|| format!("staging directory {} is not writable", parent.display()))?;
    Ok(())
}

async fn run(
    ctx: &Ctx,
    rep: &Reporter,
    cmd: &mut Command,
    staging: &FsPath,
    prefix: &Path,
    progress: &mut Progress,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended> {
    let inotify = Inotify::init().context("inotify")?;
    inotify.watches().add(staging, WatchMask::CLOSE_WRITE).context("watching the staging directory")?;
    let mut events = inotify.into_event_stream(vec![0u8; 4096])?;

    let mut child = cmd.spawn().with_context(|| format!("starting {}", ctx.cfg.pg_tool("pg_dump").display()))?;
    let stderr = progress.follow(child.stderr.take().expect("piped stderr"));

    let (files_tx, files_rx) = mpsc::unbounded_channel::<PathBuf>();
    let uploader = tokio::spawn(upload_files(
        ctx.storage.clone(),
        prefix.clone(),
        ctx.cfg.compression_level,
        files_rx,
        progress.processed.clone(),
    ));
    let mut sent = HashSet::new();
    let mut ticker = tokio::time::interval(ctx.cfg.heartbeat_interval);
    let mut stopped = None;
    let status = loop {
        tokio::select! {
            st = child.wait() => break st?,
            Some(ev) = events.next() => {
                if let Some(name) = ev?.name {
                    let path = staging.join(name);
                    if sent.insert(path.clone()) {
                        let _ = files_tx.send(path);
                    }
                }
            }
            _ = ticker.tick() => {
                if progress.tick(rep).await? == Beat::CancelRequested && stopped.is_none() {
                    rep.log("info", "cancel requested: stopping pg_dump and removing uploaded files").await;
                    stopped = Some(Outcome::Cancelled);
                    child.start_kill()?;
                }
                if uploader.is_finished() && stopped.is_none() {
                    child.start_kill()?;
                }
            }
            _ = stop.changed(), if stopped.is_none() => {
                stopped = Some(Outcome::HandBack);
                child.start_kill()?;
            }
        }
    };
    let _ = stderr.await;
    progress.flush(rep).await;
    let uploader_died = uploader.is_finished();
    if status.success() && stopped.is_none() {
        // pg_dump is done, so every file left is complete.
        let mut names: Vec<PathBuf> = std::fs::read_dir(staging)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for path in names {
            if sent.insert(path.clone()) {
                let _ = files_tx.send(path);
            }
        }
    }
    drop(files_tx);
    if let Some(o) = stopped {
        uploader.abort();
        return Ok(Ended::Stopped(o));
    }
    if uploader_died || status.success() {
        let files = uploader.await.context("uploader panicked")??;
        if !status.success() {
            bail!("pg_dump stopped after the upload failed");
        }
        // Keep the manifest's count honest.
        progress.processed.store(files.iter().map(|f| f.size).sum(), Ordering::Relaxed);
        return Ok(Ended::Done(files));
    }
    uploader.abort();
    let errors = progress.errors();
    bail!("pg_dump failed ({status}): {}", if errors.is_empty() { progress.tail(5) } else { errors })
}

/// Compress and upload each finished file, then delete it locally.
async fn upload_files(
    storage: crate::storage::Storage,
    prefix: Path,
    level: i32,
    mut files: mpsc::UnboundedReceiver<PathBuf>,
    processed: Arc<AtomicU64>,
) -> Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    while let Some(path) = files.recv().await {
        let name = path.file_name().and_then(|n| n.to_str()).context("file name")?.to_string();
        let key = prefix.child(format!("{name}.zst"));
        let pipe = Pipe::start(storage.store.clone(), key.clone());
        let tx = pipe.tx.clone();
        let src = path.clone();
        let counted = Arc::new(AtomicU64::new(0));
        let c = counted.clone();
        let compressed = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&src).with_context(|| format!("opening {}", src.display()))?;
            upload::compress(f, tx, level, &c)
        })
        .await?;
        let stored = pipe.finish(compressed.is_ok()).await;
        let size = compressed?;
        let stored = stored?;
        processed.fetch_add(size, Ordering::Relaxed);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        out.push(FileEntry {
            path: storage.relative(&key).to_string(),
            name,
            size,
            stored_size: stored.size,
            sha256: stored.sha256,
        });
    }
    Ok(out)
}
