//! PostgreSQL as the agent touches it: connections (and their TLS), the
//! client programs it runs (pg_dump, pg_restore, psql) and which major's it
//! runs, and the databases it restores into (through a shadow database swapped
//! in at the end).

pub mod applier;
pub mod archive;
pub mod bins;
pub mod conn;
pub mod contents;
pub mod copy_text;
pub mod custom;
pub mod database;
pub mod leftovers;
pub mod quote;
pub mod scratch;
pub mod shadow;
pub mod size;
pub mod target;
pub mod teardown;
pub mod tls;
pub mod tool;
