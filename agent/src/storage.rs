//! Object storage from a URL, through the `object_store` crate:
//! `file:///var/lib/pgbackups` or `s3://bucket/prefix` (AWS, MinIO, Ceph, R2:
//! endpoint, region and keys from the usual AWS_* variables or the config's
//! `storage_options`). Keys: `<prefix>/<database>/<id>/<file>`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

#[derive(Clone)]
pub struct Storage {
    pub store: Arc<dyn ObjectStore>,
    prefix: Path,
    pub url: String,
    /// The directory of file:// storage.
    local_root: Option<std::path::PathBuf>,
}

impl Storage {
    pub fn open(url: &str, options: &BTreeMap<String, String>, retry_timeout: Duration) -> Result<Self> {
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
                let prefix = Path::from(parsed.path().trim_matches('/'));
                (Arc::new(b.build().with_context(bad)?), prefix)
            }
            other => bail!("unsupported storage scheme {other:?} in {url:?}: use file:// or s3://"),
        };
        Ok(Storage { store, prefix, url: url.to_string(), local_root })
    }

    /// `<prefix>/<parts...>`.
    pub fn key(&self, parts: &[&str]) -> Path {
        let mut p = self.prefix.clone();
        for part in parts {
            p = p.child(*part);
        }
        p
    }

    /// The folder of one backup.
    pub fn backup_dir(&self, database: &str, name: &str) -> Path {
        self.key(&[database, name])
    }

    /// Remove everything under `dir`; nothing there is not an error. On
    /// file storage the folder goes too, with any multipart upload an agent
    /// killed mid-capture left staged there (invisible as objects; on S3 a
    /// bucket lifecycle rule aborts those).
    pub async fn delete_dir(&self, dir: &Path) -> Result<usize> {
        let n = self.delete_objects(dir).await?;
        if let Some(root) = &self.local_root {
            let folder = dir.parts().fold(root.clone(), |p, part| p.join(part.as_ref()));
            match std::fs::remove_dir_all(&folder) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", folder.display()));
                }
                _ => {}
            }
        }
        Ok(n)
    }

    async fn delete_objects(&self, dir: &Path) -> Result<usize> {
        let objects: Vec<_> = match self.store.list(Some(dir)).try_collect().await {
            Ok(o) => o,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut n = 0;
        for o in objects {
            match self.store.delete(&o.location).await {
                Ok(()) => n += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e).with_context(|| format!("deleting {}", o.location)),
            }
        }
        Ok(n)
    }

    /// Relative key of an object below the storage prefix, as recorded in
    /// the transfers table.
    pub fn relative<'a>(&self, key: &'a Path) -> &'a str {
        let s = key.as_ref();
        s.strip_prefix(self.prefix.as_ref()).map(|r| r.trim_start_matches('/')).unwrap_or(s)
    }

    /// The full key from a recorded relative one.
    pub fn absolute(&self, relative: &str) -> Path {
        relative.split('/').filter(|p| !p.is_empty()).fold(self.prefix.clone(), |p, part| p.child(part))
    }
}
