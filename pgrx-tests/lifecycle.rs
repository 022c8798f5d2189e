// The lifecycle functions (sql/lifecycle.sql): the agent's only way to
// change a transfer, each rule checked once here.

/// Queue a capture and claim it as `agent`; (id, attempt).
#[allow(dead_code)]
fn claimed_by(agent: &str) -> (i64, i32) {
    run("DELETE FROM backups.transfers");
    let _: String = one("SELECT backups.capture()");
    let (id, attempt): (Option<i64>, Option<i32>) =
        Spi::get_two(&format!("SELECT id, attempt FROM backups._claim('{agent}', ARRAY['capture'], '{{}}')")).unwrap();
    (id.expect("claimed"), attempt.unwrap())
}

#[pg_test]
fn a_claimed_transfer_heartbeats_and_finishes_once_even_when_asked_twice() {
    let (id, attempt) = claimed_by("agent-a");
    assert_eq!(attempt, 1);
    assert_eq!(one::<String>(&format!("SELECT status FROM backups.transfers WHERE id = {id}")), "running");
    // Nothing else is pending: a second claim gets nothing.
    assert_eq!(one::<i64>("SELECT count(*) FROM backups._claim('agent-b', ARRAY['capture'], '{}')"), 0);
    assert_eq!(one::<String>(&format!("SELECT backups._heartbeat({id}, 'agent-a', 1, 1234, 'public.t')")), "run");
    // The facts come again with the end (the calls that carried them may
    // have failed).
    let finish = format!(
        "SELECT backups._finish({id}, 'agent-a', 1, 'completed', 2000, 500, 'abc', 0, NULL, NULL,
                                '{{\"format\": \"custom\", \"object_key\": \"k/b.dump\", \"source_size\": 9, \"head_sha256\": \"f00\"}}')"
    );
    assert!(one::<bool>(&finish));
    // The same call again, as after a lost reply: still true, nothing changes.
    let finished_at: String = one(&format!("SELECT finished_at::text FROM backups.transfers WHERE id = {id}"));
    assert!(one::<bool>(&finish));
    assert_eq!(one::<String>(&format!("SELECT finished_at::text FROM backups.transfers WHERE id = {id}")), finished_at);
    assert_eq!(
        one::<String>(&format!(
            "SELECT concat_ws(' ', status, stored_size, checksum, format, object_key, source_size, head_sha256)
               FROM backups.transfers WHERE id = {id}"
        )),
        "completed 500 abc custom k/b.dump 9 f00"
    );
    // A different ending for the same attempt is not ours to write.
    assert!(!one::<bool>(&format!("SELECT backups._finish({id}, 'agent-a', 1, 'failed', 0, NULL, NULL, 0, 'late')")));
    assert_eq!(one::<String>(&format!("SELECT backups._heartbeat({id}, 'agent-a', 1, 1, NULL)")), "lost");
}

#[pg_test(error = "capture b001 cannot be completed without its format, its object key and its checksum (got no format, no key, abc)")]
fn a_capture_is_never_completed_without_what_a_restore_needs() {
    run("SELECT setval('backups.names_b', 1, false)");
    let (id, _) = claimed_by("agent-a");
    // (The control database was out of reach when the facts were learnt,
    // and the agent did not send them again.)
    run(&format!("SELECT backups._finish({id}, 'agent-a', 1, 'completed', 2000, 500, 'abc', 0, NULL)"));
}

#[pg_test]
fn a_requeued_transfer_no_longer_answers_to_its_silent_agent() {
    let (id, _) = claimed_by("agent-a");
    run(&format!("UPDATE backups.transfers SET heartbeat_at = now() - interval '10 minutes' WHERE id = {id}"));
    assert_eq!(one::<i32>("SELECT (backups._tick(agent_timeout => '1 minute') ->> 'requeued')::int"), 1);
    let (_, attempt): (Option<i64>, Option<i32>) =
        Spi::get_two("SELECT id, attempt FROM backups._claim('agent-b', ARRAY['capture'], '{}')").unwrap();
    assert_eq!(attempt, Some(2));
    // The first agent wakes up: every write of its attempt matches nothing.
    assert_eq!(one::<String>(&format!("SELECT backups._heartbeat({id}, 'agent-a', 1, 1, NULL)")), "lost");
    assert!(!one::<bool>(&format!("SELECT backups._finish({id}, 'agent-a', 1, 'completed', 1, 1, 'x', 0, NULL)")));
    assert!(!one::<bool>(&format!("SELECT backups._hand_back({id}, 'agent-a', 1, 'shutdown')")));
    assert!(!one::<bool>(&format!("SELECT backups._record_start({id}, 'agent-a', 1, 1, 'custom', 'k', '{{}}')")));
    assert_eq!(one::<String>(&format!("SELECT backups._heartbeat({id}, 'agent-b', 2, 1, NULL)")), "run");
}

#[pg_test]
fn a_hand_back_does_not_count_and_a_cancel_is_learnt_by_heartbeat() {
    let (id, _) = claimed_by("agent-a");
    assert!(one::<bool>(&format!("SELECT backups._hand_back({id}, 'agent-a', 1, 'the agent is shutting down')")));
    assert_eq!(
        one::<String>(&format!("SELECT status || ' ' || attempts || ' ' || handed_back FROM backups.transfers WHERE id = {id}")),
        "pending 1 1"
    );
    // The next claim is a new attempt (its own objects and fence), still
    // the first of the three the worker allows.
    let (_, attempt): (Option<i64>, Option<i32>) =
        Spi::get_two("SELECT id, attempt FROM backups._claim('agent-b', ARRAY['capture'], '{}')").unwrap();
    assert_eq!(attempt, Some(2));
    assert!(!one::<bool>(&format!("SELECT backups._hand_back({id}, 'agent-a', 1, 'again')")));
    run(&format!("UPDATE backups.transfers SET heartbeat_at = now() - interval '10 minutes' WHERE id = {id}"));
    assert_eq!(one::<String>(&format!("SELECT backups._reap(t, '1 minute') FROM backups.transfers t WHERE id = {id}")), "requeued");
    let (_, attempt): (Option<i64>, Option<i32>) =
        Spi::get_two("SELECT id, attempt FROM backups._claim('agent-b', ARRAY['capture'], '{}')").unwrap();
    assert_eq!(attempt, Some(3));
    let name: String = one(&format!("SELECT name FROM backups.transfers WHERE id = {id}"));
    assert_eq!(one::<String>(&format!("SELECT backups.cancel('{name}')")), "cancelling");
    assert_eq!(one::<String>(&format!("SELECT backups._heartbeat({id}, 'agent-b', 3, 1, NULL)")), "cancel");
    assert!(one::<bool>(&format!("SELECT backups._finish({id}, 'agent-b', 3, 'cancelled')")));
    assert_eq!(one::<String>(&format!("SELECT status FROM backups.transfers WHERE id = {id}")), "cancelled");
}

#[pg_test]
fn a_transfer_handed_back_after_a_cancel_was_asked_ends_cancelled() {
    let (id, _) = claimed_by("agent-a");
    let name: String = one(&format!("SELECT name FROM backups.transfers WHERE id = {id}"));
    assert_eq!(one::<String>(&format!("SELECT backups.cancel('{name}')")), "cancelling");
    // The agent was shutting down before it heard: it hands back.
    assert!(one::<bool>(&format!("SELECT backups._hand_back({id}, 'agent-a', 1, 'the agent is shutting down')")));
    assert_eq!(one::<String>(&format!("SELECT status FROM backups.transfers WHERE id = {id}")), "cancelled");
}

#[pg_test]
fn a_running_transfer_shows_its_percentage_time_left_and_table() {
    let (id, _) = claimed_by("agent-a");
    let name: String = one(&format!("SELECT name FROM backups.transfers WHERE id = {id}"));
    let progress = || -> String { one(&format!("SELECT progress FROM backups.list() WHERE id = '{name}'")) };
    let info = |field: &str| -> Option<String> {
        Spi::get_one(&format!("SELECT (SELECT value FROM backups.info('{name}') WHERE field = '{field}')")).unwrap()
    };
    run(&format!("UPDATE backups.transfers SET started_at = now() - interval '100 seconds', format = 'custom' WHERE id = {id}"));
    // No estimate yet: the bytes processed.
    assert_eq!(one::<String>(&format!("SELECT backups._heartbeat({id}, 'agent-a', 1, 1000, '\"public\".\"t\"')")), "run");
    assert_eq!(progress(), "1000 bytes processed, \"public\".\"t\"");
    // The agent's estimate: a quarter in 100 s, so 300 s to go.
    assert_eq!(one::<String>(&format!("SELECT backups._heartbeat({id}, 'agent-a', 1, 1000, '\"public\".\"t\"', 4000)")), "run");
    assert_eq!(progress(), "25%, 1000 bytes of ~4000 bytes, about 5 min 0 s left, \"public\".\"t\"");
    assert_eq!(info("progress").as_deref(), Some(progress().as_str()));
    assert_eq!(info("current table").as_deref(), Some("\"public\".\"t\""));
    // A heartbeat without one keeps it; past it, 99% until the end.
    assert_eq!(one::<String>(&format!("SELECT backups._heartbeat({id}, 'agent-a', 1, 5000, NULL)")), "run");
    assert_eq!(progress(), "99%, 5000 bytes of ~4000 bytes, finishing");
    // A stall far from the end: capped, never an interval overflow that
    // would fail list() for everyone.
    run(&format!(
        "UPDATE backups.transfers SET processed_bytes = 1, expected_bytes = 100000000000, started_at = now() - interval '1 hour' WHERE id = {id}"
    ));
    assert_eq!(progress(), "0%, 1 bytes of ~93 GB, more than 30 days left");
    run(&format!(
        "UPDATE backups.transfers SET processed_bytes = 5000, expected_bytes = 4000, started_at = now() - interval '100 seconds' WHERE id = {id}"
    ));
    // A capture measures itself against the last like it of its database.
    run(&format!(
        "INSERT INTO backups.transfers (name, kind, status, database, owner_role, format, processed_bytes, started_at, finished_at)
         SELECT 'b900', 'capture', 'completed', database, owner_role, 'custom', 20000, now() - interval '1 day', now() - interval '1 day'
           FROM backups.transfers WHERE id = {id}"
    ));
    assert!(progress().starts_with("25%, 5000 bytes of ~20 kB, about 5 min 0 s left"), "{}", progress());
    // Once finished, the progress says how it ended.
    run(&format!("SELECT backups._record_start({id}, 'agent-a', 1, 1, 'custom', 'k', '{{}}')"));
    assert!(one::<bool>(&format!("SELECT backups._finish({id}, 'agent-a', 1, 'completed', 6000, 100, 'abc', 0, NULL)")));
    assert!(progress().starts_with("done"), "{}", progress());
    assert_eq!(info("progress"), None);
}

#[pg_test]
fn one_owner_never_takes_every_slot_of_an_agent() {
    run("DELETE FROM backups.transfers");
    // Two captures of one tenant's databases, then one of another owner's.
    let (a, b, c): (String, String, String) =
        (one("SELECT backups.capture()"), one("SELECT backups.capture()"), one("SELECT backups.capture()"));
    run("DO $$ BEGIN CREATE ROLE pgrx_tenant_x; EXCEPTION WHEN duplicate_object THEN NULL; END $$");
    run(&format!("UPDATE backups.transfers SET owner_role = 'pgrx_tenant_x'::regrole WHERE name IN ('{a}', '{b}')"));
    let claim = || -> Option<String> {
        Spi::get_one("SELECT (SELECT name FROM backups._claim('agent-a', ARRAY['capture'], '{}', 1))").unwrap()
    };
    // One slot for the tenant; its second capture waits while the other
    // owner's goes ahead of it.
    assert_eq!(claim().as_deref(), Some(a.as_str()));
    assert_eq!(claim().as_deref(), Some(c.as_str()));
    assert_eq!(claim(), None);
    // Another agent has its own slots.
    let other: Option<String> =
        Spi::get_one("SELECT (SELECT name FROM backups._claim('agent-b', ARRAY['capture'], '{}', 1))").unwrap();
    assert_eq!(other.as_deref(), Some(b.as_str()));
    // A superuser's (or a backups_admin's) databases are the operator's:
    // not capped.
    let (d, e): (String, String) = (one("SELECT backups.capture()"), one("SELECT backups.capture()"));
    assert_eq!(claim().as_deref(), Some(d.as_str()));
    assert_eq!(claim().as_deref(), Some(e.as_str()));
}

#[pg_test]
fn a_restore_whose_swap_committed_before_its_agent_went_silent_is_completed_not_requeued() {
    run("DELETE FROM backups.transfers");
    // (This database stands for the restored one: its oid is what the
    // restore recorded before its swap, under the target's name.)
    run(
        "INSERT INTO backups.transfers (name, kind, status, database, target, source, agent_id, attempts, started_at,
                                        heartbeat_at, swap_oid, cancel_requested)
         SELECT 'r900', 'restore', 'running', current_database(), current_database(), 'b001', 'agent-a', 1,
                now() - interval '10 minutes', now() - interval '10 minutes', d.oid, true
           FROM pg_database d WHERE d.datname = current_database()",
    );
    assert_eq!(one::<i32>("SELECT (backups._tick(agent_timeout => '1 minute') ->> 'requeued')::int"), 0);
    // Completed, though a cancel was asked: the target was replaced.
    assert_eq!(one::<String>("SELECT status FROM backups.transfers WHERE name = 'r900'"), "completed");
    // One whose recorded database is not the target's was not swapped in.
    run("UPDATE backups.transfers SET status = 'running', swap_oid = 1, cancel_requested = false, heartbeat_at = now() - interval '10 minutes'");
    assert_eq!(one::<i32>("SELECT (backups._tick(agent_timeout => '1 minute') ->> 'requeued')::int"), 1);
}

#[pg_test]
fn a_completed_restore_moves_its_targets_history_to_the_database_it_swapped_in() {
    run("DELETE FROM backups.transfers");
    // The target's history, under the oid it had before the restore.
    let b: String = one("SELECT backups.capture()");
    run(&format!("UPDATE backups.transfers SET status = 'completed', database_oid = 4242 WHERE name = '{b}'"));
    run(
        "INSERT INTO backups.transfers (name, kind, status, database, database_oid, target, source, agent_id, attempts)
         VALUES ('r901', 'restore', 'running', current_database(), 4242, current_database(), 'b001', 'agent-a', 1)",
    );
    assert!(one::<bool>("SELECT backups._finish(id, 'agent-a', 1, 'completed', 10, NULL, NULL, 0, NULL) FROM backups.transfers WHERE name = 'r901'"));
    assert_eq!(
        one::<i64>(
            "SELECT count(*) FROM backups.transfers t JOIN pg_database d ON d.oid = t.database_oid
              WHERE d.datname = current_database()"
        ),
        2
    );
    assert_eq!(one::<String>("SELECT value FROM backups.database_info() WHERE field = 'backups'"), "1 completed");
}
