// The worker's tick (backups._tick()), called directly so that each rule is
// checked deterministically; the client tests check the worker itself.

#[pg_test]
fn a_due_schedule_fires_once_and_moves_to_its_next_run() {
    run("SELECT backups.schedule('hourly')");
    // Due three hours ago: missed slots fire once, not three times.
    run("UPDATE backups.schedules SET next_run_at = now() - interval '3 hours'");
    let before: i64 = one("SELECT count(*) FROM backups.transfers WHERE name LIKE 'a%'");
    let fired: i32 = one("SELECT (backups._tick() ->> 'fired')::int");
    assert_eq!(fired, 1);
    let after: i64 = one("SELECT count(*) FROM backups.transfers WHERE name LIKE 'a%'");
    assert_eq!(after, before + 1);
    let (status, scheduled): (String, bool) = (
        one("SELECT status FROM backups.transfers WHERE name LIKE 'a%' ORDER BY id DESC LIMIT 1"),
        one("SELECT schedule_id IS NOT NULL FROM backups.transfers WHERE name LIKE 'a%' ORDER BY id DESC LIMIT 1"),
    );
    assert_eq!((status.as_str(), scheduled), ("pending", true));
    assert!(one::<bool>("SELECT next_run_at > now() AND last_run_at = now() FROM backups.schedules"));
    assert_eq!(one::<i32>("SELECT (backups._tick() ->> 'fired')::int"), 0);
}

#[pg_test]
fn a_silent_agent_gets_its_transfer_requeued_then_failed() {
    let b: String = one("SELECT backups.capture()");
    run(&format!(
        "UPDATE backups.transfers SET status = 'running', attempts = 1, agent_id = 'a1',
                started_at = now() - interval '5 minutes', heartbeat_at = now() - interval '2 minutes'
         WHERE name = '{b}'"
    ));
    // A heartbeat 2 minutes old is fine with a 10-minute timeout ...
    assert_eq!(one::<i32>("SELECT (backups._tick(agent_timeout => '10 minutes') ->> 'requeued')::int"), 0);
    // ... and stale with the default 60 s: requeued.
    assert_eq!(one::<i32>("SELECT (backups._tick(agent_timeout => '60 seconds') ->> 'requeued')::int"), 1);
    let (status, agent): (Option<String>, Option<String>) = Spi::get_two(&format!(
        "SELECT status, agent_id FROM backups.transfers WHERE name = '{b}'"
    ))
    .unwrap();
    assert_eq!((status.unwrap().as_str(), agent), ("pending", None));
    // Third attempt goes silent too: failed, with a clear error.
    run(&format!(
        "UPDATE backups.transfers SET status = 'running', attempts = 3, agent_id = 'a2',
                heartbeat_at = now() - interval '2 minutes' WHERE name = '{b}'"
    ));
    assert_eq!(one::<i32>("SELECT (backups._tick(agent_timeout => '60 seconds') ->> 'failed')::int"), 1);
    let (status, error): (String, String) = (
        one(&format!("SELECT status FROM backups.transfers WHERE name = '{b}'")),
        one(&format!("SELECT error FROM backups.transfers WHERE name = '{b}'")),
    );
    assert_eq!(status, "failed");
    assert!(error.contains("stopped sending heartbeats") && error.contains("3 attempts"), "{error}");
}

#[pg_test]
fn manual_backups_beyond_keep_manual_expire() {
    run("DELETE FROM backups.transfers");
    for i in 0..5 {
        let b: String = one("SELECT backups.capture()");
        run(&format!(
            "UPDATE backups.transfers SET status = 'completed', created_at = now() - interval '{i} hours' WHERE name = '{b}'"
        ));
    }
    assert_eq!(one::<i32>("SELECT (backups._tick(keep_manual => 3) ->> 'expired')::int"), 2);
    let expired: Vec<String> = Spi::connect(|c| {
        c.select("SELECT name FROM backups.transfers WHERE status = 'expired' ORDER BY created_at", None, &[])
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap())
            .collect()
    });
    // The oldest two (created 4 and 3 hours ago) go.
    assert_eq!(expired.len(), 2);
    let oldest: String = one("SELECT name FROM backups.transfers ORDER BY created_at LIMIT 1");
    assert_eq!(expired[0], oldest);
    assert_eq!(one::<i32>("SELECT (backups._tick(keep_manual => 3) ->> 'expired')::int"), 0);
}

#[pg_test]
fn scheduled_backups_expire_by_their_schedule_retention() {
    run("DELETE FROM backups.transfers");
    run("SELECT backups.schedule('daily 02:00', retain_daily => 2, retain_weekly => 0, retain_monthly => 0)");
    for day in 0..4 {
        let a: String = one("SELECT backups._next_name('a')");
        run(&format!(
            "INSERT INTO backups.transfers (name, kind, status, database, scheduled, created_at)
             VALUES ('{a}', 'capture', 'completed', current_database(), true, now() - interval '{day} days')"
        ));
    }
    // A manual backup is not touched by the schedule's retention.
    let b: String = one("SELECT backups.capture()");
    run(&format!("UPDATE backups.transfers SET status = 'completed', created_at = now() - interval '30 days' WHERE name = '{b}'"));
    assert_eq!(one::<i32>("SELECT (backups._tick() ->> 'expired')::int"), 2);
    assert_eq!(one::<i64>("SELECT count(*) FROM backups.transfers WHERE status = 'completed' AND name LIKE 'a%'"), 2);
    assert_eq!(one::<String>(&format!("SELECT status FROM backups.transfers WHERE name = '{b}'")), "completed");
}

#[pg_test]
fn manual_retention_counts_each_named_source_apart() {
    run("DELETE FROM backups.transfers");
    // Two older captures of the named source `replica`, three newer of this database.
    for (source, hours) in [("'replica'", 10), ("'replica'", 11), ("NULL", 1), ("NULL", 2), ("NULL", 3)] {
        let b: String = one(&format!("SELECT backups.capture(source => {source})"));
        run(&format!(
            "UPDATE backups.transfers SET status = 'completed', created_at = now() - interval '{hours} hours' WHERE name = '{b}'"
        ));
    }
    // Keep 2 per (database, source): one of this database's goes, none of the replica's.
    assert_eq!(one::<i32>("SELECT (backups._tick(keep_manual => 2) ->> 'expired')::int"), 1);
    assert_eq!(one::<i64>("SELECT count(*) FROM backups.transfers WHERE source = 'replica' AND status = 'completed'"), 2);
    assert_eq!(
        one::<String>("SELECT status FROM backups.transfers WHERE source IS NULL ORDER BY created_at LIMIT 1"),
        "expired"
    );
}

#[pg_test]
fn a_schedule_does_not_queue_while_its_previous_capture_is_unfinished() {
    run("DELETE FROM backups.transfers");
    run("SELECT backups.schedule('hourly')");
    run("UPDATE backups.schedules SET next_run_at = now() - interval '1 minute'");
    assert_eq!(one::<i32>("SELECT (backups._tick() ->> 'fired')::int"), 1);
    let first: String = one("SELECT name FROM backups.transfers WHERE name LIKE 'a%'");
    // Due again while the first is still pending, then while it runs: skipped, and said so.
    for status in ["pending", "running"] {
        run(&format!("UPDATE backups.transfers SET status = '{status}', heartbeat_at = now() WHERE name = '{first}'"));
        run("UPDATE backups.schedules SET next_run_at = now() - interval '1 minute'");
        assert_eq!(one::<i32>("SELECT (backups._tick() ->> 'fired')::int"), 0);
        assert_eq!(one::<i64>("SELECT count(*) FROM backups.transfers WHERE name LIKE 'a%'"), 1);
        assert!(one::<bool>("SELECT next_run_at > now() FROM backups.schedules"));
    }
    let said: i64 = one(&format!(
        "SELECT count(*) FROM backups.transfer_logs l JOIN backups.transfers t ON t.id = l.transfer_id
          WHERE t.name = '{first}' AND l.message LIKE '%skipped%'"
    ));
    assert_eq!(said, 2);
    // Once it has finished, the next due run fires again.
    run(&format!("UPDATE backups.transfers SET status = 'completed' WHERE name = '{first}'"));
    run("UPDATE backups.schedules SET next_run_at = now() - interval '1 minute'");
    assert_eq!(one::<i32>("SELECT (backups._tick() ->> 'fired')::int"), 1);
}

#[pg_test]
fn a_bad_schedule_row_is_skipped_and_the_rest_of_the_tick_goes_on() {
    run("DELETE FROM backups.transfers");
    run("SELECT backups.schedule('hourly')");
    // A zone that is no longer known (as after a tzdata change), due now.
    run("UPDATE backups.schedules SET timezone = 'Mars/Olympus', next_run_at = now() - interval '1 minute'");
    let b: String = one("SELECT backups.capture()");
    run(&format!(
        "UPDATE backups.transfers SET status = 'running', attempts = 1, agent_id = 'a1',
                started_at = now() - interval '5 minutes', heartbeat_at = now() - interval '2 minutes'
         WHERE name = '{b}'"
    ));
    let summary: pgrx::JsonB = one("SELECT backups._tick(agent_timeout => '60 seconds')");
    assert_eq!(summary.0["requeued"], 1, "{:?}", summary.0);
    assert_eq!(one::<String>(&format!("SELECT status FROM backups.transfers WHERE name = '{b}'")), "pending");
    // The bad row is not retried every second.
    assert!(one::<bool>("SELECT next_run_at > now() FROM backups.schedules"));
}

#[pg_test]
fn a_kept_manual_backup_is_neither_expired_nor_counted() {
    run("DELETE FROM backups.transfers");
    let mut names = Vec::new();
    for i in 0..4 {
        let b: String = one("SELECT backups.capture()");
        run(&format!(
            "UPDATE backups.transfers SET status = 'completed', created_at = now() - interval '{i} hours' WHERE name = '{b}'"
        ));
        names.push(b);
    }
    // names[0] is the newest, names[3] the oldest; keep both.
    for b in [&names[0], &names[3]] {
        assert_eq!(one::<String>(&format!("SELECT backups.keep('{b}')")), "kept");
    }
    // Two unkept remain, within keep_manual = 2: nothing expires.
    assert_eq!(one::<i32>("SELECT (backups._tick(keep_manual => 2) ->> 'expired')::int"), 0);
    // keep_manual = 1: the older unkept one goes, the kept ones stay.
    assert_eq!(one::<i32>("SELECT (backups._tick(keep_manual => 1) ->> 'expired')::int"), 1);
    assert_eq!(one::<String>(&format!("SELECT status FROM backups.transfers WHERE name = '{}'", names[2])), "expired");
    assert_eq!(
        one::<i64>("SELECT count(*) FROM backups.transfers WHERE status = 'completed' AND kept_at IS NOT NULL"),
        2
    );
}

/// A capture of `db` ended as `status` at `finished`, scheduled or not.
#[allow(dead_code)]
fn ended_capture(db: &str, status: &str, finished: &str, scheduled: bool) {
    let name: String = one(&format!("SELECT backups.capture('{db}')"));
    run(&format!(
        "UPDATE backups.transfers SET status = '{status}', started_at = {finished}, finished_at = {finished},
                error = CASE WHEN '{status}' = 'failed' THEN E'pg_dump: error: disk full\\nmore' END,
                schedule_id = CASE WHEN {scheduled} THEN (SELECT id FROM backups.schedules WHERE database = '{db}') END,
                scheduled = {scheduled}
          WHERE name = '{name}'"
    ));
}

#[pg_test]
fn health_says_ok_late_failing_or_never_for_each_database() {
    // template1: daily, backed up an hour ago: ok.
    run("SELECT backups.schedule('daily 03:00', 'template1')");
    ended_capture("template1", "completed", "now() - interval '1 hour'", true);
    // postgres: no schedule, last backup 30 hours ago: late (25 hours).
    ended_capture("postgres", "completed", "now() - interval '30 hours'", false);
    let status = |db: &str| -> String { one(&format!("SELECT status FROM backups.health() WHERE database = '{db}'")) };
    assert_eq!(status("template1"), "ok");
    assert_eq!(status("postgres"), "late");
    // Daily, last backup 40 hours ago: more than 1.5 periods, late.
    run("UPDATE backups.transfers SET finished_at = now() - interval '40 hours' WHERE database = 'template1'");
    assert_eq!(status("template1"), "late");
    // Hourly makes 30 hours late too; weekly makes it ok.
    run("SELECT backups.schedule('weekly monday 03:00', 'postgres')");
    assert_eq!(status("postgres"), "ok");
    // The last scheduled capture failed: failing, with the failure's first line.
    ended_capture("postgres", "failed", "now() - interval '5 minutes'", true);
    assert_eq!(status("postgres"), "failing");
    let failure: String = one("SELECT last_failure FROM backups.health() WHERE database = 'postgres'");
    assert!(failure.ends_with(": pg_dump: error: disk full"), "{failure}");
    // A later scheduled capture that completed ends the failing.
    ended_capture("postgres", "completed", "now()", true);
    assert_eq!(status("postgres"), "ok");
    // A schedule and no completed backup: never.
    run("UPDATE backups.transfers SET deleted_at = now() WHERE database = 'template1'");
    assert_eq!(status("template1"), "never");
    assert!(one::<bool>(
        "SELECT last_backup IS NULL AND backup_age IS NULL FROM backups.health() WHERE database = 'template1'"
    ));
    // Databases with neither a schedule nor a backup are not listed, nor
    // is one that was dropped since its backups were taken. (This
    // database aside: the client tests' stand-in agent completes captures
    // of it while this runs.)
    let listed = "SELECT count(*) FROM backups.health() WHERE database <> current_database()";
    assert_eq!(one::<i64>(listed), 2);
    run("UPDATE backups.transfers SET database = 'dropped_long_ago', database_oid = 1 WHERE database = 'postgres'");
    run("SELECT backups.unschedule('postgres')");
    assert_eq!(one::<i64>(listed), 1);
}

#[pg_test(error = "unknown tick step in '{}'")]
fn a_tick_of_no_steps_is_refused() {
    run("SELECT backups._tick(false, steps => '{}')");
}

#[pg_test]
fn a_tick_runs_only_the_steps_it_is_given() {
    run("DELETE FROM backups.transfers");
    run("SELECT backups.schedule('daily 03:00', current_database())");
    run("UPDATE backups.schedules SET next_run_at = now() - interval '1 minute'");
    // History only: the due schedule waits for its own step.
    assert_eq!(one::<i32>("SELECT (backups._tick(false, steps => '{retention,prune}') ->> 'fired')::int"), 0);
    assert_eq!(one::<i32>("SELECT (backups._tick(false, steps => '{schedules}') ->> 'fired')::int"), 1);
    run("SELECT backups.unschedule(current_database())");
    run("DELETE FROM backups.transfers");
}
