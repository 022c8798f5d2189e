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
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::agent::Ctx;
use crate::capture::Outcome;
use crate::progress::Progress;
use crate::queue::Reporter;
use crate::supervise::with_heartbeat;
use crate::{db, stored, target};

pub async fn run(ctx: Arc<Ctx>, rep: &Reporter, mut stop: watch::Receiver<bool>) -> Result<Outcome> {
    let t = &rep.transfer;
    let source = t.source.clone().context("restore without a source")?;
    let target_db = t.target.clone().unwrap_or_else(|| t.database.clone());
    let staging = ctx.cfg.staging_dir.join(format!("{}-{}", t.name, t.attempt));
    prepare(&staging)?;
    let mut progress = Progress::new();
    let fetched = progress.processed.clone();
    let lines = progress.sender();
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    let work = async {
        // 1. Fetch and verify, before touching the target.
        let (path, format) = if source.starts_with("http://") || source.starts_with("https://") {
            fetch_url(&source, &staging, &fetched).await?
        } else {
            let control = db::connect(&ctx.cfg.database_url).await?;
            let b = stored::find(&control, Some(&source)).await?;
            let path = stored::materialise(&ctx.storage, &b, &staging, &fetched).await?;
            let _ = lines.send(format!(
                "pgbackups: {} verified (sha256 {}) and staged at {} for a parallel pg_restore",
                b.name,
                b.checksum,
                staging.display()
            ));
            (path, b.format.clone())
        };
        let _ = lines
            .send(format!("pgbackups: replacing database {target_db:?} with {source} ({format} format), {jobs} jobs"));
        // 2. Replace the target and restore.
        target::recreate(&ctx, &target_db).await?;
        let child =
            target::pg_restore(&ctx, &target_db, Some(&path), Some(jobs))?.spawn().context("starting pg_restore")?;
        target::finish_restore(child, lines.clone()).await
    };
    let result = with_heartbeat(rep, &mut progress, &mut stop, ctx.cfg.heartbeat_interval, work).await;
    let _ = std::fs::remove_dir_all(&staging);
    target::conclude(rep, &progress, result?, |note, read| format!("restored into {target_db}{note} ({read} read)"))
        .await
}

pub fn prepare(staging: &FsPath) -> Result<()> {
    if staging.exists() {
        std::fs::remove_dir_all(staging).with_context(|| format!("removing stale {}", staging.display()))?;
    }
    std::fs::create_dir_all(staging)
        .with_context(|| format!("staging directory {} cannot be created", staging.display()))
}

/// Download a URL to staging: a pg_dump custom-format file (plain or
/// zstd-compressed) or a tar of a directory-format dump, as served by the
/// agent's links. Anything else fails before the target is touched.
async fn fetch_url(url: &str, staging: &FsPath, fetched: &Arc<AtomicU64>) -> Result<(PathBuf, String)> {
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
        return Ok((raw, "custom".into()));
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let dest = staging.join("backup.dump");
        let input = std::fs::File::open(&raw)?;
        let output = std::fs::File::create(&dest)?;
        tokio::task::spawn_blocking(move || zstd::stream::copy_decode(input, output)).await??;
        let mut magic = [0u8; 5];
        let _ = std::fs::File::open(&dest).and_then(|mut f| std::io::Read::read(&mut f, &mut magic));
        if &magic == b"PGDMP" {
            return Ok((dest, "custom".into()));
        }
    } else if head.len() > 262 && &head[257..262] == b"ustar" {
        let dir = staging.join("dump");
        let raw2 = raw.clone();
        let d = dir.clone();
        tokio::task::spawn_blocking(move || tar::Archive::new(std::fs::File::open(raw2)?).unpack(d)).await??;
        // Our links wrap the dump's files in a folder named after the backup.
        let found = std::iter::once(dir.clone())
            .chain(std::fs::read_dir(&dir)?.flatten().map(|e| e.path()).filter(|p| p.is_dir()))
            .find(|d| d.join("toc.dat").exists());
        if let Some(d) = found {
            return Ok((d, "directory".into()));
        }
    }
    bail!("{url} does not serve a pg_dump archive (custom format, or a tar of a directory-format dump)")
}
