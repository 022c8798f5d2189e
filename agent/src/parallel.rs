//! Parallel capture: `pg_dump -Fd -j N` writes one file per table into a
//! staging directory. Each file is compressed and uploaded *while* pg_dump
//! writes it: inotify reports the file's creation, a reader follows it as it
//! grows, and pg_dump closing it (IN_CLOSE_WRITE) marks its end. The file is
//! deleted as soon as its upload completes, so local disk holds only the
//! files in flight, and the biggest table is compressed in step with its
//! dump instead of after it. After pg_dump exits, a last scan catches
//! anything an overflowing event queue missed.
//!
//! The files are separate objects, visible as they are uploaded; the backup
//! only exists once its manifest is written and the transfer completed. A
//! failed or cancelled dump deletes whatever it had uploaded.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use object_store::path::Path;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::agent::Ctx;
use crate::capture::Outcome;
use crate::manifest::FileEntry;
use crate::progress::Progress;
use crate::queue::{Beat, Reporter};
use crate::storage::Storage;
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

/// The files being followed, by name; the flag says pg_dump closed it.
struct Files {
    storage: Storage,
    prefix: Path,
    level: i32,
    processed: Arc<AtomicU64>,
    closed: HashMap<String, Arc<AtomicBool>>,
    tasks: JoinSet<Result<FileEntry>>,
}

impl Files {
    /// Start following `path` unless it is followed already.
    fn follow(&mut self, path: PathBuf, already_closed: bool) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { return };
        if let Some(flag) = self.closed.get(&name) {
            if already_closed {
                flag.store(true, Ordering::Release);
            }
            return;
        }
        let flag = Arc::new(AtomicBool::new(already_closed));
        self.closed.insert(name.clone(), flag.clone());
        let (storage, key, level, processed) =
            (self.storage.clone(), self.prefix.child(format!("{name}.zst")), self.level, self.processed.clone());
        self.tasks.spawn(upload_growing_file(storage, path, name, key, level, flag, processed));
    }

    fn closed(&mut self, path: PathBuf) {
        self.follow(path, true);
    }
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
    inotify
        .watches()
        .add(staging, WatchMask::CREATE | WatchMask::CLOSE_WRITE)
        .context("watching the staging directory")?;
    let mut events = inotify.into_event_stream(vec![0u8; 4096])?;

    let mut child = cmd.spawn().with_context(|| format!("starting {}", ctx.cfg.pg_tool("pg_dump").display()))?;
    let stderr = progress.follow(child.stderr.take().expect("piped stderr"));
    let mut files = Files {
        storage: ctx.storage.clone(),
        prefix: prefix.clone(),
        level: ctx.cfg.compression_level,
        processed: progress.processed.clone(),
        closed: HashMap::new(),
        tasks: JoinSet::new(),
    };
    let mut done = Vec::new();
    let mut failure = None;
    let mut ticker = tokio::time::interval(ctx.cfg.heartbeat_interval);
    let mut stopped = None;
    let status = loop {
        tokio::select! {
            st = child.wait() => break st?,
            Some(ev) = events.next() => {
                let ev = ev?;
                if let Some(name) = ev.name {
                    let path = staging.join(name);
                    if ev.mask.contains(EventMask::CLOSE_WRITE) {
                        files.closed(path);
                    } else {
                        files.follow(path, false);
                    }
                }
            }
            Some(res) = files.tasks.join_next(), if !files.tasks.is_empty() => {
                match res.context("file upload panicked")? {
                    Ok(entry) => done.push(entry),
                    Err(e) if failure.is_none() => {
                        // A storage error: stop pg_dump too.
                        failure = Some(e);
                        child.start_kill()?;
                    }
                    Err(_) => {}
                }
            }
            _ = ticker.tick() => {
                if progress.tick(rep).await? == Beat::CancelRequested && stopped.is_none() {
                    rep.log("info", "cancel requested: stopping pg_dump and removing uploaded files").await;
                    stopped = Some(Outcome::Cancelled);
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
    if stopped.is_some() || failure.is_some() || !status.success() {
        files.tasks.abort_all();
        while files.tasks.join_next().await.is_some() {}
        if let Some(o) = stopped {
            return Ok(Ended::Stopped(o));
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let errors = progress.errors();
        bail!("pg_dump failed ({status}): {}", if errors.is_empty() { progress.tail(5) } else { errors });
    }
    // pg_dump is done: every file in staging is complete.
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(10), events.next()).await {
        if let Some(name) = ev?.name {
            files.closed(staging.join(name));
        }
    }
    let mut left: Vec<PathBuf> = std::fs::read_dir(staging)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    left.sort();
    for path in left {
        files.closed(path);
    }
    for flag in files.closed.values() {
        flag.store(true, Ordering::Release);
    }
    while let Some(res) = files.tasks.join_next().await {
        done.push(res.context("file upload panicked")??);
    }
    Ok(Ended::Done(done))
}

/// Compress and upload a file that may still be growing; once `closed`
/// and read to its end, commit the upload and delete the file.
async fn upload_growing_file(
    storage: Storage,
    path: PathBuf,
    name: String,
    key: Path,
    level: i32,
    closed: Arc<AtomicBool>,
    processed: Arc<AtomicU64>,
) -> Result<FileEntry> {
    let pipe = Pipe::start(storage.store.clone(), key.clone());
    let tx = pipe.tx.clone();
    let src = path.clone();
    let compressed = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&src).with_context(|| format!("opening {}", src.display()))?;
        // One zstd thread per file: pg_dump's jobs already write files in parallel.
        upload::compress(Growing { file, closed }, tx, level, 1, &processed)
    })
    .await?;
    let stored = pipe.finish(compressed.is_ok()).await;
    let size = compressed?;
    let stored = stored?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(FileEntry {
        path: storage.relative(&key).to_string(),
        name,
        size,
        stored_size: stored.size,
        sha256: stored.sha256,
    })
}

/// `Read` over a file pg_dump is still writing: at the current end it waits
/// for more, until pg_dump has closed the file and everything is read.
struct Growing {
    file: std::fs::File,
    closed: Arc<AtomicBool>,
}

impl Read for Growing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            // Read the flag first: a zero-byte read after seeing it set is the real end.
            let was_closed = self.closed.load(Ordering::Acquire);
            let n = self.file.read(buf)?;
            if n > 0 || was_closed {
                return Ok(n);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
