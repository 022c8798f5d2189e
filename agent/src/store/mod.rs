//! Object storage: the store itself, where each key goes, streaming
//! uploads, manifests, encryption, reading backups back verified (whole,
//! or a table's frames: ranges), and purging them.

pub mod backups;
pub mod catalog;
pub mod crypt;
pub mod layout;
pub mod manifest;
pub mod purge;
pub mod ranges;
pub mod storage;
pub mod upload;
pub mod verify;
