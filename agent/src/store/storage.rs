//! Object storage from a URL, through the `object_store` crate:
//! `file:///var/lib/pgbackups` or `s3://bucket/prefix` (AWS, MinIO, Ceph, R2:
//! endpoint, region and keys from the usual AWS_* variables or the config's
//! `storage_options`). Which key holds what is `layout`'s business.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{BackoffConfig, GetOptions, GetRange, ObjectStore, RetryConfig};

use crate::config::StoreConfig;
use crate::store::crypt::Identities;
use crate::store::layout::{self, Keys, Place};

/// A read that gets no byte for this long is resumed (`Storage::read`).
const READ_IDLE: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Storage {
    pub store: Arc<dyn ObjectStore>,
    prefix: Path,
    pub url: String,
    /// How long a read that broke off keeps trying to resume.
    retry_timeout: Duration,
    /// The directory of file:// storage.
    local_root: Option<std::path::PathBuf>,
    /// What encrypted objects are decrypted with (`verify::decompressed`).
    pub identities: Arc<Identities>,
}

impl Storage {
    pub fn open(cfg: &StoreConfig) -> Result<Self> {
        let s = Self::open_url(&cfg.storage, &cfg.storage_options, cfg.storage_retry_timeout)?;
        Ok(Storage { identities: cfg.identities.clone(), ..s })
    }

    pub fn open_url(url: &str, options: &BTreeMap<String, String>, retry_timeout: Duration) -> Result<Self> {
        let bad = || format!("invalid storage URL {url:?}: expected file:///absolute/path or s3://bucket/prefix");
        let parsed = url::Url::parse(url).with_context(bad)?;
        let mut local_root = None;
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|_| anyhow::anyhow!(bad()))?;
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create storage directory {}", dir.display()))?;
                local_root = Some(dir.clone());
                (Arc::new(LocalFileSystem::new_with_prefix(&dir)?), Path::default())
            }
            "s3" | "s3a" => {
                // Retry transient errors for `retry_timeout`, whatever the count:
                // ten quick retries would give up within two seconds.
                let mut b = AmazonS3Builder::from_env().with_url(url).with_retry(RetryConfig {
                    retry_timeout,
                    max_retries: 10_000,
                    backoff: BackoffConfig {
                        init_backoff: Duration::from_millis(100),
                        max_backoff: Duration::from_secs(5),
                        base: 2.0,
                    },
                });
                for (k, v) in options {
                    let key =
                        AmazonS3ConfigKey::from_str(k).with_context(|| format!("unknown storage option {k:?}"))?;
                    b = b.with_config(key, v);
                }
                let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint).unwrap_or_default();
                if endpoint.starts_with("http://") {
                    b = b.with_allow_http(true);
                }
                let prefix = Path::parse(parsed.path().trim_matches('/')).with_context(bad)?;
                (Arc::new(b.build().with_context(bad)?), prefix)
            }
            other => bail!("unsupported storage scheme {other:?} in {url:?}: use file:// or s3://"),
        };
        Ok(Storage { store, prefix, url: url.to_string(), retry_timeout, local_root, identities: Arc::default() })
    }

    /// The bytes of `key`, from a read that resumes where it broke off.
    /// One GET can stay open for as long as a streamed restore loads what
    /// it reads; the client's own retries end `retry_timeout` after the
    /// GET began (and its timeout counts the whole body), so a broken or
    /// stalled body (no byte for `READ_IDLE`) is resumed here with a range
    /// GET of the same version (If-Match its ETag), until nothing has come
    /// for `retry_timeout` of asking (the time the reader does not read,
    /// loading what it has, does not count).
    pub fn read(&self, key: &Path) -> BoxStream<'static, object_store::Result<Bytes>> {
        struct State {
            store: Arc<dyn ObjectStore>,
            key: Path,
            offset: u64,
            etag: Option<String>,
            body: Option<BoxStream<'static, object_store::Result<Bytes>>>,
            asked: Instant,
            retry_timeout: Duration,
            failure: Option<object_store::Error>,
        }
        let state = State {
            store: self.store.clone(),
            key: key.clone(),
            offset: 0,
            etag: None,
            body: None,
            asked: Instant::now(),
            retry_timeout: self.retry_timeout,
            failure: None,
        };
        futures::stream::try_unfold(state, |mut st| async move {
            st.asked = Instant::now();
            loop {
                if st.body.is_none() {
                    if st.asked.elapsed() > st.retry_timeout {
                        return Err(st.failure.take().unwrap_or(object_store::Error::Generic {
                            store: "storage",
                            source: format!("no byte of {} for {:?}", st.key, st.retry_timeout).into(),
                        }));
                    }
                    let resuming = st.offset > 0 || st.failure.is_some();
                    let options = GetOptions {
                        range: (st.offset > 0).then_some(GetRange::Offset(st.offset)),
                        if_match: st.etag.clone(),
                        ..Default::default()
                    };
                    match st.store.get_opts(&st.key, options).await {
                        Ok(r) => {
                            if st.etag.is_none() {
                                st.etag = r.meta.e_tag.clone();
                            }
                            st.body = Some(r.into_stream());
                        }
                        // A first GET that fails is the caller's to see (the
                        // client retried it already), and so is a changed object.
                        Err(e) if !resuming || matches!(e, object_store::Error::Precondition { .. }) => return Err(e),
                        Err(e) => {
                            tracing::info!("resuming {} at byte {}: {e}", st.key, st.offset);
                            st.failure = Some(e);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                }
                let body = st.body.as_mut().expect("a body");
                let next = match tokio::time::timeout(READ_IDLE, body.next()).await {
                    Ok(next) => next,
                    Err(_) => Some(Err(object_store::Error::Generic {
                        store: "storage",
                        source: format!("no byte for {READ_IDLE:?}").into(),
                    })),
                };
                match next {
                    Some(Ok(bytes)) => {
                        st.offset += bytes.len() as u64;
                        st.failure = None;
                        return Ok(Some((bytes, st)));
                    }
                    None => return Ok(None),
                    Some(Err(e)) => {
                        tracing::info!("reading {} broke off at byte {}: {e}", st.key, st.offset);
                        st.failure = Some(e);
                        st.body = None;
                    }
                }
            }
        })
        .boxed()
    }

    /// Where this storage's backups are, below its root.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The keys of one attempt of one backup.
    pub fn keys(&self, place: &Place, attempt: i32) -> Keys {
        Keys::new(&self.prefix, place, attempt)
    }

    /// Everything stored for one backup, every attempt.
    pub fn backup_folder(&self, place: &Place) -> Path {
        layout::backup_folder(&self.prefix, place)
    }

    /// A key below the storage prefix, as recorded (for people) in the
    /// transfers table and the manifest.
    pub fn relative(&self, key: &Path) -> String {
        let s = key.as_ref();
        s.strip_prefix(self.prefix.as_ref()).map(|r| r.trim_start_matches('/')).unwrap_or(s).to_string()
    }

    /// Remove every object under `dir` and check that none is left; nothing
    /// there is not an error. On file storage the folder goes too, with any
    /// multipart upload an agent killed mid-capture left staged there
    /// (invisible as objects; on S3 a bucket lifecycle rule aborts those).
    pub async fn delete_all(&self, dir: &Path) -> Result<usize> {
        let objects: Vec<Path> = match self.store.list(Some(dir)).map_ok(|o| o.location).try_collect().await {
            Ok(o) => o,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("listing {dir}")),
        };
        let n = objects.len();
        // Manifests first: a purge cut short leaves no manifest whose
        // objects are gone (a backup listed whole that is not).
        let (manifests, rest): (Vec<Path>, Vec<Path>) =
            objects.into_iter().partition(|p| p.filename().is_some_and(|f| f.starts_with("manifest")));
        for m in &manifests {
            self.delete_if_there(m).await?;
        }
        let locations = futures::stream::iter(rest.into_iter().map(Ok)).boxed();
        let mut deleted = self.store.delete_stream(locations);
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e).with_context(|| format!("deleting under {dir}")),
            }
        }
        drop(deleted);
        let left: Vec<_> = self.store.list(Some(dir)).take(1).try_collect().await.unwrap_or_default();
        if let Some(o) = left.first() {
            bail!("{} is still in storage after deleting everything under {dir}", o.location);
        }
        if let Some(folder) = self.local_path(dir) {
            match std::fs::remove_dir_all(&folder) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", folder.display()));
                }
                _ => {}
            }
        }
        Ok(n)
    }

    /// Remove the objects one attempt may have written: what a failed,
    /// cancelled or lost attempt leaves behind.
    pub async fn delete_attempt(&self, keys: &Keys) -> Result<usize> {
        // Encrypted or not: whichever this attempt wrote. The manifest
        // first: a removal cut short never leaves one whose objects are gone.
        let (plain, sealed) = (keys.clone().sealed(false), keys.clone().sealed(true));
        let mut n = 0;
        for key in [plain.manifest(), sealed.manifest()] {
            n += usize::from(self.delete_if_there(&key).await?);
        }
        n += self.delete_all(&keys.dir()).await?;
        for key in [plain.dump(), sealed.dump()] {
            n += usize::from(self.delete_if_there(&key).await?);
        }
        Ok(n)
    }

    /// Delete `key`; whether it was there.
    pub async fn delete_if_there(&self, key: &Path) -> Result<bool> {
        match self.store.delete(key).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("deleting {key}")),
        }
    }

    /// Make `keys` durable on file storage: fsync each file, then every
    /// directory from theirs up to the storage root, so that a backup
    /// recorded as completed survives a power cut. (Object stores make an
    /// object durable before they acknowledge it.)
    pub async fn sync(&self, keys: &[Path]) -> Result<()> {
        let Some(root) = self.local_root.clone() else { return Ok(()) };
        let paths: Vec<std::path::PathBuf> = keys.iter().filter_map(|k| self.local_path(k)).collect();
        tokio::task::spawn_blocking(move || {
            let mut dirs = std::collections::BTreeSet::new();
            for p in &paths {
                std::fs::File::open(p)
                    .and_then(|f| f.sync_all())
                    .with_context(|| format!("syncing {}", p.display()))?;
                let mut d = p.parent();
                while let Some(dir) = d {
                    dirs.insert(dir.to_path_buf());
                    if dir == root {
                        break;
                    }
                    d = dir.parent();
                }
            }
            for d in dirs {
                std::fs::File::open(&d)
                    .and_then(|f| f.sync_all())
                    .with_context(|| format!("syncing {}", d.display()))?;
            }
            Ok(())
        })
        .await?
    }

    /// Where a key lives on file storage (none on other stores).
    fn local_path(&self, key: &Path) -> Option<std::path::PathBuf> {
        // Layout keys need no decoding: each part is its own file name.
        self.local_root.as_ref().map(|root| key.parts().fold(root.clone(), |p, part| p.join(part.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delete_all_removes_every_object_and_staged_upload_and_syncs_on_file_storage() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let s = Storage::open_url(&url, &BTreeMap::new(), Duration::from_secs(1)).unwrap();
        let keys = s.keys(&Place::new(Some("7"), "q3#sales", "b001"), 1);
        s.store.put(&keys.dump(), "x".into()).await.unwrap();
        s.store.put(&keys.dir_file("toc.dat").unwrap(), "y".into()).await.unwrap();
        s.sync(&[keys.dump()]).await.unwrap();
        assert!(dir.path().join("7/q3=23sales/b001/backup.dump.zst").exists());
        // A staged multipart upload, as an agent killed mid-upload leaves it.
        std::fs::write(dir.path().join("7/q3=23sales/b001/backup-2.dump.zst#1"), b"partial").unwrap();
        let n = s.delete_all(&s.backup_folder(&Place::new(Some("7"), "q3#sales", "b001"))).await.unwrap();
        assert_eq!(n, 2);
        assert!(!dir.path().join("7/q3=23sales/b001").exists());
        assert_eq!(s.delete_all(&s.backup_folder(&Place::new(Some("7"), "q3#sales", "b001"))).await.unwrap(), 0);
    }

    #[test]
    fn s3_server_side_encryption_options_pass_through_to_object_store() {
        let kms: BTreeMap<String, String> = [
            ("aws_server_side_encryption", "aws:kms"),
            ("aws_sse_kms_key_id", "arn:aws:kms:eu-west-3:111122223333:key/1234abcd"),
            ("aws_sse_bucket_key_enabled", "true"),
            ("aws_region", "eu-west-3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Storage::open_url("s3://bucket/pg", &kms, Duration::from_secs(1)).unwrap();
        // The value reaches the builder, which checks it.
        let mut bad = kms.clone();
        bad.insert("aws_server_side_encryption".into(), "aws:nope".into());
        let e = Storage::open_url("s3://bucket/pg", &bad, Duration::from_secs(1)).err().unwrap();
        assert!(format!("{e:#}").contains("aws:nope"), "{e:#}");
        let mut unknown = kms;
        unknown.insert("aws_sse_kms_key".into(), "x".into());
        let e = Storage::open_url("s3://bucket/pg", &unknown, Duration::from_secs(1)).err().unwrap();
        assert!(e.to_string().contains("unknown storage option \"aws_sse_kms_key\""), "{e}");
    }
}
