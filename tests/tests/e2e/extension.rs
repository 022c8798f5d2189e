//! The extension in a real cluster started by the harness: it loads from
//! shared_preload_libraries, its worker runs, and it refuses to be created
//! outside the control database.

use std::time::{Duration, Instant};

use pgbackups_e2e::cluster::Cluster;

const SCHEDULERS: &str = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_backups scheduler'";

/// Waits up to `secs` for `done`; fails saying `what`, with the server log.
fn wait_until(c: &Cluster, secs: u64, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}; log:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn extension_loads_and_the_worker_runs() {
    let c = Cluster::start().unwrap();
    wait_until(&c, 20, "no scheduler worker", || c.sql("postgres", SCHEDULERS).unwrap() == "1");
    assert_eq!(c.sql("postgres", "SELECT backups.capture()").unwrap(), "b001");
    assert_eq!(c.sql("postgres", "SELECT status FROM backups.list() WHERE id = 'b001'").unwrap(), "pending");

    // A schedule due now fires within seconds, as a001.
    c.sql("postgres", "SELECT backups.schedule('daily 07:00 Europe/Paris')").unwrap();
    c.sql("postgres", "UPDATE backups.schedules SET next_run_at = now()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.sql("postgres", "SELECT count(*) FROM backups.transfers WHERE name = 'a001'").unwrap() != "1" {
        assert!(Instant::now() < deadline, "the due schedule did not fire; log:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The next run is tomorrow at 07:00 Paris time.
    assert_eq!(
        c.sql("postgres", "SELECT to_char(next_run_local, 'HH24:MI') FROM backups.schedules()").unwrap(),
        "07:00"
    );
}

#[test]
fn the_worker_survives_sighup_and_comes_back_after_a_crash() {
    let c = Cluster::start().unwrap();
    let worker_pid =
        || c.sql("postgres", "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_backups scheduler'").unwrap();
    let wait_for_worker = |not: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pid = worker_pid();
            if !pid.is_empty() && pid != not {
                return pid;
            }
            assert!(Instant::now() < deadline, "worker not running; log:\n{}", c.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let first = wait_for_worker("");
    // SIGHUP: new settings are read, the same process goes on.
    std::fs::write(c.data().join("postgresql.auto.conf"), "backups.agent_timeout = '30s'\n").unwrap();
    c.sql("postgres", "SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(worker_pid(), first);
    assert_eq!(c.sql("postgres", "SHOW backups.agent_timeout").unwrap(), "30s");
    // A crash (SIGKILL makes the postmaster reinitialise): it is started again.
    unsafe { libc::kill(first.parse().unwrap(), libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.sql("postgres", "SELECT 1").is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(200));
    }
    let second = wait_for_worker(&first);
    assert_ne!(first, second);
}

#[test]
fn create_extension_outside_the_control_database_is_refused() {
    let c = Cluster::start().unwrap();
    c.sql("postgres", "CREATE DATABASE elsewhere").unwrap();
    let err = c.sql("elsewhere", "CREATE EXTENSION pg_backups").unwrap_err().to_string();
    assert!(err.contains("pg_backups can only be created in the control database \"postgres\""), "{err}");
    assert!(err.contains("backups.database_name"), "{err}");
    assert_eq!(c.sql("elsewhere", "SELECT count(*) FROM pg_extension WHERE extname = 'pg_backups'").unwrap(), "0");
}

#[test]
fn a_fast_shutdown_does_not_wait_for_a_tick_stuck_mid_step() {
    let c = Cluster::start_with(&["max_prepared_transactions = 2"]).unwrap();
    // A lock no session holds and no shutdown releases: a prepared
    // transaction's. The worker's next tick waits on it.
    c.sql(
        "postgres",
        "BEGIN; LOCK TABLE backups.schedules IN ACCESS EXCLUSIVE MODE; PREPARE TRANSACTION 'hold_schedules'",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c
        .sql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_backups scheduler' AND wait_event_type = 'Lock'",
        )
        .unwrap()
        != "1"
    {
        assert!(Instant::now() < deadline, "the worker is not waiting on the lock; log:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // pg_ctl stop -m fast: the worker stops mid-step, at once.
    let began = Instant::now();
    let out = c.pg_ctl_stop("fast", 10).unwrap();
    let took = began.elapsed();
    assert!(
        out.status.success(),
        "pg_ctl stop -m fast failed after {took:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(10), "the fast shutdown took {took:?}");
    c.start_server().unwrap();
    c.sql("postgres", "ROLLBACK PREPARED 'hold_schedules'").unwrap();
}

#[test]
fn a_tick_running_past_backups_tick_timeout_is_cancelled_and_the_worker_carries_on() {
    let c = Cluster::start_with(&["max_prepared_transactions = 2", "backups.tick_timeout = 2s"]).unwrap();
    let scheduler = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_backups scheduler'";
    wait_until(&c, 20, "the worker never started", || !c.sql("postgres", scheduler).unwrap().is_empty());
    let first = c.sql("postgres", scheduler).unwrap();
    // A step that would run for as long as the lock is held (30 s of
    // lock_timeout at least): the tick is cancelled after 2 s instead.
    c.sql(
        "postgres",
        "BEGIN; LOCK TABLE backups.schedules IN ACCESS EXCLUSIVE MODE; PREPARE TRANSACTION 'hold_schedules'",
    )
    .unwrap();
    let held = Instant::now();
    wait_until(&c, 20, "no tick was cancelled by backups.tick_timeout", || {
        c.log_text().contains("canceling statement due to statement timeout")
    });
    assert!(held.elapsed() < Duration::from_secs(15), "the tick was cancelled only after {:?}", held.elapsed());
    c.sql("postgres", "ROLLBACK PREPARED 'hold_schedules'").unwrap();
    // The worker starts again and ticks: a due schedule fires.
    c.sql("postgres", "SELECT backups.schedule('hourly', 'postgres')").unwrap();
    c.sql("postgres", "UPDATE backups.schedules SET next_run_at = now() - interval '1 minute'").unwrap();
    wait_until(&c, 20, "the worker did not carry on after the cancelled tick", || {
        c.sql("postgres", "SELECT count(*) FROM backups.transfers WHERE schedule_id IS NOT NULL").unwrap() == "1"
    });
    assert_ne!(c.sql("postgres", scheduler).unwrap(), first, "the worker was not started again");
}

#[test]
fn an_idle_worker_takes_no_transaction_ids() {
    // (No autovacuum: its ANALYZE of the catalogs would take ids too.)
    let c = Cluster::start_with(&["autovacuum = off"]).unwrap();
    wait_until(&c, 20, "no scheduler worker", || c.sql("postgres", SCHEDULERS).unwrap() == "1");
    // Its first ticks run retention and note when history was pruned;
    // then nothing is left to do.
    let caught_up = "SELECT count(*) FROM backups.worker_state WHERE NOT rerun AND pruned_at IS NOT NULL";
    wait_until(&c, 20, "the worker's first ticks did not end", || c.sql("postgres", caught_up).unwrap() == "1");
    let xid = || c.sql("postgres", "SELECT txid_current()").unwrap().parse::<i64>().unwrap();
    let before = xid();
    std::thread::sleep(Duration::from_secs(6));
    // Six idle ticks and one renotify: only this test's own second id.
    assert_eq!(xid() - before, 1, "an idle worker took transaction ids (a commit record, a WAL flush each)");
}

#[test]
fn the_worker_waits_through_drop_extension_and_resumes_after_create() {
    let c = Cluster::start().unwrap();
    wait_until(&c, 20, "the worker never ticked", || {
        c.sql("postgres", "SELECT count(*) FROM backups.worker_state WHERE pruned_at IS NOT NULL").unwrap() == "1"
    });
    // The schema stays after DROP EXTENSION (it is not a member): the
    // worker must not take it for the extension.
    let waits = || c.log_text().matches("waiting for CREATE EXTENSION pg_backups").count();
    let before = waits();
    c.sql("postgres", "DROP EXTENSION pg_backups CASCADE").unwrap();
    wait_until(&c, 20, "the worker did not notice the extension went", || waits() > before);
    std::thread::sleep(Duration::from_secs(2));
    let log = c.log_text();
    assert!(
        !log.contains("tick failed") && !log.contains("does not exist"),
        "a tick ran without the extension; log:\n{log}"
    );
    c.sql("postgres", "CREATE EXTENSION pg_backups").unwrap();
    c.sql("postgres", "SELECT backups.schedule('hourly', 'postgres')").unwrap();
    c.sql("postgres", "UPDATE backups.schedules SET next_run_at = now() - interval '1 minute'").unwrap();
    wait_until(&c, 20, "the worker did not resume after CREATE EXTENSION", || {
        c.sql("postgres", "SELECT count(*) FROM backups.transfers WHERE schedule_id IS NOT NULL").unwrap() == "1"
    });
}

#[test]
fn history_stuck_on_a_lock_does_not_hold_back_a_schedule() {
    let c = Cluster::start_with(&["max_prepared_transactions = 2", "backups.tick_timeout = 2s"]).unwrap();
    wait_until(&c, 20, "no scheduler worker", || c.sql("postgres", SCHEDULERS).unwrap() == "1");
    // Retention due, and its state row behind a lock no session releases:
    // the history half of every tick waits, and is cancelled at 2 s.
    c.sql("postgres", "SELECT backups._retention_due()").unwrap();
    c.sql("postgres", "BEGIN; LOCK TABLE backups.worker_state IN EXCLUSIVE MODE; PREPARE TRANSACTION 'hold_history'")
        .unwrap();
    wait_until(&c, 20, "the history step was not cancelled", || {
        c.log_text().contains("canceling statement due to statement timeout")
    });
    // A schedule due meanwhile still fires: its transaction is its own.
    c.sql("postgres", "SELECT backups.schedule('hourly', 'postgres')").unwrap();
    c.sql("postgres", "UPDATE backups.schedules SET next_run_at = now() - interval '1 minute'").unwrap();
    wait_until(&c, 20, "a due schedule waited for the history step", || {
        c.sql("postgres", "SELECT count(*) FROM backups.transfers WHERE schedule_id IS NOT NULL").unwrap() == "1"
    });
    c.sql("postgres", "ROLLBACK PREPARED 'hold_history'").unwrap();
}

#[test]
fn pruning_skips_a_row_someone_holds_and_never_waits() {
    // (The worker prunes nothing: only this test's call does.)
    let c = Cluster::start_with(&["max_prepared_transactions = 2", "backups.history_retention = 0"]).unwrap();
    // Three restores that ended two years ago; someone holds the first.
    c.sql(
        "postgres",
        "INSERT INTO backups.transfers (name, kind, status, database, database_oid, owner_role, created_at, started_at, finished_at)
         SELECT 'r90' || g, 'restore', 'completed', d.datname, d.oid, d.datdba, x.at, x.at, x.at
           FROM generate_series(1, 3) g, pg_database d, LATERAL (SELECT now() - interval '2 years' AS at) x
          WHERE d.datname = 'postgres'",
    )
    .unwrap();
    c.sql(
        "postgres",
        "BEGIN; SELECT 1 FROM backups.transfers WHERE name = 'r901' FOR UPDATE; PREPARE TRANSACTION 'hold_row'",
    )
    .unwrap();
    // (A client's statement_timeout: were it to wait, it would fail.) A
    // batch of two: the held row takes no place in it, so a full batch
    // still says that more may remain.
    let pruned = c.sql("postgres", "SET statement_timeout = '5s'; SELECT backups._prune('400 days', 2)").unwrap();
    assert_eq!(pruned, "2");
    assert_eq!(
        c.sql("postgres", "SELECT string_agg(name, ' ') FROM backups.transfers WHERE name LIKE 'r90%'").unwrap(),
        "r901"
    );
    c.sql("postgres", "ROLLBACK PREPARED 'hold_row'").unwrap();
    assert_eq!(c.sql("postgres", "SELECT backups._prune('400 days')").unwrap(), "1");
}
