//! A transfer's own directory on local disk (parallel dumps' files in
//! flight, restores' fetched archives), removed when the guard is dropped:
//! whether the transfer completed, failed, was cancelled or handed back.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct Staging {
    path: PathBuf,
}

impl Staging {
    /// `<root>/<name>-<attempt>`, empty: whatever a crashed earlier run
    /// left there is removed first.
    pub fn create(root: &Path, name: &str, attempt: i32) -> Result<Staging> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("staging directory {} cannot be created", root.display()))?;
        let path = root.join(format!("{name}-{attempt}"));
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing stale {}", path.display()))?;
        }
        std::fs::create_dir(&path).with_context(|| format!("staging directory {} is not writable", root.display()))?;
        Ok(Staging { path })
    }

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
    fn the_directory_goes_with_the_guard_and_stale_ones_are_cleared() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("b001-1/old")).unwrap();
        let s = Staging::create(root.path(), "b001", 1).unwrap();
        assert_eq!(std::fs::read_dir(s.path()).unwrap().count(), 0);
        std::fs::write(s.path().join("toc.dat"), b"x").unwrap();
        let p = s.path().to_path_buf();
        drop(s);
        assert!(!p.exists());
    }
}
