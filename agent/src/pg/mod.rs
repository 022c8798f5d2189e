//! PostgreSQL as the agent touches it: connections, the client programs it
//! runs (pg_dump, pg_restore, psql) and which major's it runs, and the
//! databases it restores into.

pub mod bins;
pub mod conn;
pub mod target;
pub mod tool;
