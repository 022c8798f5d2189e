//! Completed backups in storage: find one, read its manifest, and bring it
//! back as a file (custom format) or directory (directory format) that
//! pg_restore accepts, verifying every SHA-256 on the way.

use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use async_compression::tokio::bufread::ZstdDecoder;
use futures::TryStreamExt;
use object_store::path::Path;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio_postgres::Client;
use tokio_util::io::StreamReader;

use crate::manifest::Manifest;
use crate::storage::Storage;

#[derive(Debug, Clone)]
pub struct Backup {
    pub name: String,
    pub format: String,
    pub object_key: String,
    pub checksum: String,
    pub stored_size: i64,
}

/// A completed, not deleted backup by name; `None` means the latest.
pub async fn find(client: &Client, name: Option<&str>) -> Result<Backup> {
    let row = client
        .query_opt(
            "SELECT name, format, object_key, checksum, stored_size FROM backups.transfers
              WHERE kind = 'capture' AND status = 'completed' AND deleted_at IS NULL
                AND ($1::text IS NULL OR name = $1)
              ORDER BY finished_at DESC, id DESC LIMIT 1",
            &[&name],
        )
        .await?;
    let Some(r) = row else {
        match name {
            Some(n) => bail!("{n} is not a completed backup (see SELECT * FROM backups.list();)"),
            None => bail!("there is no completed backup yet"),
        }
    };
    Ok(Backup { name: r.get(0), format: r.get(1), object_key: r.get(2), checksum: r.get(3), stored_size: r.get(4) })
}

/// `db/b001/backup.dump.zst` -> `db/b001/manifest.json`; `db/b001/dump-2` -> `db/b001/manifest-2.json`.
pub fn manifest_key(storage: &Storage, object_key: &str) -> Path {
    let key = storage.absolute(object_key);
    let parts: Vec<_> = key.parts().collect();
    let last = parts.last().map(|p| p.as_ref().to_string()).unwrap_or_default();
    let suffix = last.trim_end_matches(".dump.zst").trim_start_matches("backup").trim_start_matches("dump").to_string();
    let folder = Path::from_iter(parts[..parts.len().saturating_sub(1)].iter().cloned());
    folder.child(format!("manifest{suffix}.json"))
}

/// The manifest; for a directory-format backup its SHA-256 is the one
/// recorded for the backup, so it is checked here.
pub async fn manifest(storage: &Storage, b: &Backup) -> Result<Manifest> {
    let key = manifest_key(storage, &b.object_key);
    let bytes = storage.store.get(&key).await.with_context(|| format!("reading {key}"))?.bytes().await?;
    if b.format == "directory" {
        let sum = hex::encode(Sha256::digest(&bytes));
        if sum != b.checksum {
            bail!("checksum mismatch for {}: manifest sha256 {sum}, recorded {}", b.name, b.checksum);
        }
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// Stream a stored file, decompressing it into `dest`; returns the stored
/// bytes' SHA-256. `fetched` counts stored bytes as they arrive.
pub async fn fetch_file(storage: &Storage, key: &Path, dest: &FsPath, fetched: &Arc<AtomicU64>) -> Result<String> {
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let h = hasher.clone();
    let f = fetched.clone();
    let stream = storage
        .store
        .get(key)
        .await
        .with_context(|| format!("reading {key}"))?
        .into_stream()
        .map_ok(move |chunk| {
            h.lock().expect("hasher").update(&chunk);
            f.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            chunk
        })
        .map_err(std::io::Error::other);
    // Large buffers: tokio file writes hop to a blocking thread each time.
    // No fsync: a staging file is read back at once, and re-fetched if lost.
    let mut decoder = ZstdDecoder::new(BufReader::with_capacity(1 << 20, StreamReader::new(stream)));
    let file = tokio::fs::File::create(dest).await.with_context(|| format!("creating {}", dest.display()))?;
    let mut out = tokio::io::BufWriter::with_capacity(4 << 20, file);
    tokio::io::copy_buf(&mut BufReader::with_capacity(1 << 20, &mut decoder), &mut out)
        .await
        .with_context(|| format!("reading and decompressing {key}"))?;
    out.flush().await?;
    let sum = hex::encode(hasher.lock().expect("hasher").clone().finalize());
    Ok(sum)
}

/// Bring a backup back under `dir`, verified: `dir/backup.dump` (custom) or
/// `dir/dump/` (directory). Nothing is returned unless every checksum matched.
pub async fn materialise(storage: &Storage, b: &Backup, dir: &FsPath, fetched: &Arc<AtomicU64>) -> Result<PathBuf> {
    let m = manifest(storage, b).await?;
    if b.format == "custom" {
        let dest = dir.join("backup.dump");
        let sum = fetch_file(storage, &storage.absolute(&b.object_key), &dest, fetched).await?;
        if sum != b.checksum {
            let _ = tokio::fs::remove_file(&dest).await;
            bail!(
                "checksum mismatch for {}: stored object sha256 {sum}, recorded {}; the backup is corrupt",
                b.name,
                b.checksum
            );
        }
        return Ok(dest);
    }
    let out = dir.join("dump");
    tokio::fs::create_dir_all(&out).await?;
    for f in &m.files {
        if f.name.contains('/') || f.name.starts_with('.') {
            bail!("unexpected file name {:?} in the manifest of {}", f.name, b.name);
        }
        let sum = fetch_file(storage, &storage.absolute(&f.path), &out.join(&f.name), fetched).await?;
        if sum != f.sha256 {
            bail!(
                "checksum mismatch for {} file {}: sha256 {sum}, manifest says {}; the backup is corrupt",
                b.name,
                f.name,
                f.sha256
            );
        }
    }
    Ok(out)
}
