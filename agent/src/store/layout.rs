//! Where a backup's objects are: every key is built here, from the storage
//! prefix, the folder of the cluster whose backup it is (its system
//! identifier), the backup's label (its database, or its named source),
//! its id and the attempt that wrote it.
//!
//! ```text
//! <prefix>/<cluster>/<label>/<id>/backup.dump.zst        custom format (attempt 1)
//! <prefix>/<cluster>/<label>/<id>/dump/<file>.zst        directory format, one object per file
//! <prefix>/<cluster>/<label>/<id>/manifest.json          written last: without it, an unfinished attempt
//! <prefix>/<cluster>/<label>/<id>/backup-2.dump.zst ...  a retried attempt: `-<attempt>`
//! <prefix>/<cluster>/<label>/<id>/kept.json              pinned (backups.keep()), for adoption
//! ```
//!
//! Several clusters may share one prefix: each writes under its own folder,
//! so that two clusters' `shop/b001` never meet, and a rebuilt cluster (a
//! new identifier) never overwrites the backups of the one it replaced.
//! Backups stored before clusters had folders have no `<cluster>` part.
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

/// Which backup: the folder of the cluster it belongs to (None: stored
/// before clusters had folders), its label and its id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub under: Option<String>,
    pub label: String,
    pub id: String,
}

impl Place {
    pub fn new(under: Option<&str>, label: &str, id: &str) -> Place {
        Place { under: under.map(str::to_string), label: label.to_string(), id: id.to_string() }
    }
}

/// Everything stored for one backup, every attempt: what a purge removes.
pub fn backup_folder(prefix: &Path, place: &Place) -> Path {
    let base = match &place.under {
        Some(cluster) => prefix.child(part(&segment(cluster))),
        None => prefix.clone(),
    };
    base.child(part(&segment(&place.label))).child(part(&segment(&place.id)))
}

/// The marker of a pinned backup (`backups.keep()`), whatever its attempt:
/// never encrypted, it says only when and by whom.
pub fn kept_marker(prefix: &Path, place: &Place) -> Path {
    backup_folder(prefix, place).child(part("kept.json"))
}

/// A key read back as a backup's file: its place and the file's name (the
/// last part), or None for a key no backup of ours has.
fn parse_place(prefix: &Path, key: &Path) -> Option<(Place, String)> {
    let rel: Vec<String> = key.prefix_match(prefix)?.map(|p| p.as_ref().to_string()).collect();
    let (under, label, id, file) = match rel.as_slice() {
        [label, id, file] => (None, label, id, file),
        [under, label, id, file] => (Some(unsegment(under)?), label, id, file),
        _ => return None,
    };
    // A cluster folder is a system identifier; an id, a backup's name.
    if under.as_deref().is_some_and(|u| u.is_empty() || !u.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    if !pgbackups_core::naming::is_name(id) {
        return None;
    }
    Some((Place { under, label: unsegment(label)?, id: id.clone() }, file.clone()))
}

/// A pin marker's key, read back: whose it is.
pub fn parse_kept(prefix: &Path, key: &Path) -> Option<Place> {
    let (place, file) = parse_place(prefix, key)?;
    (file == "kept.json" && kept_marker(prefix, &place) == *key).then_some(place)
}

/// A manifest's key, read back: which attempt of which backup it is, or
/// None for any other key. What listing storage goes by (`store::catalog`).
pub fn parse_manifest(prefix: &Path, key: &Path) -> Option<(Place, i32, bool)> {
    let (place, file) = parse_place(prefix, key)?;
    let (stem, sealed) = match file.strip_suffix(".age") {
        Some(stem) => (stem, true),
        None => (file.as_str(), false),
    };
    let attempt = match stem.strip_prefix("manifest")?.strip_suffix(".json")? {
        "" => 1,
        n => n.strip_prefix('-')?.parse().ok().filter(|a| *a > 1)?,
    };
    // Only keys this module would build for what it read back.
    (Keys::new(prefix, &place, attempt).sealed(sealed).manifest() == *key).then_some((place, attempt, sealed))
}

/// The name `segment` made `s` from, or None if it made no such segment.
fn unsegment(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    (segment(&name) == s).then_some(name)
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
    pub fn new(prefix: &Path, place: &Place, attempt: i32) -> Keys {
        let suffix = if attempt > 1 { format!("-{attempt}") } else { String::new() };
        Keys { folder: backup_folder(prefix, place), suffix, sealed: "" }
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

    fn legacy(label: &str, id: &str) -> Place {
        Place::new(None, label, id)
    }

    #[test]
    fn plain_names_read_as_before() {
        let k = Keys::new(&Path::default(), &legacy("shop", "b001"), 1);
        assert_eq!(k.dump().as_ref(), "shop/b001/backup.dump.zst");
        assert_eq!(k.manifest().as_ref(), "shop/b001/manifest.json");
        assert_eq!(k.dir_file("toc.dat").unwrap().as_ref(), "shop/b001/dump/toc.dat.zst");
        let k = Keys::new(&Path::from("pg"), &legacy("shop_2", "a012"), 2);
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
        let k = Keys::new(&Path::default(), &legacy("shop", "b001"), 1);
        for bad in ["", "../x", ".hidden", "a/b", "x y"] {
            assert!(k.dir_file(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_clusters_backups_are_in_its_folder_and_manifest_keys_read_back() {
        let prefix = Path::from("pg");
        let place = Place::new(Some("7301234567890123456"), "q3#sales", "b001");
        let k = Keys::new(&prefix, &place, 1);
        assert_eq!(k.dump().as_ref(), "pg/7301234567890123456/q3=23sales/b001/backup.dump.zst");
        for (attempt, sealed) in [(1, false), (2, false), (1, true), (12, true)] {
            let key = Keys::new(&prefix, &place, attempt).sealed(sealed).manifest();
            assert_eq!(parse_manifest(&prefix, &key), Some((place.clone(), attempt, sealed)), "{key}");
        }
        assert_eq!(parse_kept(&prefix, &kept_marker(&prefix, &place)), Some(place.clone()));
        assert_eq!(parse_kept(&prefix, &Keys::new(&prefix, &place, 1).manifest()), None);
        let old = legacy("shop", "a012");
        let key = Keys::new(&prefix, &old, 3).manifest();
        assert_eq!(parse_manifest(&prefix, &key), Some((old, 3, false)));
        for other in [
            "pg/shop/b001/backup.dump.zst",
            "pg/shop/b001/manifest-1.json",
            "pg/shop/b001/manifest-x.json",
            "pg/shop/b001/dump/manifest.json",
            "pg/a/b/c/d/manifest.json",
            "pg/shop/b=2/manifest.json",
            "pg/shop/b=41/manifest.json",
            "pg/shop/x/manifest.json",
            "pg/x7/shop/b001/manifest.json",
            "other/shop/b001/manifest.json",
            "pg/shop/b001/manifest.json.age.age",
        ] {
            assert_eq!(parse_manifest(&prefix, &Path::from(other)), None, "{other}");
        }
    }

    #[test]
    fn segments_read_back_to_their_names() {
        for n in ["q3#sales", "café", "..", "-x", "a=b", "plain"] {
            assert_eq!(unsegment(&segment(n)).as_deref(), Some(n));
        }
        for bad in ["=4", "=ZZ", "=61", ".x"] {
            assert_eq!(unsegment(bad), None, "{bad}");
        }
    }
}
