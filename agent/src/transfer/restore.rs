//! Restore: a backup (by id, or from an http(s) URL) into a target database.
//!
//! The backup is first brought to local staging and verified: every
//! SHA-256 must match before the target is touched, and a custom-format
//! archive needs a seekable file for a parallel pg_restore anyway. Then the
//! target is replaced and pg_restore runs with `-j` (the agent's cores).

use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use async_compression::tokio::bufread::ZstdDecoder;
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;
use tokio_util::task::TaskTracker;

use crate::pg::bins;
use crate::pg::conn;
use crate::pg::target;
use crate::store::backups;
use crate::store::layout::Format;
use crate::transfer::job::{BackupRef, Completion, Restore};
use crate::transfer::progress::human;
use crate::transfer::report::Level;
use crate::transfer::task::Task;

pub async fn run(task: &Task, restore: &Restore) -> Result<Completion> {
    let cfg = &task.ctx.cfg;
    let staging = task.staging()?;
    let (archive, format) = fetch(task, &restore.from, staging.path()).await?;
    // pg_restore reads no archive from a newer pg_dump, and talks to its server.
    let target_major = target::server_major(cfg).await?;
    let archive_major = bins::archive_major(&task.ctx.bins, &archive).await?;
    let tools = task.ctx.bins.for_restore(target_major, archive_major)?;
    task.progress.say(Level::Info, tools.used());
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    task.progress.say(
        Level::Info,
        format!(
            "replacing database {:?} with {} ({} format), {jobs} jobs",
            restore.target,
            describe(&restore.from),
            format.as_str()
        ),
    );
    target::recreate(cfg, &restore.target).await?;
    let mut cmd = target::pg_restore(cfg, tools, &restore.target, Some(jobs))?;
    cmd.arg(&archive);
    let exit = cmd.spawn(task.progress.tool_output())?.wait().await?;
    let warnings = target::restore_warnings(&exit)?;
    let processed = task.progress.processed();
    let note = if warnings > 0 { format!(" with {warnings} warnings") } else { String::new() };
    task.progress.say(Level::Info, format!("restored into {}{note} ({} read)", restore.target, human(processed)));
    Ok(Completion::Applied { processed, warnings })
}

fn describe(from: &BackupRef) -> String {
    match from {
        BackupRef::Id(id) => id.clone(),
        BackupRef::Url(u) => u.to_string(),
    }
}

/// The backup, verified, in staging: a file or a directory for pg_restore.
async fn fetch(task: &Task, from: &BackupRef, staging: &FsPath) -> Result<(PathBuf, Format)> {
    let fetched = task.progress.counter();
    match from {
        BackupRef::Url(url) => fetch_url(url.as_str(), staging, &fetched, &task.tracker).await,
        BackupRef::Id(id) => {
            let control = conn::connect(&task.ctx.cfg.store.database_url).await?;
            let b = backups::find(&control, Some(id)).await?;
            let path = backups::fetch(&task.ctx.storage, &b, staging, &fetched).await?;
            task.progress.say(
                Level::Info,
                format!(
                    "{} verified (sha256 {}) and staged at {} for a parallel pg_restore",
                    b.name,
                    b.checksum,
                    staging.display()
                ),
            );
            Ok((path, b.format))
        }
    }
}

/// Download a URL to staging: a pg_dump custom-format file (plain or
/// zstd-compressed) or a tar of a directory-format dump, as served by the
/// agent's links. Anything else fails before the target is touched.
async fn fetch_url(
    url: &str,
    staging: &FsPath,
    fetched: &Arc<AtomicU64>,
    tracker: &TaskTracker,
) -> Result<(PathBuf, Format)> {
    let resp = reqwest::get(url).await.with_context(|| format!("fetching {url}"))?;
    if !resp.status().is_success() {
        bail!("fetching {url}: HTTP {}", resp.status());
    }
    let raw = staging.join("download");
    let mut out = tokio::fs::File::create(&raw).await?;
    let f = fetched.clone();
    let stream = resp
        .bytes_stream()
        .map_ok(move |b| {
            f.fetch_add(b.len() as u64, Ordering::Relaxed);
            b
        })
        .map_err(std::io::Error::other);
    tokio::io::copy(&mut tokio_util::io::StreamReader::new(stream), &mut out)
        .await
        .with_context(|| format!("downloading {url}"))?;
    drop(out);
    let mut head = [0u8; 512];
    let n = tokio::fs::File::open(&raw).await?.read(&mut head).await?;
    let head = &head[..n];
    if head.starts_with(b"PGDMP") {
        return Ok((raw, Format::Custom));
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        // Decompressed as part of the work, so that a cancel stops it at once.
        let dest = staging.join("backup.dump");
        let mut input =
            ZstdDecoder::new(tokio::io::BufReader::with_capacity(1 << 20, tokio::fs::File::open(&raw).await?));
        input.multiple_members(true);
        let mut output = tokio::fs::File::create(&dest).await?;
        tokio::io::copy(&mut input, &mut output).await.with_context(|| format!("decompressing what {url} served"))?;
        drop(output);
        let mut magic = [0u8; 5];
        let _ = std::fs::File::open(&dest).and_then(|mut f| std::io::Read::read(&mut f, &mut magic));
        if &magic == b"PGDMP" {
            return Ok((dest, Format::Custom));
        }
    } else if head.len() > 262 && &head[257..262] == b"ustar" {
        let dir = staging.join("dump");
        let raw2 = raw.clone();
        let d = dir.clone();
        tracker.spawn_blocking(move || tar::Archive::new(std::fs::File::open(raw2)?).unpack(d)).await??;
        // Our links wrap the dump's files in a folder named after the backup.
        let found = std::iter::once(dir.clone())
            .chain(std::fs::read_dir(&dir)?.flatten().map(|e| e.path()).filter(|p| p.is_dir()))
            .find(|d| d.join("toc.dat").exists());
        if let Some(d) = found {
            return Ok((d, Format::Directory));
        }
    }
    bail!("{url} does not serve a pg_dump archive (custom format, or a tar of a directory-format dump)")
}
