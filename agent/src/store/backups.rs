//! Completed backups in storage: find one, read its manifest, and bring it
//! back as a file (custom format) or directory (directory format) that
//! pg_restore accepts, every object read through `verify`.

use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_postgres::Client;

use crate::store::layout::{Format, Keys, Place};
use crate::store::manifest::Manifest;
use crate::store::storage::Storage;
use crate::store::verify;

/// A completed backup, as the control database records it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub name: String,
    /// Its database, or its named source: the folder it is stored under.
    pub label: String,
    /// The attempt that completed it, which wrote its objects.
    pub attempt: i32,
    pub format: Format,
    pub checksum: String,
    pub stored_size: i64,
    /// The age recipients its objects are encrypted to; empty: plain.
    pub encrypted_to: Vec<String>,
    /// Its tables as the control database recorded them at capture
    /// (`[{schema, table, rows, bytes, digest}]`), beside the manifest's.
    pub contents: Option<serde_json::Value>,
    /// The SHA-256 of a custom-format archive's head, recorded at capture
    /// (none for backups taken before it was).
    pub head_sha256: Option<String>,
    /// The cluster folder it is stored under (none: stored before
    /// clusters had folders).
    pub stored_under: Option<String>,
}

impl Stored {
    pub fn place(&self) -> Place {
        Place::new(self.stored_under.as_deref(), &self.label, &self.name)
    }

    pub fn keys(&self, storage: &Storage) -> Keys {
        storage.keys(&self.place(), self.attempt).sealed(!self.encrypted_to.is_empty())
    }
}

/// A completed, not deleted backup by name; `None` means the latest.
pub async fn find(client: &Client, name: Option<&str>) -> Result<Stored> {
    let row = client
        .query_opt(
            "SELECT name, label, attempt, format, checksum, stored_size, encrypted_to, contents, head_sha256, \
                    stored_under FROM backups._stored($1)",
            &[&name],
        )
        .await?;
    let Some(r) = row else {
        match name {
            Some(n) => bail!("{n} is not a completed backup (see SELECT * FROM backups.list();)"),
            None => bail!("there is no completed backup yet"),
        }
    };
    let format: Option<String> = r.get(3);
    let checksum: Option<String> = r.get(4);
    let name: String = r.get(0);
    Ok(Stored {
        label: r.get(1),
        attempt: r.get(2),
        format: Format::parse(format.as_deref().unwrap_or_default()).with_context(|| format!("backup {name}"))?,
        checksum: checksum.with_context(|| format!("backup {name} has no recorded checksum"))?,
        stored_size: r.get::<_, Option<i64>>(5).unwrap_or(0),
        encrypted_to: r.get::<_, Option<Vec<String>>>(6).unwrap_or_default(),
        contents: r.get(7),
        head_sha256: r.get(8),
        stored_under: r.get(9),
        name,
    })
}

/// A directory-format backup's manifest, checked (its SHA-256 is the one
/// recorded for the backup), then decrypted if it is encrypted.
pub async fn manifest(storage: &Storage, b: &Stored) -> Result<Manifest> {
    let key = b.keys(storage).manifest();
    let bytes = storage.store.get(&key).await.with_context(|| format!("reading {key}"))?.bytes().await?;
    let sum = hex::encode(Sha256::digest(&bytes));
    if b.format == Format::Directory && sum != b.checksum {
        bail!(
            "checksum mismatch for {}: manifest sha256 {sum}, recorded {}; the backup is corrupt",
            b.name,
            b.checksum
        );
    }
    let plain = if b.encrypted_to.is_empty() {
        bytes.to_vec()
    } else {
        storage.identities.open_bytes(&format!("{key} (of {})", b.name), &b.encrypted_to, &bytes)?
    };
    Manifest::parse(&plain).with_context(|| format!("the manifest of {}", b.name))
}

/// Bring a backup back under `dir`, verified: `dir/backup.dump` (custom) or
/// `dir/dump/` (directory). Nothing is returned unless every checksum
/// matched. `fetched` counts stored bytes as they arrive.
pub async fn fetch(storage: &Storage, b: &Stored, dir: &FsPath, fetched: &Arc<AtomicU64>) -> Result<PathBuf> {
    let keys = b.keys(storage);
    if b.format == Format::Custom {
        let dest = dir.join("backup.dump");
        fetch_file(storage, b, &keys.dump(), &b.checksum, &dest, fetched).await?;
        return Ok(dest);
    }
    let m = manifest(storage, b).await?;
    let out = dir.join("dump");
    tokio::fs::create_dir_all(&out).await?;
    for f in &m.files {
        let key = keys.dir_file(&f.name).with_context(|| format!("the manifest of {}", b.name))?;
        fetch_file(storage, b, &key, &f.sha256, &out.join(&f.name), fetched).await?;
    }
    Ok(out)
}

/// One stored file, decompressed into `dest` as it streams, verified.
async fn fetch_file(
    storage: &Storage,
    b: &Stored,
    key: &object_store::path::Path,
    sha256: &str,
    dest: &FsPath,
    fetched: &Arc<AtomicU64>,
) -> Result<()> {
    let object = verify::open(storage, key, sha256, Some(fetched.clone())).await?;
    let mut reader = tokio::io::BufReader::with_capacity(1 << 20, verify::decompressed(object, &b.encrypted_to).await?);
    // Large buffers: tokio file writes hop to a blocking thread each time.
    // No fsync: a staging file is read back at once, and fetched again if lost.
    let file = tokio::fs::File::create(dest).await.with_context(|| format!("creating {}", dest.display()))?;
    let mut out = tokio::io::BufWriter::with_capacity(4 << 20, file);
    tokio::io::copy_buf(&mut reader, &mut out).await.with_context(|| format!("reading back {key}"))?;
    out.flush().await?;
    Ok(())
}
