//! `pgbackups download [ID] [-o FILE]`: like `heroku pg:backups:download`,
//! a file pg_restore accepts (`latest.dump`, then `latest.dump.1` if taken),
//! checksum verified, with a progress bar. A parallel (directory-format)
//! backup becomes a directory (`latest.dir`) for `pg_restore -Fd`. It is
//! written into a hidden sibling first and renamed only once every byte was
//! verified; on any failure nothing is left and the exit code is 1. With
//! storage alone (no control database), the backup is found from the
//! manifests: an id or `latest`, `--database`, `--cluster`.

use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::StoreConfig;
use crate::pg::conn;
use crate::store::backups;
use crate::store::catalog::{self, Filter};
use crate::store::layout::Format;
use crate::store::storage::Storage;

pub async fn run(cfg: StoreConfig, id: Option<String>, output: Option<PathBuf>, filter: Filter) -> Result<()> {
    let storage = Storage::open(&cfg)?;
    let b = match &cfg.database_url {
        Some(url) => {
            let control = conn::connect_with_retry(url, Duration::from_secs(10))
                .await
                .context("cannot reach the control database")?;
            backups::find(&control, id.as_deref().filter(|i| *i != "latest")).await?
        }
        None => {
            let found = catalog::list(&storage).await?;
            catalog::pick(&found, id.as_deref().unwrap_or("latest"), &filter)?.stored(&storage)?
        }
    };
    let out = match output {
        Some(p) => p,
        None => free_name(match b.format {
            Format::Custom => "latest.dump",
            Format::Directory => "latest.dir",
        }),
    };
    if out.exists() {
        bail!("{} already exists", out.display());
    }

    let fetched = Arc::new(AtomicU64::new(0));
    let bar = ProgressBar::new(b.stored_size.max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(b.name.clone());
    let ticker = {
        let (bar, fetched) = (bar.clone(), fetched.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(fetched.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Into a hidden sibling first; renamed only once every checksum matched.
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(FsPath::new("."));
    let work = tempfile::Builder::new().prefix(".pgbackups-download-").tempdir_in(parent)?;
    let result = backups::fetch(&storage, &b, work.path(), &fetched).await;
    ticker.abort();
    let path = match result {
        Ok(p) => p,
        Err(e) => {
            bar.abandon();
            return Err(e);
        }
    };
    bar.finish();
    std::fs::rename(&path, &out).with_context(|| format!("moving the download to {}", out.display()))?;
    let how = match b.format {
        Format::Custom => format!("pg_restore --clean --no-acl --no-owner -d mydb {}", out.display()),
        Format::Directory => format!("pg_restore -Fd --clean --no-acl --no-owner -j 4 -d mydb {}", out.display()),
    };
    eprintln!("{} downloaded to {} (sha256 verified). Restore it with:\n  {how}", b.name, out.display());
    Ok(())
}

/// `latest.dump`, or `latest.dump.1`, `.2`... if taken.
fn free_name(base: &str) -> PathBuf {
    let mut p = PathBuf::from(base);
    let mut n = 1;
    while p.exists() {
        p = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    p
}
