//! Local disk for files in flight (parallel dumps, restores' fetched
//! archives, links' directory backups), one area per agent process:
//! `<staging dir>/<agent id>/`, held with a lock on `<agent id>.lock`. Two
//! agents on one machine (serving one control database or two) never touch
//! each other's files, and the area of an agent that died (its lock is free)
//! is removed by the next agent that starts there. Inside it, each transfer
//! attempt has its own directory, removed when its guard is dropped:
//! completed, failed, cancelled or handed back.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::store::layout::segment;

/// This agent's part of the staging directory.
pub struct StagingArea {
    dir: PathBuf,
    /// Why the area cannot be used, if it cannot: the transfers that need
    /// it fail with this (a streamed capture needs none).
    unusable: Option<String>,
    _lock: Option<File>,
}

impl StagingArea {
    /// Claim `<root>/<agent id>`, after removing the areas of agents gone.
    pub fn claim(root: &Path, agent_id: &str) -> StagingArea {
        let dir = root.join(segment(agent_id));
        match Self::try_claim(root, &dir) {
            Ok(lock) => StagingArea { dir, unusable: None, _lock: Some(lock) },
            Err(e) => {
                tracing::warn!("staging: {e:#}");
                StagingArea { dir, unusable: Some(format!("{e:#}")), _lock: None }
            }
        }
    }

    fn try_claim(root: &Path, dir: &Path) -> Result<File> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("staging directory {} cannot be created", root.display()))?;
        // One agent at a time looks around and claims.
        let guard = File::create(root.join(".claim.lock"))
            .with_context(|| format!("staging directory {} is not writable", root.display()))?;
        guard.lock()?;
        for entry in std::fs::read_dir(root)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "lock") && path.file_stem().is_some_and(|s| s != ".claim") {
                let free = File::open(&path).map(|f| f.try_lock().is_ok()).unwrap_or(false);
                if free {
                    let _ = std::fs::remove_dir_all(path.with_extension(""));
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let lock_path = dir.with_extension("lock");
        let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            bail!("another agent with the same id uses {}", dir.display());
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing stale {}", dir.display()))?;
        }
        std::fs::create_dir(dir).with_context(|| format!("staging directory {} cannot be created", dir.display()))?;
        Ok(lock)
    }

    fn usable(&self) -> Result<&Path> {
        match &self.unusable {
            Some(why) => bail!("{why}"),
            None => Ok(&self.dir),
        }
    }

    /// The directory of one transfer attempt, empty.
    pub fn create(&self, name: &str, attempt: i32) -> Result<Staging> {
        let path = self.usable()?.join(format!("{name}-{attempt}"));
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing stale {}", path.display()))?;
        }
        std::fs::create_dir(&path)
            .with_context(|| format!("staging directory {} is not writable", self.dir.display()))?;
        Ok(Staging { path })
    }

    /// A directory of its own for anything else (a link being served).
    pub fn temp(&self, prefix: &str) -> Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new().prefix(prefix).tempdir_in(self.usable()?)?)
    }
}

impl Drop for StagingArea {
    /// A clean exit leaves nothing behind.
    fn drop(&mut self) {
        if self._lock.is_some() {
            let _ = std::fs::remove_dir_all(&self.dir);
            let _ = std::fs::remove_file(self.dir.with_extension("lock"));
        }
    }
}

/// One attempt's directory, removed with the guard.
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("could not remove staging directory {}: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_keep_to_their_own_area_and_clear_those_of_agents_gone() {
        let root = tempfile::tempdir().unwrap();
        let a = StagingArea::claim(root.path(), "host-1");
        let b = StagingArea::claim(root.path(), "host-2");
        let sa = a.create("r001", 1).unwrap();
        let sb = b.create("r001", 1).unwrap();
        assert_ne!(sa.path(), sb.path());
        std::fs::write(sa.path().join("x"), b"x").unwrap();
        // A second agent with the same id is refused its area.
        let same = StagingArea::claim(root.path(), "host-1");
        assert!(same.create("b001", 1).is_err());
        assert!(sa.path().join("x").exists());
        // host-2 dies (its lock goes with it): the next agent clears its area.
        let gone = sb.path().parent().unwrap().to_path_buf();
        drop(sb);
        drop(b);
        let _c = StagingArea::claim(root.path(), "host-3");
        assert!(!gone.exists());
        assert!(sa.path().join("x").exists());
        let p = sa.path().to_path_buf();
        drop(sa);
        assert!(!p.exists());
    }

    #[test]
    fn an_unusable_root_fails_the_transfers_that_need_it_with_the_reason() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let area = StagingArea::claim(&file.path().join("staging"), "host-1");
        let e = area.create("b001", 1).err().unwrap().to_string();
        assert!(e.contains("staging directory"), "{e}");
    }
}
