//! Object storage: the store itself, where each key goes, streaming
//! uploads, manifests, reading backups back verified, and purging them.

pub mod backups;
pub mod layout;
pub mod manifest;
pub mod purge;
pub mod storage;
pub mod upload;
pub mod verify;
