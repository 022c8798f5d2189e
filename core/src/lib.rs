//! Logic shared by the `pg_backups` extension and the `pgbackups` agent.
//! Pure functions only: no database, no storage, no I/O.

pub mod link;
pub mod naming;
pub mod pattern;
pub mod retention;
pub mod schedule;
