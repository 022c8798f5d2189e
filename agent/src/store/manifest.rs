//! `manifest.json`, stored beside each backup: what was dumped, how, and the
//! size and SHA-256 of every stored file.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pg::formats::contents::Contents;
use crate::store::layout::Format;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    /// Key below the storage prefix, for people: readers build keys with
    /// `layout` from the backup's label, id, attempt and this file's name.
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    pub id: String,
    pub database: String,
    /// `custom` (one pg_dump -Fc file) or `directory` (pg_dump -Fd files).
    pub format: Format,
    pub compression: String,
    pub source_size: i64,
    pub tool_versions: serde_json::Value,
    pub created_at: String,
    pub files: Vec<FileEntry>,
    /// Every table's rows, bytes and digest, as the capture read them
    /// (none in backups taken before the agent recorded them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<Contents>,
}

impl Manifest {
    pub fn new(
        id: &str,
        label: &str,
        format: Format,
        source_size: i64,
        versions: &serde_json::Value,
        mut files: Vec<FileEntry>,
        contents: Option<Contents>,
    ) -> Self {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Manifest {
            manifest_version: 1,
            id: id.to_string(),
            database: label.to_string(),
            format,
            compression: "zstd".into(),
            source_size,
            tool_versions: versions.clone(),
            created_at: chrono::Utc::now().to_rfc3339(),
            files,
            contents,
        }
    }

    /// The manifest's bytes and the checksum to record for the backup: the
    /// dump file's SHA-256 for a custom-format backup, the manifest's own
    /// (which covers every file's) for a directory-format one.
    pub fn to_bytes(&self) -> Result<(Vec<u8>, String)> {
        let bytes = serde_json::to_vec_pretty(self)?;
        let checksum = match (self.format, self.files.as_slice()) {
            (Format::Custom, [only]) => only.sha256.clone(),
            _ => hex::encode(Sha256::digest(&bytes)),
        };
        Ok((bytes, checksum))
    }

    /// Uncompressed and stored bytes of every file.
    pub fn sizes(&self) -> (u64, u64) {
        (self.files.iter().map(|f| f.size).sum(), self.files.iter().map(|f| f.stored_size).sum())
    }
}
