//! Where a backup's objects are: every key is built here, from the storage
//! prefix, the backup's label (its database, or its named source), its id
//! and the attempt that wrote it.
//!
//! ```text
//! <prefix>/<label>/<id>/backup.dump.zst        custom format (attempt 1)
//! <prefix>/<label>/<id>/dump/<file>.zst        directory format, one object per file
//! <prefix>/<label>/<id>/manifest.json
//! <prefix>/<label>/<id>/backup-2.dump.zst ...  a retried attempt: `-<attempt>`
//! ```
//!
//! An encrypted backup's objects end in `.age` (`backup.dump.zst.age`,
//! `dump/toc.dat.zst.age`, `manifest.json.age`): `age -d -i KEY ... | zstd -d`
//! gives the file back by hand.
//!
//! A label can be any database name, so it is written as one safe segment:
//! ASCII letters, digits, `_`, `-` and `.` stay (but for a leading `.` or
//! `-`), and every other byte becomes `=XX` (hex, `=` included). The mapping
//! is one to one, so no two databases share a folder, and the result needs
//! no further escaping by object_store, S3 or a filesystem. Keys are always
//! built from these parts, never parsed back from text.

use anyhow::{bail, Result};
use object_store::path::{Path, PathPart};
use serde::{Deserialize, Serialize};

/// How a backup is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One `pg_dump -Fc` archive.
    Custom,
    /// The files of a `pg_dump -Fd` directory.
    Directory,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Custom => "custom",
            Format::Directory => "directory",
        }
    }

    pub fn parse(s: &str) -> Result<Format> {
        match s {
            "custom" => Ok(Format::Custom),
            "directory" => Ok(Format::Directory),
            other => bail!("unknown backup format {other:?}"),
        }
    }
}

/// One segment for `name`: readable where it can be, always safe, one to one.
pub fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || ((b == b'-' || b == b'.') && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

fn part(s: &str) -> PathPart<'static> {
    PathPart::from(s.to_string())
}

/// Everything stored for one backup, every attempt: what a purge removes.
pub fn backup_folder(prefix: &Path, label: &str, id: &str) -> Path {
    prefix.child(part(&segment(label))).child(part(&segment(id)))
}

/// The keys of one attempt of one backup.
#[derive(Debug, Clone)]
pub struct Keys {
    folder: Path,
    /// `""` for the first attempt, `-N` after: a retry never overwrites.
    suffix: String,
    /// `".age"` when the objects are encrypted.
    sealed: &'static str,
}

impl Keys {
    pub fn new(prefix: &Path, label: &str, id: &str, attempt: i32) -> Keys {
        let suffix = if attempt > 1 { format!("-{attempt}") } else { String::new() };
        Keys { folder: backup_folder(prefix, label, id), suffix, sealed: "" }
    }

    /// The same keys for objects encrypted with age (`true`), or not.
    pub fn sealed(mut self, encrypted: bool) -> Keys {
        self.sealed = if encrypted { ".age" } else { "" };
        self
    }

    /// The single object of a custom-format backup.
    pub fn dump(&self) -> Path {
        self.folder.child(part(&format!("backup{}.dump.zst{}", self.suffix, self.sealed)))
    }

    /// The folder holding a directory-format backup's files.
    pub fn dir(&self) -> Path {
        self.folder.child(part(&format!("dump{}", self.suffix)))
    }

    /// One file of a directory-format backup (`toc.dat`, `3245.dat`).
    pub fn dir_file(&self, name: &str) -> Result<Path> {
        if name.is_empty()
            || name.starts_with('.')
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            bail!("unexpected file name {name:?} in a directory-format dump");
        }
        Ok(self.dir().child(part(&format!("{name}.zst{}", self.sealed))))
    }

    pub fn manifest(&self) -> Path {
        self.folder.child(part(&format!("manifest{}.json{}", self.suffix, self.sealed)))
    }

    /// What `object_key` records: the dump, or the files' folder.
    pub fn object(&self, format: Format) -> Path {
        match format {
            Format::Custom => self.dump(),
            Format::Directory => self.dir(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_read_as_before() {
        let k = Keys::new(&Path::default(), "shop", "b001", 1);
        assert_eq!(k.dump().as_ref(), "shop/b001/backup.dump.zst");
        assert_eq!(k.manifest().as_ref(), "shop/b001/manifest.json");
        assert_eq!(k.dir_file("toc.dat").unwrap().as_ref(), "shop/b001/dump/toc.dat.zst");
        let k = Keys::new(&Path::from("pg"), "shop_2", "a012", 2);
        assert_eq!(k.dump().as_ref(), "pg/shop_2/a012/backup-2.dump.zst");
        assert_eq!(k.dir().as_ref(), "pg/shop_2/a012/dump-2");
        assert_eq!(k.manifest().as_ref(), "pg/shop_2/a012/manifest-2.json");
        let k = k.sealed(true);
        assert_eq!(k.dump().as_ref(), "pg/shop_2/a012/backup-2.dump.zst.age");
        assert_eq!(k.dir().as_ref(), "pg/shop_2/a012/dump-2");
        assert_eq!(k.dir_file("toc.dat").unwrap().as_ref(), "pg/shop_2/a012/dump-2/toc.dat.zst.age");
        assert_eq!(k.manifest().as_ref(), "pg/shop_2/a012/manifest-2.json.age");
        assert_eq!(k.sealed(false).dump().as_ref(), "pg/shop_2/a012/backup-2.dump.zst");
    }

    #[test]
    fn any_name_is_one_safe_segment_and_no_two_names_share_one() {
        let names = [
            "q3#sales",
            "50% off",
            "it's \"quoted\"",
            "café",
            "a/b",
            "..",
            ".",
            "-leading",
            "x%2Fy",
            "x=2Fy",
            "a b",
            "a\\b",
            "ünï",
            "x/y",
            "x=y",
            "~",
        ];
        let mut seen = std::collections::BTreeSet::new();
        for n in names {
            let s = segment(n);
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.=".contains(&b)), "{n:?} -> {s}");
            assert!(!s.starts_with('.') && !s.starts_with('-'), "{n:?} -> {s}");
            // object_store keeps it as it is: no second encoding.
            assert_eq!(PathPart::from(s.as_str()).as_ref(), s);
            assert!(Path::parse(format!("{s}/b001")).is_ok(), "{n:?} -> {s}");
            assert!(seen.insert(s.clone()), "{n:?} collides as {s}");
        }
        assert_eq!(segment("q3#sales"), "q3=23sales");
        assert_eq!(segment("café"), "caf=C3=A9");
        assert_eq!(segment(".."), "=2E.");
        assert_eq!(segment("shop"), "shop");
    }

    #[test]
    fn dump_file_names_are_checked() {
        let k = Keys::new(&Path::default(), "shop", "b001", 1);
        for bad in ["", "../x", ".hidden", "a/b", "x y"] {
            assert!(k.dir_file(bad).is_err(), "{bad:?}");
        }
    }
}
