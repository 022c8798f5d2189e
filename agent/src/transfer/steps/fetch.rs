//! Bringing a backup to local staging, every byte verified before anything
//! is applied: one of ours (a custom-format file, or a directory-format
//! dump's files), or whatever an http(s) URL serves (a custom-format file,
//! plain or zstd-compressed, or a tar of a directory-format dump), within
//! the URL policy's limits (`remote`).

use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use async_compression::tokio::bufread::ZstdDecoder;
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;
use tokio_util::task::TaskTracker;

use crate::config::UrlPolicy;
use crate::pg::conn;
use crate::store::backups::{self, Stored};
use crate::store::layout::Format;
use crate::transfer::progress::Level;
use crate::transfer::progress::Progress;
use crate::transfer::steps::remote;
use crate::transfer::task::Task;

/// Which backup a restore reads.
#[derive(Debug, Clone)]
pub enum BackupRef {
    /// One of ours, by name.
    Id(String),
    /// Any http(s) URL serving a pg_dump archive.
    Url(url::Url),
    /// One of ours, found already (in storage, by its manifest: a restore
    /// from the shell with storage alone).
    Found(Box<Stored>),
}

impl BackupRef {
    /// A restore's `source`: an http(s) URL, or one of our backups' names.
    pub fn parse(from: &str) -> Result<BackupRef> {
        let url =
            ["http://", "https://"].iter().any(|p| from.get(..p.len()).is_some_and(|s| s.eq_ignore_ascii_case(p)));
        Ok(if url {
            BackupRef::Url(url::Url::parse(from).context("invalid backup URL")?)
        } else {
            BackupRef::Id(from.to_string())
        })
    }

    /// As it may be shown: a URL without its credentials or query string.
    pub fn describe(&self) -> String {
        match self {
            BackupRef::Id(id) => id.clone(),
            BackupRef::Url(u) => remote::redact(u),
            BackupRef::Found(b) => b.name.clone(),
        }
    }
}

/// The backup, verified, in staging: a file or a directory for pg_restore.
pub async fn fetch(task: &Task, from: &BackupRef, staging: &FsPath) -> Result<(PathBuf, Format)> {
    match from {
        BackupRef::Url(url) => fetch_url(&task.ctx.cfg.url_policy, url, staging, &task.progress, &task.tracker).await,
        BackupRef::Id(id) => {
            let control = conn::connect(task.ctx.cfg.control()?).await?;
            fetch_stored(task, &backups::find(&control, Some(id)).await?, staging).await
        }
        BackupRef::Found(b) => fetch_stored(task, b, staging).await,
    }
}

/// One of our backups, verified, in staging.
pub async fn fetch_stored(task: &Task, b: &Stored, staging: &FsPath) -> Result<(PathBuf, Format)> {
    task.progress.expect(b.stored_size.max(0) as u64);
    let path = backups::fetch(&task.ctx.storage, b, staging, &task.progress.counter()).await?;
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

/// Download a URL to staging, within the policy's limits: a pg_dump
/// custom-format file (plain or zstd-compressed) or a tar of a
/// directory-format dump, as served by the agent's links. Anything else
/// fails before the target is touched.
async fn fetch_url(
    policy: &UrlPolicy,
    full: &url::Url,
    staging: &FsPath,
    progress: &Progress,
    tracker: &TaskTracker,
) -> Result<(PathBuf, Format)> {
    // Messages name the URL without its credentials or query string, and
    // reqwest's errors would print it whole: they lose it.
    let url = remote::redact(full);
    let max = policy.max_bytes;
    remote::check(full, policy.allow_private)?;
    let resp = remote::client(policy)?
        .get(full.clone())
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("fetching {url}: {:#}", anyhow::Error::from(e.without_url())))?;
    if !resp.status().is_success() {
        bail!("fetching {url}: HTTP {}", resp.status());
    }
    if resp.content_length().is_some_and(|n| n > max) {
        bail!(
            "{url} is {} bytes, more than the {max} a restore from a URL may fetch (url_max_bytes)",
            resp.content_length().unwrap_or(0)
        );
    }
    // What the server says it sends is what the progress measures against.
    if let Some(n) = resp.content_length() {
        progress.expect(n);
    }
    let raw = staging.join("download");
    let mut out = tokio::fs::File::create(&raw).await?;
    let f = progress.counter();
    let stream = resp.bytes_stream().map_err(|e| std::io::Error::other(e.without_url())).and_then(move |b| {
        let total = f.fetch_add(b.len() as u64, Ordering::Relaxed) + b.len() as u64;
        futures::future::ready(if total > max {
            Err(std::io::Error::other(format!(
                "more than the {max} bytes a restore from a URL may fetch (url_max_bytes)"
            )))
        } else {
            Ok(b)
        })
    });
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
        // The limit holds for what it decompresses to, as well.
        let written = tokio::io::copy(&mut (&mut input).take(max + 1), &mut output)
            .await
            .with_context(|| format!("decompressing what {url} served"))?;
        drop(output);
        if written > max {
            bail!("{url} decompresses to more than the {max} bytes a restore from a URL may fetch (url_max_bytes)");
        }
        let mut magic = [0u8; 5];
        let _ = std::fs::File::open(&dest).and_then(|mut f| std::io::Read::read(&mut f, &mut magic));
        if &magic == b"PGDMP" {
            return Ok((dest, Format::Custom));
        }
    } else if head.len() > 262 && &head[257..262] == b"ustar" {
        let dir = staging.join("dump");
        let raw2 = raw.clone();
        let d = dir.clone();
        tracker.spawn_blocking(move || unpack(&raw2, &d, max)).await??;
        // Our links wrap the dump's files in a folder named after the backup.
        let found = std::iter::once(dir.clone())
            .chain(
                std::fs::read_dir(&dir)?
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            )
            .find(|d| d.join("toc.dat").is_file());
        if let Some(d) = found {
            return Ok((d, Format::Directory));
        }
    }
    bail!("{url} does not serve a pg_dump archive (custom format, or a tar of a directory-format dump)")
}

/// Unpack a tar of a directory-format dump into `dir`: files and folders
/// only (a link could point the restore at any directory of the agent's
/// host), each inside `dir`, at most `max` bytes in all.
fn unpack(tarball: &FsPath, dir: &FsPath, max: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(std::fs::File::open(tarball)?);
    let mut total = 0u64;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let path = entry.path()?.display().to_string();
        if !(kind.is_file() || kind.is_dir()) {
            bail!("the tar holds {path:?}, which is not a file or a folder ({kind:?}): refusing it");
        }
        total += entry.size();
        if total > max {
            bail!("the tar unpacks to more than the {max} bytes a restore from a URL may fetch (url_max_bytes)");
        }
        if !entry.unpack_in(dir)? {
            bail!("the tar holds {path:?}, outside its folder: refusing it");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(dir: &FsPath, build: impl FnOnce(&mut tar::Builder<std::fs::File>)) -> PathBuf {
        let path = dir.join("t.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        build(&mut b);
        b.finish().unwrap();
        path
    }

    fn file(b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }

    #[test]
    fn a_tar_unpacks_only_files_and_folders_inside_its_folder_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let ok = tarball(dir.path(), |b| file(b, "b001/toc.dat", b"PGDMP"));
        unpack(&ok, &dir.path().join("a"), 100).unwrap();
        assert!(dir.path().join("a/b001/toc.dat").is_file());

        let link = tarball(dir.path(), |b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_cksum();
            b.append_link(&mut h, "x", "/var/tmp").unwrap();
        });
        let err = unpack(&link, &dir.path().join("b"), 100).unwrap_err().to_string();
        assert!(err.contains("not a file or a folder"), "{err}");
        assert!(std::fs::symlink_metadata(dir.path().join("b/x")).is_err());

        let big = tarball(dir.path(), |b| file(b, "toc.dat", &[0u8; 200]));
        let err = unpack(&big, &dir.path().join("c"), 100).unwrap_err().to_string();
        assert!(err.contains("url_max_bytes"), "{err}");
    }
}
