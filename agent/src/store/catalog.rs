//! Storage as the catalog: every backup storage holds, read from the
//! manifests alone, for the day the control database is gone (`pgbackups
//! list --storage`, `info`, `download`, `restore`) and for adoption into a
//! new one. A folder without a manifest is an attempt that never finished:
//! never listed. Of several attempts that finished, the last one counts.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use sha2::{Digest, Sha256};

use crate::store::backups::Stored;
use crate::store::layout::{self, Format, Place};
use crate::store::manifest::Manifest;
use crate::store::storage::Storage;

/// One backup found in storage: where, which attempt, and its manifest,
/// or why it cannot be read here.
#[derive(Debug)]
pub struct Found {
    pub place: Place,
    pub attempt: i32,
    /// Its objects are encrypted with age.
    pub sealed: bool,
    /// When its manifest was written.
    pub modified: DateTime<Utc>,
    /// The manifest, or why not: encrypted to keys not held here, or
    /// refused (altered, unreadable).
    pub manifest: std::result::Result<Manifest, String>,
    /// The SHA-256 of the manifest as stored.
    manifest_sha256: String,
    /// Its pin, as storage says (`kept.json`: when and by whom).
    pub kept: Option<serde_json::Value>,
}

impl Found {
    pub fn id(&self) -> &str {
        &self.place.id
    }

    /// Its database: the catalog's, else its folder's label.
    pub fn database(&self) -> &str {
        self.manifest.as_ref().ok().and_then(|m| m.fact_str("database")).unwrap_or(&self.place.label)
    }

    /// Whether it belongs to the cluster with system identifier
    /// `cluster` (its folder's, which its manifest agrees with).
    pub fn of_cluster(&self, cluster: &str) -> bool {
        self.place.under.as_deref() == Some(cluster)
    }

    /// The name its cluster was given, if its manifest reads.
    fn cluster_name(&self) -> Option<&str> {
        Some(self.manifest.as_ref().ok()?.cluster.as_ref()?.name.as_str())
    }

    /// The readable manifest, or why there is none.
    pub fn readable(&self) -> Result<&Manifest> {
        self.manifest.as_ref().map_err(|why| anyhow::anyhow!("backup {}: {why}", self.id()))
    }

    /// The checksum the catalog records for it: the dump's for a custom
    /// backup, the stored manifest's (covering every file's) otherwise.
    pub fn checksum(&self) -> Result<String> {
        let m = self.readable()?;
        Ok(match (m.format, m.files.as_slice()) {
            (Format::Custom, [only]) => only.sha256.clone(),
            (Format::Custom, _) => bail!("backup {}: a custom-format manifest lists one file", self.id()),
            (Format::Directory, _) => self.manifest_sha256.clone(),
        })
    }

    /// The backup as `store::backups` reads it back.
    pub fn stored(&self, storage: &Storage) -> Result<Stored> {
        let m = self.readable()?;
        let encrypted_to = match (self.sealed, m.encrypted_to.is_empty()) {
            (false, _) => Vec::new(),
            (true, false) => m.encrypted_to.clone(),
            // Recorded nowhere before manifest version 2: the keys that
            // opened its manifest open its objects.
            (true, true) => storage.identities.public_names(),
        };
        Ok(Stored {
            name: self.place.id.clone(),
            label: self.place.label.clone(),
            attempt: self.attempt,
            format: m.format,
            checksum: self.checksum()?,
            stored_size: i64::try_from(m.sizes().1).unwrap_or(i64::MAX),
            encrypted_to,
            contents: m.contents.as_ref().map(|c| serde_json::to_value(&c.tables)).transpose()?,
            head_sha256: m.contents.as_ref().and_then(|c| c.head_sha256.clone()),
            stored_under: self.place.under.clone(),
        })
    }

    /// Every file its manifest lists is in storage with the size it
    /// lists: a manifest that does not match its objects is refused. (Each
    /// file's SHA-256 is checked as it is read back.)
    pub async fn check_objects(&self, storage: &Storage) -> Result<()> {
        let m = self.readable()?;
        let keys = storage.keys(&self.place, self.attempt).sealed(self.sealed);
        if m.format == Format::Custom && m.files.len() != 1 {
            bail!("backup {}: a custom-format manifest lists one file, not {}", self.id(), m.files.len());
        }
        for f in &m.files {
            let key = match m.format {
                Format::Custom => keys.dump(),
                Format::Directory => keys.dir_file(&f.name)?,
            };
            let meta = match storage.store.head(&key).await {
                Ok(meta) => meta,
                Err(object_store::Error::NotFound { .. }) => {
                    bail!("backup {}: its manifest lists {key}, which is not in storage", self.id())
                }
                Err(e) => return Err(e).with_context(|| format!("reading {key}")),
            };
            if meta.size as u64 != f.stored_size {
                bail!(
                    "backup {}: {key} has {} bytes, its manifest says {}: it does not match its manifest",
                    self.id(),
                    meta.size,
                    f.stored_size
                );
            }
        }
        Ok(())
    }
}

/// Every backup in storage, newest first: the last attempt of each that
/// wrote its manifest.
pub async fn list(storage: &Storage) -> Result<Vec<Found>> {
    let prefix = storage.prefix();
    let objects: Vec<object_store::ObjectMeta> = match storage.store.list(Some(prefix)).try_collect().await {
        Ok(o) => o,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", storage.url)),
    };
    let mut last: BTreeMap<Place, (i32, bool, object_store::ObjectMeta)> = BTreeMap::new();
    let mut kept = std::collections::BTreeSet::new();
    for o in objects {
        if let Some(place) = layout::parse_kept(prefix, &o.location) {
            kept.insert(place);
            continue;
        }
        let Some((place, attempt, sealed)) = layout::parse_manifest(prefix, &o.location) else { continue };
        if last.get(&place).is_none_or(|(a, _, _)| *a < attempt) {
            last.insert(place, (attempt, sealed, o));
        }
    }
    let mut found = Vec::with_capacity(last.len());
    for (place, (attempt, sealed, meta)) in last {
        // One removed since the listing (a purge) is not there.
        let (manifest, manifest_sha256) = match read(storage, &meta.location, sealed).await {
            Ok(read) => read,
            Err(e)
                if e.downcast_ref::<object_store::Error>()
                    .is_some_and(|e| matches!(e, object_store::Error::NotFound { .. })) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let manifest = manifest.and_then(|m| belongs(&m, &place).map(|()| m));
        let kept = match kept.contains(&place) {
            true => Some(pin(storage, &place).await?),
            false => None,
        };
        found.push(Found { place, attempt, sealed, modified: meta.last_modified, manifest, manifest_sha256, kept });
    }
    // Newest first, by when the manifest says it was taken (an object's
    // time changes when a bucket is copied), then by number.
    found.sort_by_cached_key(|f| {
        let taken = f
            .manifest
            .as_ref()
            .ok()
            .and_then(|m| DateTime::parse_from_rfc3339(&m.created_at).ok())
            .map_or(f.modified, |t| t.with_timezone(&Utc));
        let number: u64 = f.place.id[1..].parse().unwrap_or(0);
        std::cmp::Reverse((taken, number))
    });
    Ok(found)
}

/// A manifest says it is the backup its folder holds: the same id,
/// database (or source) and cluster. One copied or moved into another
/// backup's folder is refused as altered.
fn belongs(m: &Manifest, place: &Place) -> std::result::Result<(), String> {
    let cluster = m.cluster.as_ref().map(|c| c.system_identifier.as_str());
    if m.id != place.id || m.database != place.label || (place.under.is_some() && cluster != place.under.as_deref()) {
        return Err(format!(
            "its manifest describes {} of {} (cluster {}), not what its folder holds: it was altered or moved",
            m.id,
            m.database,
            cluster.unwrap_or("none")
        ));
    }
    Ok(())
}

/// The system identifier `cluster` means: an identifier, or the name
/// given to exactly one cluster among `found`.
pub fn resolve(found: &[Found], cluster: &str) -> Result<String> {
    if !cluster.is_empty() && cluster.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(cluster.to_string());
    }
    let ids: std::collections::BTreeSet<&str> =
        found.iter().filter(|f| f.cluster_name() == Some(cluster)).filter_map(|f| f.place.under.as_deref()).collect();
    match ids.len() {
        0 => bail!(
            "no readable backup in storage is of a cluster named {cluster:?} (see pgbackups list; --identity-file)"
        ),
        1 => Ok(ids.into_iter().next().expect("one").to_string()),
        _ => bail!(
            "{} clusters are named {cluster:?} in storage ({}): say which by its system identifier",
            ids.len(),
            ids.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// A pin marker's facts (when, by whom); a marker that does not parse is
/// still a pin.
async fn pin(storage: &Storage, place: &Place) -> Result<serde_json::Value> {
    let key = layout::kept_marker(storage.prefix(), place);
    let bytes = storage.store.get(&key).await.with_context(|| format!("reading {key}"))?.bytes().await?;
    Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::json!({})))
}

/// A manifest and the SHA-256 of its stored bytes; a manifest that cannot
/// be read here is `Err(why)`, not an error of the listing.
async fn read(storage: &Storage, key: &Path, sealed: bool) -> Result<(std::result::Result<Manifest, String>, String)> {
    let bytes = storage.store.get(key).await.with_context(|| format!("reading {key}"))?.bytes().await?;
    let sum = hex::encode(Sha256::digest(&bytes));
    let plain = if sealed {
        match storage.identities.try_open_bytes(key.as_ref(), &bytes) {
            Ok(Some(plain)) => plain,
            Ok(None) => return Ok((Err("encrypted with age: pass --identity-file with its key".into()), sum)),
            Err(e) => return Ok((Err(format!("{e:#}")), sum)),
        }
    } else {
        bytes.to_vec()
    };
    let manifest = Manifest::parse(&plain).map_err(|e| format!("{key}: {e:#}"));
    Ok((manifest, sum))
}

/// Which backups a command means: `--database`, `--cluster` (a name or an
/// identifier; `resolved` makes it an identifier).
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub database: Option<String>,
    pub cluster: Option<String>,
}

impl Filter {
    /// The same filter, its cluster an identifier.
    pub fn resolved(mut self, found: &[Found]) -> Result<Filter> {
        if let Some(c) = &self.cluster {
            self.cluster = Some(resolve(found, c)?);
        }
        Ok(self)
    }

    pub fn keeps(&self, f: &Found) -> bool {
        self.database.as_deref().is_none_or(|d| f.database() == d)
            && self.cluster.as_deref().is_none_or(|c| f.of_cluster(c))
    }
}

/// Backup `id` (or the newest readable one for `latest`) among `found`.
pub fn pick<'a>(found: &'a [Found], id: &str, filter: &Filter) -> Result<&'a Found> {
    let filter = &filter.clone().resolved(found)?;
    let kept: Vec<&Found> = found.iter().filter(|f| filter.keeps(f)).collect();
    if id == "latest" {
        // The newest, readable or not: never an older one in its place.
        let newest = kept.into_iter().next().context("no backup in storage matches (see pgbackups list)")?;
        newest.readable()?;
        return Ok(newest);
    }
    let id = id.trim().to_ascii_lowercase();
    let same: Vec<&Found> = kept.into_iter().filter(|f| f.place.id == id).collect();
    match same.as_slice() {
        [] => bail!("no backup {id} in storage (see pgbackups list)"),
        [one] => Ok(one),
        many => bail!(
            "{} backups are called {id} in storage (of {}): say which with --database or --cluster",
            many.len(),
            many.iter()
                .map(|f| format!("{}/{}", f.place.under.as_deref().unwrap_or("-"), f.database()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
