//! End-to-end test support for pg_backups: throwaway Postgres clusters with
//! the extension preloaded, the real `pgbackups` agent binary, and a real
//! S3-compatible server. Shared by the e2e tests and `make demo` (through
//! the `pgbackups-cluster` binary).

pub mod agent;
pub mod cluster;
pub mod data;
pub mod env;
pub mod os;
pub mod proxy;
pub mod s3;
