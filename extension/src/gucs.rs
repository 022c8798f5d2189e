//! The extension's settings (`backups.*` in postgresql.conf).

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// The database the worker connects to and the only one where
/// `CREATE EXTENSION pg_backups` is allowed. Changing it needs a restart.
pub static DATABASE_NAME: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// Seconds without a heartbeat after which a running transfer is requeued.
pub static AGENT_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(60);
/// How many manual backups to keep per database.
pub static KEEP_MANUAL: GucSetting<i32> = GucSetting::<i32>::new(25);
/// How long ended transfers are kept in the history, in minutes (0: for
/// ever); a backup's row stays as long as the backup.
pub static HISTORY_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(400 * 24 * 60);
/// Seconds one tick of the worker may run before it is cancelled.
pub static TICK_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(60);
/// The agent's public base URL, e.g. `https://backups.example.com`.
pub static LINK_BASE_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// The key download links are signed with; the agent has the same one.
pub static LINK_SECRET: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn register() {
    GucRegistry::define_string_guc(
        c"backups.database_name",
        c"The control database of pg_backups.",
        c"The scheduler worker connects to it, and CREATE EXTENSION pg_backups is only allowed there.",
        &DATABASE_NAME,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"backups.agent_timeout",
        c"How long a running transfer may go without an agent heartbeat before it is requeued.",
        c"After three attempts the transfer is marked failed instead.",
        &AGENT_TIMEOUT,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"backups.keep_manual",
        c"How many manual backups (b001...) to keep per database.",
        c"Older completed manual backups are marked expired and the agent deletes them from storage.",
        &KEEP_MANUAL,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"backups.history_retention",
        c"How long ended transfers and their logs stay in the history (e.g. 400d; 0 keeps them for ever).",
        c"The scheduler deletes older ones a batch at a time; a backup's row stays as long as the backup is in storage.",
        &HISTORY_RETENTION,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MIN,
    );
    GucRegistry::define_int_guc(
        c"backups.tick_timeout",
        c"How long each of the two transactions of a scheduler tick may run before it is cancelled.",
        c"A cancelled transaction is logged, its work rolled back, and the worker starts again a few seconds later.",
        &TICK_TIMEOUT,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"backups.link_base_url",
        c"The public base URL of the agent's download endpoint, used by backups.url().",
        c"For example https://backups.example.com or http://127.0.0.1:8432.",
        &LINK_BASE_URL,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"backups.link_secret",
        c"The secret download links are signed with; the agent must have the same one.",
        c"Only superusers can see it.",
        &LINK_SECRET,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
}

/// A string setting as a Rust string; empty when unset.
pub fn string(setting: &GucSetting<Option<CString>>) -> String {
    setting.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}
