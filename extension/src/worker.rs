//! The scheduler background worker.
//!
//! Started by the postmaster from `shared_preload_libraries`, connected to
//! the control database (`backups.database_name`). Every second it runs
//! `backups._tick()` in two transactions of its own: first fire due
//! schedules, re-notify pending work every few seconds (a NOTIFY sent while
//! no agent listened is lost), and requeue or fail transfers whose agent
//! went silent; then expire backups past retention and prune old history.
//! Until `CREATE EXTENSION pg_backups` has run it
//! only waits. If the control database does not exist yet, connecting is
//! FATAL and the postmaster starts the worker again after RESTART_AFTER;
//! after a crash, likewise.

use std::cell::Cell;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{PgBuiltInOids, PgOid};

use crate::gucs;

const TICK: Duration = Duration::from_secs(1);
const RENOTIFY_EVERY: Duration = Duration::from_secs(5);
const RESTART_AFTER: Duration = Duration::from_secs(5);
/// How long the tick's plans are kept before they are made again: the
/// steps plan generically (sql/tick.sql), and a plan made while history
/// was tiny (after CREATE EXTENSION, or before a bulk load) must not
/// outlive the statistics it was made from, with or without autovacuum.
const REPLAN_EVERY: Duration = Duration::from_secs(600);

pub fn register() {
    BackgroundWorkerBuilder::new("pg_backups scheduler")
        .set_type("pg_backups scheduler")
        .set_library("pg_backups")
        .set_function("pg_backups_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

unsafe extern "C-unwind" {
    /// PostgreSQL's own SIGTERM handler for backends (postgres.c), the C
    /// symbol itself (`pg_sys::die` is a Rust wrapper, not a handler).
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
    /// utils/timeout.h, which pgrx does not bind: arm and disarm one of
    /// the backend's timers (`TimeoutId` is a C enum, an int).
    fn enable_timeout_after(id: std::ffi::c_int, delay_ms: std::ffi::c_int);
    fn disable_timeout(id: std::ffi::c_int, keep_indicator: bool);
}

/// `STATEMENT_TIMEOUT` in utils/timeout.h's `TimeoutId`, the same in
/// PostgreSQL 13 to 18. Its handler (installed for every backend with a
/// database connection) cancels the running query.
const STATEMENT_TIMEOUT: std::ffi::c_int = 3;

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_backups_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SIGTERM as every backend takes it (PostgreSQL's `die`): a query of a
    // tick stops at its next interrupt check, a lock wait included, and
    // the worker exits; so `pg_ctl stop -m fast` does not wait for a tick.
    unsafe { pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die)) };
    let database = gucs::string(&gucs::DATABASE_NAME);
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // No step of a tick waits long on someone's lock: it fails (and the
    // worker starts again) rather than hold its snapshot for minutes.
    // (Each transaction of a tick is bounded by backups.tick_timeout: see tick().)
    BackgroundWorker::transaction(|| Spi::run("SET lock_timeout = '30s'"))
        .unwrap_or_else(|e| error!("pg_backups scheduler: {e}"));
    log!("pg_backups scheduler started on database \"{database}\"");

    let mut last_notify = Instant::now() - RENOTIFY_EVERY;
    let mut last_replan = Instant::now();
    let mut waiting_logged = false;
    while BackgroundWorker::wait_latch(Some(TICK)) {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if last_replan.elapsed() >= REPLAN_EVERY {
            // Marks every cached plan of this process stale (no catalog
            // access, outside a transaction): each is made again when next used.
            unsafe { pg_sys::ResetPlanCache() };
            last_replan = Instant::now();
        }
        let renotify = last_notify.elapsed() >= RENOTIFY_EVERY;
        // Two transactions: what is due now, then history (which may be
        // slow, or wait on a lock, without holding back what fired).
        for (steps, renotify) in [(URGENT_STEPS, renotify), (HISTORY_STEPS, false)] {
            match BackgroundWorker::transaction(|| tick(steps, renotify)) {
                None => {
                    if !waiting_logged {
                        log!("pg_backups scheduler: waiting for CREATE EXTENSION pg_backups in \"{database}\"");
                        waiting_logged = true;
                    }
                    break;
                }
                Some(summary) => {
                    waiting_logged = false;
                    if renotify {
                        last_notify = Instant::now();
                    }
                    if let Some(s) = summary
                        .filter(|s| s != r#"{"fired": 0, "failed": 0, "pruned": 0, "expired": 0, "requeued": 0}"#)
                    {
                        log!("pg_backups scheduler: {s}");
                    }
                }
            }
        }
    }
    log!("pg_backups scheduler stopping");
}

/// `_tick()`'s steps, in the two transactions of a tick.
const URGENT_STEPS: &[&str] = &["schedules", "reap"];
const HISTORY_STEPS: &[&str] = &["retention", "prune"];

/// One transaction of a tick: `_tick()` with these steps. `None` while the
/// extension is not installed; otherwise what `_tick()` did, as JSON text.
fn tick(steps: &[&str], renotify: bool) -> Option<Option<String>> {
    if !installed() {
        return None;
    }
    // A statement timeout of our own around the tick: PostgreSQL's
    // statement_timeout timer is only started for client statements. When
    // it fires, the tick's query is cancelled (SIGINT, as
    // pg_cancel_backend() would), the transaction rolls back and the worker
    // starts again: nothing a tick runs holds its snapshot for long.
    let timeout_ms = gucs::TICK_TIMEOUT.get().saturating_mul(1000);
    unsafe { enable_timeout_after(STATEMENT_TIMEOUT, timeout_ms) };
    // Run as a client's SELECT runs: under the transaction's snapshot
    // (BackgroundWorker::transaction pushes one), and without a transaction
    // id until _tick() writes something (pgrx's Spi::get_one takes one
    // first: a commit record, and a WAL flush on durable settings, every
    // second of an idle worker). The statement is parsed and planned once
    // per process (PostgreSQL replans it if the extension is dropped and
    // created again).
    let summary = Spi::connect(|client| {
        TICK_STATEMENT.with(|kept| {
            if kept.get().is_none() {
                let types = [
                    PgBuiltInOids::BOOLOID,
                    PgBuiltInOids::FLOAT8OID,
                    PgBuiltInOids::INT4OID,
                    PgBuiltInOids::INT4OID,
                    PgBuiltInOids::TEXTARRAYOID,
                ]
                .map(PgOid::BuiltIn);
                // Leaked: never freed by a destructor during exit(), after
                // PostgreSQL's own exit callbacks.
                let statement = client
                    .prepare(
                        "SELECT backups._tick($1, pg_catalog.make_interval(secs => $2), $3, pg_catalog.make_interval(mins => $4), $5)::pg_catalog.text",
                        &types,
                    )?
                    .keep();
                kept.set(Some(Box::leak(Box::new(statement))));
            }
            let statement: &OwnedPreparedStatement = kept.get().expect("prepared above");
            client
                .select(
                    statement,
                    Some(1),
                    &[
                        renotify.into(),
                        f64::from(gucs::AGENT_TIMEOUT.get()).into(),
                        gucs::KEEP_MANUAL.get().into(),
                        gucs::HISTORY_RETENTION.get().into(),
                        steps.to_vec().into(),
                    ],
                )?
                .first()
                .get_one::<String>()
        })
    })
    .unwrap_or_else(|e| error!("pg_backups scheduler tick failed: {e}"));
    // (Should the timer fire between the tick's end and this line, the
    // pending cancel ends this transaction: the worker starts again.)
    unsafe { disable_timeout(STATEMENT_TIMEOUT, false) };
    Some(summary)
}

thread_local! {
    /// The tick's statement, prepared once (SPI_keepplan).
    static TICK_STATEMENT: Cell<Option<&'static OwnedPreparedStatement>> = const { Cell::new(None) };
    /// pg_extension has been seen to hold pg_backups, by this process.
    static CONFIRMED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the extension is installed, for the price of two syscache
/// lookups once pg_extension has said so: its schema, and in it its
/// `worker_state` table, which DROP EXTENSION drops (the schema itself
/// stays: CREATE EXTENSION made it, as the control file's `schema`, but it
/// is not a member).
fn installed() -> bool {
    let schema = unsafe { pg_sys::get_namespace_oid(c"backups".as_ptr(), true) };
    if schema == pg_sys::InvalidOid
        || unsafe { pg_sys::get_relname_relid(c"worker_state".as_ptr(), schema) } == pg_sys::InvalidOid
    {
        CONFIRMED.set(false);
        return false;
    }
    if !CONFIRMED.get() {
        CONFIRMED.set(unsafe { pg_sys::get_extension_oid(c"pg_backups".as_ptr(), true) } != pg_sys::InvalidOid);
    }
    CONFIRMED.get()
}
