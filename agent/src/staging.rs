//! Local disk for files in flight (parallel dumps, restores' fetched
//! archives), one area per agent process:
//! `<staging dir>/<agent id>/`, held with a lock on `<agent id>.lock`. Two
//! agents on one machine (serving one control database or two) never touch
//! each other's files, and the area of an agent that died (its lock is free)
//! is removed by the next agent that starts there. Inside it, each transfer
//! attempt has its own directory, removed when its guard is dropped:
//! completed, failed, cancelled or handed back.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use crate::store::layout::segment;

/// This agent's part of the staging directory.
pub struct StagingArea {
    root: PathBuf,
    /// `<root>/<agent id as one segment>`; its lock is the same name plus `.lock`.
    dir: PathBuf,
    lock: PathBuf,
    /// The lock, once held; until then each transfer that needs the area
    /// tries again, and fails with the reason if it still cannot have it
    /// (a streamed capture needs none).
    held: Mutex<Option<File>>,
}

impl StagingArea {
    /// Claim `<root>/<agent id>`, after removing the areas of agents gone.
    pub fn claim(root: &Path, agent_id: &str) -> StagingArea {
        let name = segment(agent_id);
        let area = StagingArea {
            root: root.to_path_buf(),
            dir: root.join(&name),
            lock: root.join(format!("{name}.lock")),
            held: Mutex::new(None),
        };
        if let Err(e) = area.usable() {
            tracing::warn!("staging: {e:#}");
        }
        area
    }

    /// The area, claimed now if it was not yet.
    fn usable(&self) -> Result<&Path> {
        let mut held = self.held.lock().expect("staging lock");
        if held.is_none() {
            *held = Some(self.try_claim()?);
        }
        Ok(&self.dir)
    }

    fn try_claim(&self) -> Result<File> {
        let root = &self.root;
        std::fs::create_dir_all(root)
            .with_context(|| format!("staging directory {} cannot be created", root.display()))?;
        // One agent at a time looks around and claims.
        let guard = File::create(root.join(CLAIM_LOCK))
            .with_context(|| format!("staging directory {} is not writable", root.display()))?;
        guard.lock()?;
        for entry in std::fs::read_dir(root)?.flatten() {
            let file_name = entry.file_name();
            let Some(other) = file_name.to_str().and_then(|n| n.strip_suffix(".lock")) else { continue };
            if file_name == CLAIM_LOCK || entry.path() == self.lock {
                continue;
            }
            let free = File::open(entry.path()).map(|f| f.try_lock().is_ok()).unwrap_or(false);
            if free {
                // The lock goes only with the files it guards.
                match std::fs::remove_dir_all(root.join(other)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!("staging: cannot remove what a gone agent left in {other}: {e}")
                    }
                    _ => {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        let lock = File::create(&self.lock).with_context(|| format!("creating {}", self.lock.display()))?;
        if lock.try_lock().is_err() {
            bail!("another agent with the same id uses {}", self.dir.display());
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing stale {}", self.dir.display()))?;
        }
        std::fs::create_dir(&self.dir)
            .with_context(|| format!("staging directory {} cannot be created", self.dir.display()))?;
        Ok(lock)
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
}

/// Held while an agent looks for the areas of agents gone.
const CLAIM_LOCK: &str = ".claim.lock";

impl Drop for StagingArea {
    /// A clean exit leaves nothing behind.
    fn drop(&mut self) {
        if self.held.get_mut().map(|h| h.is_some()).unwrap_or(false) {
            let _ = std::fs::remove_dir_all(&self.dir);
            let _ = std::fs::remove_file(&self.lock);
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
        // A second agent with the same id is refused its area (until the
        // first is gone).
        let same = StagingArea::claim(root.path(), "host-1");
        assert!(same.create("b001", 1).is_err());
        assert!(sa.path().join("x").exists());
        // Dotted ids (hostnames) each have their own lock.
        let d1 = StagingArea::claim(root.path(), "db1.example.com-1");
        let d2 = StagingArea::claim(root.path(), "db1.example.com-2");
        assert!(d1.create("b001", 1).is_ok() && d2.create("b001", 1).is_ok());
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
