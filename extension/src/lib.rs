//! `pg_backups`: Heroku PGBackups-style logical backups from SQL.
//!
//! The extension records intent in the `backups` schema and notifies the
//! agent; it never runs pg_dump or touches storage. Most of the SQL surface
//! is plain SQL in `sql/` (so that every function can be SECURITY DEFINER
//! with a pinned search_path); this crate adds what needs Rust: schedule
//! parsing and next runs, retention choice, link signing, and the scheduler
//! background worker.

use pgrx::prelude::*;

mod gucs;
mod helpers;
mod worker;

// In-database tests. They must live in this crate (pgrx builds and installs
// the extension under test from it) and in a schema named `tests`, which
// pgrx takes from the module path, hence one inline module that includes a
// file per concern from src/tests/.
#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("tests/support.rs");
    include!("tests/surface.rs");
    include!("tests/schedules.rs");
    include!("tests/tick.rs");
    include!("tests/client.rs");
}

::pgrx::pg_module_magic!(name, version);

// Tables, roles and grants first; the functions that use the Rust helpers last.
extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../../sql/functions.sql", name = "functions", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::register();
    // A static background worker can only be registered while the postmaster
    // loads shared_preload_libraries; a plain CREATE EXTENSION load skips it.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        worker::register();
    }
}

/// Required by `cargo pgrx test`: the test cluster preloads the library so
/// that the worker runs, and treats the test database as the control one.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'pg_backups'",
            "backups.database_name = 'pgrx_tests'",
            "backups.link_base_url = 'http://127.0.0.1:8432'",
            "backups.link_secret = 'pgrx-test-link-secret'",
        ]
    }
}
