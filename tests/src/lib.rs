//! End-to-end test support for pg_backups: throwaway Postgres clusters with
//! the extension preloaded, and the real `pgbackups` agent binary. Shared by
//! the e2e tests and `make demo` (through the `pgbackups-cluster` binary).

pub mod cluster;
