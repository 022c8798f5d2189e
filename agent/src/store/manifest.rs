//! `manifest.json`, stored beside each backup, written last: what was
//! dumped, how, the size and SHA-256 of every stored file, and (since
//! version 2) everything the catalog's row holds and what a new cluster
//! needs to receive the database, so that storage alone describes, lists
//! and restores a backup once its cluster is gone (`store::catalog`).
//! A folder without a manifest is an unfinished attempt.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pg::cluster::database::Properties;
use crate::pg::cluster::roles::Role;
use crate::pg::formats::contents::Contents;
use crate::store::layout::Format;

/// What this agent writes; it reads this one and every earlier one.
pub const VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    /// Key below the storage prefix, for people: readers build keys with
    /// `layout` from the backup's place, attempt and this file's name.
    pub path: String,
    /// The file's name in the dump (`backup.dump`, `toc.dat`, `3241.dat`).
    pub name: String,
    /// Uncompressed bytes.
    pub size: u64,
    /// Stored (zstd) bytes.
    pub stored_size: u64,
    /// SHA-256 of the stored bytes, hex.
    pub sha256: String,
}

/// Which cluster's catalog a backup belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterId {
    /// `pg_control_system()`'s, as text: the folder its backups are under.
    pub system_identifier: String,
    /// The name given to it (`--cluster-name`, default the agent's host):
    /// what `list --cluster` and `adopt --cluster` go by after a rebuild.
    pub name: String,
}

impl std::fmt::Display for ClusterId {
    /// `prod (7301234567890123456)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.system_identifier)
    }
}

/// What a new cluster needs to receive the database: the roles the dump
/// names, and the database's own properties (pg_dump writes neither).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receiving {
    pub roles: Vec<Role>,
    pub database: Properties,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    pub id: String,
    /// The backup's label: its database, or its named source.
    pub database: String,
    /// `custom` (one pg_dump -Fc file) or `directory` (pg_dump -Fd files).
    pub format: Format,
    pub compression: String,
    pub source_size: i64,
    pub tool_versions: serde_json::Value,
    /// When the manifest was written: the end of the capture.
    pub created_at: String,
    pub files: Vec<FileEntry>,
    /// Every table's rows, bytes and digest, as the capture read them
    /// (none in backups taken before the agent recorded them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<Contents>,
    /// The catalog's row (`backups._manifest_facts`): name, database,
    /// owner, source, schedule, times, options, attempt, pinned, folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterId>,
    /// The age recipients its objects are encrypted to (none: plain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encrypted_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving: Option<Receiving>,
    /// SHA-256 of this manifest without this field (`canonical`): a
    /// manifest edited or damaged in storage is refused. Not a signature:
    /// whoever can write storage can also recompute it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
}

/// The catalog's facts and what the capture learnt of its source, beside
/// the files: what `Manifest::new` takes.
pub struct About {
    /// The source's size (pg_database_size) and the versions involved.
    pub source_size: i64,
    pub tool_versions: serde_json::Value,
    pub catalog: serde_json::Value,
    pub cluster: ClusterId,
    pub encrypted_to: Vec<String>,
    pub receiving: Receiving,
}

impl Manifest {
    pub fn new(
        id: &str,
        label: &str,
        format: Format,
        mut files: Vec<FileEntry>,
        contents: Option<Contents>,
        about: About,
    ) -> Self {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Manifest {
            manifest_version: VERSION,
            id: id.to_string(),
            database: label.to_string(),
            format,
            compression: "zstd".into(),
            source_size: about.source_size,
            tool_versions: about.tool_versions,
            created_at: chrono::Utc::now().to_rfc3339(),
            files,
            contents,
            catalog: Some(about.catalog),
            cluster: Some(about.cluster),
            encrypted_to: about.encrypted_to,
            receiving: Some(about.receiving),
            manifest_sha256: None,
        }
    }

    /// The manifest's bytes (with its own checksum) and the checksum to
    /// record for the backup: the dump file's SHA-256 for a custom-format
    /// backup, the manifest's stored bytes' (which cover every file's) for
    /// a directory-format one, which the caller computes once sealed.
    pub fn to_bytes(&self) -> Result<(Vec<u8>, String)> {
        let mut sealed = self.clone();
        sealed.manifest_sha256 = None;
        sealed.manifest_sha256 = Some(hex::encode(Sha256::digest(canonical(&serde_json::to_value(&sealed)?)?)));
        let bytes = serde_json::to_vec_pretty(&sealed)?;
        let checksum = match (self.format, self.files.as_slice()) {
            (Format::Custom, [only]) => only.sha256.clone(),
            _ => hex::encode(Sha256::digest(&bytes)),
        };
        Ok((bytes, checksum))
    }

    /// A manifest read back from its plain bytes, its own checksum checked
    /// (a version 1 manifest has none).
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let value: serde_json::Value = serde_json::from_slice(bytes).context("the manifest is not JSON")?;
        let manifest: Manifest = serde_json::from_value(value.clone()).context("the manifest is not one")?;
        if manifest.manifest_version > VERSION {
            bail!(
                "manifest version {} is newer than this pgbackups reads ({VERSION}): upgrade pgbackups",
                manifest.manifest_version
            );
        }
        let later = manifest.catalog.is_some() || manifest.cluster.is_some() || manifest.receiving.is_some();
        match (&manifest.manifest_sha256, manifest.manifest_version) {
            (None, 1) if later => bail!("a version 1 manifest with later fields and no checksum: it was altered"),
            (None, 1) => {}
            (None, _) => bail!("the manifest has no checksum of its own: it was altered"),
            (Some(recorded), _) => {
                let mut rest = value;
                if let Some(o) = rest.as_object_mut() {
                    o.remove("manifest_sha256");
                }
                let actual = hex::encode(Sha256::digest(canonical(&rest)?));
                if &actual != recorded {
                    bail!("the manifest does not match its own checksum (sha256 {actual}, recorded {recorded}): it was altered or damaged");
                }
            }
        }
        if let Some(r) = &manifest.receiving {
            r.database.check().context("the manifest's database properties were altered")?;
        }
        Ok(manifest)
    }

    /// Uncompressed and stored bytes of every file.
    pub fn sizes(&self) -> (u64, u64) {
        (self.files.iter().map(|f| f.size).sum(), self.files.iter().map(|f| f.stored_size).sum())
    }

    /// A fact of the catalog's row, if this manifest has it.
    pub fn fact(&self, name: &str) -> Option<&serde_json::Value> {
        self.catalog.as_ref()?.get(name).filter(|v| !v.is_null())
    }

    /// A text fact of the catalog's row.
    pub fn fact_str(&self, name: &str) -> Option<&str> {
        self.fact(name)?.as_str()
    }
}

/// The bytes a manifest's own checksum covers: its JSON with keys sorted
/// and no spaces, whatever order and spacing the file has.
fn canonical(value: &serde_json::Value) -> Result<Vec<u8>> {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(o) => {
                let m: std::collections::BTreeMap<&String, serde_json::Value> =
                    o.iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::to_value(m).expect("a map of JSON values")
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    Ok(serde_json::to_vec(&sorted(value))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let file = FileEntry {
            path: "7/shop/b001/backup.dump.zst".into(),
            name: "backup.dump".into(),
            size: 10,
            stored_size: 5,
            sha256: "ab".repeat(32),
        };
        let mut m = Manifest::new(
            "b001",
            "shop",
            Format::Custom,
            vec![file],
            None,
            About {
                source_size: 100,
                tool_versions: serde_json::json!({"pg_dump": "15"}),
                catalog: serde_json::json!({"name": "b001", "owner": "alice", "scheduled": false}),
                cluster: ClusterId { system_identifier: "7".into(), name: "db1".into() },
                encrypted_to: vec![],
                receiving: Receiving { roles: vec![], database: Properties::example("alice") },
            },
        );
        m.created_at = "2026-12-07T00:00:00Z".into();
        m
    }

    #[test]
    fn a_manifest_reads_back_and_an_altered_one_is_refused() {
        let (bytes, checksum) = sample().to_bytes().unwrap();
        assert_eq!(checksum, "ab".repeat(32));
        let back = Manifest::parse(&bytes).unwrap();
        assert_eq!(back.fact_str("owner"), Some("alice"));
        assert_eq!(back.cluster.as_ref().unwrap().system_identifier, "7");
        // Reformatted: the same manifest.
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        Manifest::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
        // One fact changed, or the checksum taken away: refused.
        let text = String::from_utf8(bytes.clone()).unwrap();
        for altered in [
            text.replace("\"alice\"", "\"mallory\""),
            text.replace(&"ab".repeat(32), &"cd".repeat(32)),
            text.replace("\"manifest_sha256\"", "\"other\""),
        ] {
            assert_ne!(altered, text);
            let e = Manifest::parse(altered.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("altered"), "{e}");
        }
    }

    #[test]
    fn version_1_manifests_still_read() {
        let v1 = br#"{"manifest_version":1,"id":"b001","database":"shop","format":"custom","compression":"zstd",
            "source_size":1,"tool_versions":{},"created_at":"2026-01-01T00:00:00Z","files":[]}"#;
        let m = Manifest::parse(v1).unwrap();
        assert!(m.catalog.is_none() && m.cluster.is_none() && m.fact("owner").is_none());
        let newer = String::from_utf8(v1.to_vec()).unwrap().replace("\"manifest_version\":1", "\"manifest_version\":9");
        assert!(Manifest::parse(newer.as_bytes()).unwrap_err().to_string().contains("upgrade pgbackups"));
    }
}
