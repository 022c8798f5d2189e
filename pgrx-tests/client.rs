// Tests that need committed data, so they talk to the test cluster over a
// client connection instead of running inside a rolled-back transaction:
// bad input (exact message, HINT, nothing queued), the one-command capture,
// and the scheduler worker itself.

#[cfg(test)]
mod client {
    use std::time::{Duration, Instant};

    use postgres::fallible_iterator::FallibleIterator;

    fn connect() -> postgres::Client {
        // Starts the test cluster (once per test binary) if needed.
        pgrx_tests::run_test("ready", None, crate::pg_test::postgresql_conf_options()).expect("test cluster");
        pgrx_tests::client().expect("connect").0
    }

    fn count(c: &mut postgres::Client) -> i64 {
        c.query_one("SELECT count(*) FROM backups.transfers", &[]).unwrap().get(0)
    }

    fn text(c: &mut postgres::Client, sql: &str) -> String {
        c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
    }

    /// Run `sql`, which must fail with exactly `message` and a HINT containing `hint`.
    fn expect_error(c: &mut postgres::Client, sql: &str, message: &str, hint: &str) {
        let e = c.batch_execute(sql).expect_err(sql);
        let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert_eq!(db.message(), message, "{sql}");
        let got = db.hint().unwrap_or_default();
        assert!(got.contains(hint), "{sql}: hint {got:?} lacks {hint:?}");
    }

    fn create_db(c: &mut postgres::Client, name: &str) {
        let exists: bool = c.query_one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", &[&name]).unwrap().get(0);
        if !exists {
            c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        }
    }

    #[test]
    fn bad_input_errors_clearly_and_queues_nothing() {
        let mut c = connect();
        create_db(&mut c, "pgrx_bad_target");
        let done = text(&mut c, "SELECT backups.capture()");
        c.batch_execute(&format!("UPDATE backups.transfers SET status = 'completed' WHERE name = '{done}'")).unwrap();
        let pending = text(&mut c, "SELECT backups.capture()");
        let before = count(&mut c);
        let forms = "Accepted forms";
        for (sql, message, hint) in [
            ("SELECT backups.capture('no_such_db')", "database \"no_such_db\" does not exist", "pg_database"),
            ("SELECT backups.capture(jobs => 0)", "jobs must be between 1 and 64, not 0", "parallel"),
            ("SELECT backups.capture(jobs => 1000)", "jobs must be between 1 and 64, not 1000", "parallel"),
            ("SELECT backups.capture('template0')", "database \"template0\" does not allow connections", "template"),
            ("SELECT backups.capture(source => 'no spaces!')", "invalid source name \"no spaces!\"", "agent configuration"),
            ("SELECT backups.schedule('every day')", "unrecognised schedule \"every day\"", forms),
            ("SELECT backups.schedule('daily 7')", "invalid time \"7\": use a 24-hour HH:MM such as 07:00 or 19:30", forms),
            ("SELECT backups.schedule('daily 07:00 Mars/Olympus')",
             "unknown time zone \"Mars/Olympus\": use an IANA name such as Europe/Paris or America/New_York", forms),
            ("SELECT backups.schedule('daily 07:00 EST')",
             "ambiguous time zone \"EST\": use an IANA region name such as America/New_York or Europe/Berlin, or UTC", forms),
            ("SELECT backups.schedule('61 * * * *')", "invalid cron expression \"61 * * * *\": Component error: Number out of bounds.", forms),
            ("SELECT backups.schedule('daily 02:00', 'no_such_db')", "database \"no_such_db\" does not exist", "pg_database"),
            ("SELECT backups.schedule('daily 02:00', retain_weekly => -2)",
             "retention counts must be zero or more (got daily 7, weekly -2, monthly 12)", "retain_daily"),
            ("SELECT backups.schedule('daily 02:00', retain_daily => 0, retain_weekly => 0, retain_monthly => 0)",
             "this retention keeps no backup at all", "retain_daily => 1"),
            ("SELECT backups.info('b000999')", "unknown transfer \"b000999\"", "backups.list()"),
            ("SELECT backups.wait('nope')", "unknown transfer \"nope\"", "backups.list()"),
            ("SELECT backups.restore('b000999', 'pgrx_bad_target', 'pgrx_bad_target')", "unknown transfer \"b000999\"", "backups.list()"),
            (&format!("SELECT backups.restore('{pending}', 'pgrx_bad_target', 'pgrx_bad_target')"),
             &format!("cannot restore {pending}: it is pending, not completed"), "completed backup"),
            (&format!("SELECT backups.restore('{done}', 'pgrx_bad_target', 'pgrx_bad_targte')"),
             "confirm must equal the target database \"pgrx_bad_target\"", "confirm => 'pgrx_bad_target'"),
            (&format!("SELECT backups.restore('{done}', 'pgrx_tests', 'pgrx_tests')"),
             "cannot restore onto the control database \"pgrx_tests\"", "backup history"),
            (&format!("SELECT backups.restore('{done}', 'no_such_db', 'no_such_db')"),
             "database \"no_such_db\" does not exist", "CREATE DATABASE no_such_db"),
            ("SELECT backups.restore('ftp://example.com/b.dump', 'pgrx_bad_target', 'pgrx_bad_target')",
             "cannot restore from a ftp URL: only http:// and https:// URLs are supported", "http(s) URL"),
            ("SELECT backups.restore('http://u:p/w@example.com/b.dump', 'pgrx_bad_target', 'pgrx_bad_target')",
             "cannot restore from this URL: it cannot be parsed safely (it is not shown here: it may hold a password)", "%40"),
            ("SELECT backups.copy('pgrx_bad_target', 'pgrx_bad_target', 'pgrx_bad_target')",
             "cannot copy database \"pgrx_bad_target\" onto itself", "different target"),
            ("SELECT backups.copy('pgrx_tests', 'pgrx_bad_target', 'oops')",
             "confirm must equal the target database \"pgrx_bad_target\"", "confirm => 'pgrx_bad_target'"),
            ("SELECT backups.copy('pgrx_bad_target', 'pgrx_tests', 'pgrx_tests')",
             "cannot copy onto the control database \"pgrx_tests\"", "backup history"),
            (&format!("SELECT backups.cancel('{done}')"), &format!("{done} has already finished (completed)"), "backups.delete"),
            (&format!("SELECT backups.delete('{pending}')"), &format!("{pending} is still pending"), "backups.cancel"),
            (&format!("SELECT backups.url('{pending}')"), &format!("{pending} is pending, not completed: there is nothing to download"), "completed backups"),
            (&format!("SELECT backups.url('{done}', '0 seconds')"), "expires_in must be between 1 second and 7 days, not 00:00:00", "expires_in"),
            ("SELECT backups.unschedule('no_such_db')", "database \"no_such_db\" has no backup schedule", "backups.schedules()"),
        ] {
            expect_error(&mut c, sql, message, hint);
        }
        assert_eq!(count(&mut c), before, "a bad call queued something");
        // A user role cannot restore: permission denied, nothing queued.
        c.batch_execute("DROP ROLE IF EXISTS pgrx_client_user; CREATE ROLE pgrx_client_user IN ROLE backups_user").unwrap();
        let e = c
            .batch_execute(&format!(
                "SET ROLE pgrx_client_user; SELECT backups.restore('{done}', 'pgrx_bad_target', 'pgrx_bad_target')"
            ))
            .unwrap_err();
        assert_eq!(e.as_db_error().unwrap().message(), "permission denied for function restore");
        c.batch_execute("RESET ROLE; DROP ROLE pgrx_client_user").unwrap();
        // The same calls done right queue a restore and a copy.
        let r = text(&mut c, &format!("SELECT backups.restore('{done}', 'pgrx_bad_target', 'pgrx_bad_target')"));
        assert!(r.starts_with('r'), "{r}");
        // One restore or copy into a database at a time.
        expect_error(
            &mut c,
            "SELECT backups.copy('pgrx_tests', 'pgrx_bad_target', 'pgrx_bad_target')",
            &format!("database \"pgrx_bad_target\" is already the target of {r} (pending)"),
            &format!("backups.wait('{r}')"),
        );
        assert_eq!(text(&mut c, &format!("SELECT backups.cancel('{r}')")), "cancelled");
        let cp = text(&mut c, "SELECT backups.copy('pgrx_tests', 'pgrx_bad_target', 'pgrx_bad_target')");
        assert!(cp.starts_with('c'), "{cp}");
        assert_eq!(count(&mut c), before + 2);
        c.batch_execute(&format!("DELETE FROM backups.transfers WHERE name IN ('{done}', '{pending}', '{r}', '{cp}')")).unwrap();
    }

    #[test]
    fn wait_inside_the_queueing_transaction_errors_with_a_hint() {
        let mut c = connect();
        c.batch_execute("BEGIN").unwrap();
        let id = text(&mut c, "SELECT backups.capture()");
        expect_error(
            &mut c,
            &format!("SELECT backups.wait('{id}')"),
            &format!("cannot wait for {id}: it was queued by this same transaction, which the agent cannot see until it commits"),
            "CALL backups.capture_and_wait()",
        );
        c.batch_execute("ROLLBACK").unwrap();
    }

    #[test]
    fn capture_and_wait_commits_then_waits_for_the_agent() {
        let mut c = connect();
        // Without an agent it times out, and the capture stays queued.
        let e = c.batch_execute("CALL backups.capture_and_wait(timeout => '1 second')").unwrap_err();
        let msg = e.as_db_error().unwrap().message().to_string();
        assert!(msg.starts_with("timed out after 00:00:01 waiting for b") && msg.ends_with("(still pending)"), "{msg}");
        let id = msg.split_whitespace().nth(6).unwrap().to_string();
        assert_eq!(text(&mut c, &format!("SELECT status FROM backups.transfers WHERE name = '{id}'")), "pending");
        c.batch_execute(&format!("SELECT backups.cancel('{id}')")).unwrap();

        // With a stand-in agent that completes whatever is pending, it returns the id and 'completed'.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let agent = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut a = pgrx_tests::client().unwrap().0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    a.batch_execute(
                        "UPDATE backups.transfers SET status = 'completed', started_at = now(), finished_at = now()
                         WHERE status = 'pending' AND kind = 'capture' AND created_by = current_user",
                    )
                    .unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let row = c.query_one("CALL backups.capture_and_wait(timeout => '30 seconds')", &[]).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        agent.join().unwrap();
        let (id, status): (String, String) = (row.get("id"), row.get("status"));
        assert!(id.starts_with('b'), "{id}");
        assert_eq!(status, "completed");
        c.batch_execute("DELETE FROM backups.transfers WHERE status IN ('completed', 'cancelled') AND name LIKE 'b%'").unwrap();
    }

    #[test]
    fn the_worker_fires_a_due_schedule_and_notifies_the_agent() {
        let mut c = connect();
        // The worker started before the test database existed, so its first
        // connection failed and the postmaster restarts it every few seconds.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let running: i64 = c
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_backups scheduler'", &[])
                .unwrap()
                .get(0);
            if running == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the scheduler worker is not running");
            std::thread::sleep(Duration::from_millis(200));
        }

        c.batch_execute("LISTEN pg_backups").unwrap();
        c.batch_execute("SELECT backups.schedule('hourly', 'pgrx_tests')").unwrap();
        c.batch_execute("UPDATE backups.schedules SET next_run_at = now() WHERE database = 'pgrx_tests'").unwrap();
        let due = Instant::now();

        // The worker ticks every second: an a00N transfer and its NOTIFY within seconds.
        let mut fired = None;
        let mut pending_renotified = false;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && !(fired.is_some() && pending_renotified) {
            let mut notes = c.notifications();
            let mut it = notes.timeout_iter(Duration::from_millis(500));
            while let Ok(Some(n)) = it.next() {
                if n.payload().starts_with('a') && fired.is_none() {
                    fired = Some((n.payload().to_string(), due.elapsed()));
                } else if n.payload() == "pending" && fired.is_some() {
                    pending_renotified = true;
                }
            }
        }
        let (name, after) = fired.expect("no NOTIFY of a scheduled capture within 15 s");
        assert!(after <= Duration::from_secs(3), "fired after {after:?}");
        assert!(pending_renotified, "pending work was not re-notified");
        let row = c
            .query_one("SELECT status, kind, schedule_id IS NOT NULL FROM backups.transfers WHERE name = $1", &[&name])
            .unwrap();
        assert_eq!((row.get::<_, String>(0).as_str(), row.get::<_, String>(1).as_str(), row.get::<_, bool>(2)), ("pending", "capture", true));
        let next_in_future: bool = c
            .query_one("SELECT next_run_at > now() FROM backups.schedules WHERE database = 'pgrx_tests'", &[])
            .unwrap()
            .get(0);
        assert!(next_in_future);
        c.batch_execute(&format!("SELECT backups.unschedule('pgrx_tests'); DELETE FROM backups.transfers WHERE name = '{name}'"))
            .unwrap();
    }
}
