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

// In-database tests, kept in the top-level pgrx-tests/ folder. They must be
// compiled into this crate (pgrx builds and installs the extension under test
// from it) and live in a schema named `tests`, which pgrx takes from the
// module path: hence one inline module that includes a file per concern.
#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("../../pgrx-tests/support.rs");
    include!("../../pgrx-tests/surface.rs");
    include!("../../pgrx-tests/schedules.rs");
    include!("../../pgrx-tests/lifecycle.rs");
    include!("../../pgrx-tests/tick.rs");
    include!("../../pgrx-tests/client.rs");
    include!("../../pgrx-tests/tenancy.rs");
    include!("../../pgrx-tests/catalog.rs");
    include!("../../pgrx-tests/history.rs");
}

::pgrx::pg_module_magic!(name, version);

// Tables and roles first, grants last; the functions in between, each file
// after the ones it calls (see sql/). A kind of transfer is one file of
// sql/kinds/ and one line here.
extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../../sql/tenancy.sql", name = "tenancy", requires = ["schema"]);
extension_sql_file!("../../sql/internal.sql", name = "internal", requires = ["tenancy"]);
extension_sql_file!("../../sql/progress.sql", name = "progress", requires = ["internal"]);
extension_sql_file!("../../sql/links.sql", name = "links", requires = ["internal"]);
extension_sql_file!("../../sql/lifecycle.sql", name = "lifecycle", requires = ["internal"]);
extension_sql_file!("../../sql/transfers.sql", name = "transfers", requires = ["lifecycle", "progress", "links"]);
extension_sql_file!("../../sql/schedules.sql", name = "schedules", requires = ["internal"]);
extension_sql_file!("../../sql/tick.sql", name = "tick", requires = ["lifecycle"]);
extension_sql_file!("../../sql/keep.sql", name = "keep", requires = ["internal"]);
extension_sql_file!("../../sql/catalog.sql", name = "catalog", requires = ["lifecycle"]);
extension_sql_file!("../../sql/selective.sql", name = "selective", requires = ["internal"]);
extension_sql_file!(
    "../../sql/health.sql",
    name = "health",
    requires = ["schedules", "lifecycle", "progress", "links"]
);
extension_sql_file!("../../sql/kinds/capture.sql", name = "capture", requires = ["transfers", "selective"]);
extension_sql_file!("../../sql/kinds/restore.sql", name = "restore", requires = ["transfers"]);
extension_sql_file!("../../sql/kinds/copy.sql", name = "copy", requires = ["transfers"]);
extension_sql_file!("../../sql/kinds/verify.sql", name = "verify", requires = ["transfers"]);
extension_sql_file!("../../sql/kinds/restore_tables.sql", name = "restore_tables", requires = ["transfers"]);
extension_sql_file!("../../sql/grants.sql", name = "grants", finalize);

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
