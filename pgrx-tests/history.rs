// History that stays fast: list() a page at a time.

#[pg_test]
fn list_pages_return_every_row_once_while_transfers_arrive() {
    run("DELETE FROM backups.transfers");
    // One transaction: every row has the same created_at, so ties are the
    // order's (by id) to break.
    run("SELECT backups.capture() FROM generate_series(1, 250)");
    let all: Vec<String> = one::<String>("SELECT string_agg(name, ' ' ORDER BY id DESC) FROM backups.transfers")
        .split(' ')
        .map(str::to_string)
        .collect();
    let mut seen: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page: Option<String> = Spi::get_one(&format!(
            "SELECT string_agg(l.id, ' ' ORDER BY l.n) FROM backups.list(40, {}) WITH ORDINALITY l(id, kind, status,
                    created_at, started_at, finished_at, database, source_size, stored_size, progress, kept, verified, n)",
            before.as_deref().map_or("NULL".into(), |b| format!("'{b}'"))
        ))
        .unwrap();
        let Some(page) = page else { break };
        let ids: Vec<String> = page.split(' ').map(str::to_string).collect();
        assert!(ids.len() <= 40);
        before = ids.last().cloned();
        seen.extend(ids);
        // New transfers arrive between pages: newer than any page read.
        run("SELECT backups.capture() FROM generate_series(1, 3)");
    }
    assert_eq!(seen, all, "every row once, newest first");
    // Filters, and a bad page size.
    assert_eq!(one::<i64>("SELECT count(*) FROM backups.list(1000, of_kind => 'restore')"), 0);
    assert_eq!(one::<i64>("SELECT count(*) FROM backups.list(1000, of_status => 'pending', of_database => current_database())"), 250 + 3 * 7);
    assert_eq!(one::<i64>("SELECT count(*) FROM backups.list()"), 100);
}

#[pg_test(error = "page_size must be at least 1, not 0")]
fn a_page_of_nothing_is_an_error() {
    run("SELECT * FROM backups.list(0)");
}

#[pg_test]
fn a_tenants_page_shows_only_its_rows() {
    run("DELETE FROM backups.transfers");
    run("CREATE ROLE page_owner");
    run("CREATE ROLE dora LOGIN IN ROLE backups_user, page_owner");
    run("SELECT backups.capture() FROM generate_series(1, 30)");
    // Ten of them were queued while page_owner owned their database.
    run("UPDATE backups.transfers SET owner_role = 'page_owner'::regrole
          WHERE id IN (SELECT id FROM backups.transfers ORDER BY id LIMIT 10)");
    run("SET SESSION AUTHORIZATION dora");
    let mine: i64 = one("SELECT count(*) FROM backups.list(5)");
    let all: i64 = one("SELECT count(*) FROM backups.list(1000)");
    run("RESET SESSION AUTHORIZATION");
    assert_eq!((mine, all), (5, 10));
    assert_eq!(
        one::<i64>("SELECT count(*) FROM backups.list(1000) l JOIN backups.transfers t ON t.name = l.id WHERE t.owner_role = 'page_owner'::regrole"),
        10
    );
}

#[pg_test]
fn pruning_forgets_only_ended_rows_older_than_the_setting_and_never_a_backup_that_exists() {
    run("DELETE FROM backups.transfers");
    run("SELECT backups.capture() FROM generate_series(1, 7)");
    // b1..b7 by id: each made to be one of the cases, ended 500 days ago
    // but the last.
    run("WITH n AS (SELECT id, row_number() OVER (ORDER BY id) AS i FROM backups.transfers)
         UPDATE backups.transfers t SET finished_at = now() - interval '500 days',
                status = CASE n.i WHEN 1 THEN 'completed' WHEN 2 THEN 'expired' WHEN 3 THEN 'failed'
                                  WHEN 4 THEN 'completed' WHEN 5 THEN 'failed' WHEN 6 THEN 'running' ELSE 'completed' END,
                kind = CASE n.i WHEN 4 THEN 'verify' ELSE 'capture' END,
                purged_at = CASE WHEN n.i IN (2, 3) THEN now() END
           FROM n WHERE n.id = t.id");
    run("UPDATE backups.transfers SET finished_at = now() - interval '1 day'
          WHERE id = (SELECT max(id) FROM backups.transfers)");
    run("SELECT backups._log(id, 'a line') FROM backups.transfers");
    let before: Vec<i64> = (0..7).map(|k| one::<i64>(&format!("SELECT id FROM backups.transfers ORDER BY id OFFSET {k} LIMIT 1"))).collect();
    assert_eq!(one::<i32>("SELECT backups._prune('400 days', 2)"), 2, "a batch at a time");
    assert_eq!(one::<i32>("SELECT backups._prune('400 days')"), 1);
    assert_eq!(one::<i32>("SELECT backups._prune('400 days')"), 0);
    let left: String = one("SELECT string_agg(id::text, ' ' ORDER BY id) FROM backups.transfers");
    // Gone: the expired and the failed backups whose objects were removed,
    // and the old verification. Kept: a completed backup (it exists), a
    // failed one not yet purged, a running one, and the recent one.
    let kept: Vec<String> = [0, 4, 5, 6].iter().map(|&k| before[k].to_string()).collect();
    assert_eq!(left, kept.join(" "));
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.transfer_logs WHERE transfer_id IN ({}, {}, {})", before[1], before[2], before[3])), 0);
    // Zero keeps everything; so does a tick by default (400 days).
    assert_eq!(one::<i32>("SELECT backups._prune('0')"), 0);
    assert_eq!(one::<i32>("SELECT (backups._tick(false) ->> 'pruned')::int"), 0);
}

#[pg_test]
fn an_expired_backup_drops_its_contents() {
    run("DELETE FROM backups.transfers");
    let b: String = one("SELECT backups.capture()");
    run(&format!("UPDATE backups.transfers SET status = 'completed', contents = '[{{\"table\": \"t\"}}]' WHERE name = '{b}'"));
    run(&format!("SELECT backups._expire_backup((SELECT id FROM backups.transfers WHERE name = '{b}'), 'test')"));
    assert!(one::<bool>(&format!("SELECT contents IS NULL AND status = 'expired' FROM backups.transfers WHERE name = '{b}'")));
}

#[pg_test]
fn an_idle_tick_leaves_retention_alone_until_something_changes() {
    run("DELETE FROM backups.transfers");
    run("SELECT backups.capture() FROM generate_series(1, 3)");
    run("UPDATE backups.transfers SET status = 'completed', finished_at = now()");
    let oldest: String = one("SELECT name FROM backups.transfers ORDER BY id LIMIT 1");
    // Rows changed behind the lifecycle's back: nothing said retention is due.
    run("UPDATE backups.worker_state SET seen_changes = (SELECT last_value FROM backups.retention_changes),
                rerun = false, keep_manual = 1, expired_at = now()");
    assert_eq!(one::<i32>("SELECT (backups._tick(false, keep_manual => 1) ->> 'expired')::int"), 0);
    // A change says so: here, a backup unkept.
    run(&format!("SELECT backups.keep('{oldest}')"));
    run(&format!("SELECT backups.keep('{oldest}', false)"));
    assert_eq!(one::<i32>("SELECT (backups._tick(false, keep_manual => 1) ->> 'expired')::int"), 2);
    // It looks once more (a change may have committed after it read), then rests.
    assert!(one::<bool>("SELECT rerun FROM backups.worker_state"));
    run("UPDATE backups.transfers SET status = 'completed' WHERE status = 'expired'");
    assert_eq!(one::<i32>("SELECT (backups._tick(false, keep_manual => 1) ->> 'expired')::int"), 2);
    run("UPDATE backups.transfers SET status = 'completed' WHERE status = 'expired'");
    assert_eq!(one::<i32>("SELECT (backups._tick(false, keep_manual => 1) ->> 'expired')::int"), 0);
    // So does a new keep_manual.
    assert_eq!(one::<i32>("SELECT (backups._tick(false, keep_manual => 2) ->> 'expired')::int"), 1);
}

#[pg_test]
fn a_tick_right_after_a_bulk_load_of_history_takes_bounded_time() {
    run("DELETE FROM backups.transfers");
    run("SELECT backups.schedule('daily 03:00', current_database(), retain_daily => 7, retain_weekly => 0, retain_monthly => 0)");
    // The worker's plans made while the history is tiny (as after CREATE
    // EXTENSION), then a history loaded in bulk (a restored control
    // database) without new statistics.
    run("INSERT INTO backups.transfers (name, kind, status, database, database_oid, owner_role, scheduled, created_at,
                                        started_at, finished_at)
         SELECT 'a9999999', 'capture', 'completed', d.datname, d.oid, d.datdba, true, now(), now(), now()
           FROM pg_database d WHERE d.datname = current_database()");
    run("ANALYZE backups.transfers");
    for _ in 0..8 {
        run("SELECT backups._retention_due(); SELECT backups._tick(false)");
    }
    run("INSERT INTO backups.transfers (name, kind, status, database, database_oid, owner_role, scheduled, created_at,
                                        started_at, finished_at)
         SELECT 'a' || lpad(g::text, 7, '0'), 'capture', 'completed', d.datname, d.oid, d.datdba, true,
                now() - g * interval '1 hour', now() - g * interval '1 hour', now() - g * interval '1 hour'
           FROM generate_series(1, 5000) g, pg_database d WHERE d.datname = current_database()");
    run("SELECT backups._retention_due()");
    run("DO $$ DECLARE t timestamptz := clock_timestamp(); r jsonb; BEGIN
             r := backups._tick(false);
             PERFORM set_config('pgrx.tick_ms', (extract(epoch FROM clock_timestamp() - t) * 1000)::int::text, true);
             PERFORM set_config('pgrx.tick_expired', r ->> 'expired', true);
         END $$");
    let ms: i64 = one::<String>("SELECT current_setting('pgrx.tick_ms')").parse().unwrap();
    // Seven days kept, one each: every other one expired, in one tick.
    assert_eq!(one::<String>("SELECT current_setting('pgrx.tick_expired')"), "4994");
    assert!(ms < 5000, "the tick took {ms} ms");
    run("SELECT backups.unschedule(current_database())");
    run("DELETE FROM backups.transfers");
}

#[pg_test]
fn the_overviews_charts_hold_each_databases_latest_50_captures_oldest_first() {
    // Of database postgres: the client tests' stand-in agent completes
    // captures of this one (pgrx_tests) while this runs.
    run("DELETE FROM backups.transfers WHERE database = 'postgres'");
    run("SELECT backups.capture('postgres') FROM generate_series(1, 60)");
    // Completed an hour apart, the first the oldest; the last still queued.
    run("UPDATE backups.transfers t SET status = 'completed', started_at = x.at - interval '2 minutes', finished_at = x.at,
                stored_size = x.n * 10
           FROM (SELECT id, row_number() OVER (ORDER BY id) AS n,
                        now() - (61 - row_number() OVER (ORDER BY id)) * interval '1 hour' AS at
                   FROM backups.transfers WHERE database = 'postgres') x
          WHERE x.id = t.id AND x.n <= 59");
    let chart = "(SELECT c FROM jsonb_array_elements(backups._overview(true) -> 'charts') c WHERE c ->> 'database' = 'postgres')";
    let ids = one::<String>(&format!("SELECT string_agg(i, ' ' ORDER BY n) FROM jsonb_array_elements_text({chart} -> 'ids') WITH ORDINALITY x(i, n)"));
    let expected = one::<String>(
        "SELECT string_agg(name, ' ' ORDER BY finished_at) FROM (SELECT name, finished_at FROM backups.transfers
          WHERE status = 'completed' AND database = 'postgres' ORDER BY finished_at DESC LIMIT 50) x",
    );
    assert_eq!(ids, expected, "the latest 50, oldest first");
    assert_eq!(one::<i32>(&format!("SELECT jsonb_array_length({chart} -> 'stored')")), 50);
    assert_eq!(one::<String>(&format!("SELECT ({chart} -> 'stored' -> 49)::text")), "590");
    assert!(one::<bool>(&format!("SELECT ({chart} -> 'seconds' -> 0)::numeric = 120")));
    // /metrics reads no history.
    assert_eq!(one::<String>("SELECT (backups._overview(false) -> 'charts')::text"), "[]");
    run("DELETE FROM backups.transfers WHERE database = 'postgres'");
}

#[pg_test]
fn health_inlines_the_schedule_period_instead_of_calling_it_per_database() {
    // No SET clause on _period(): the planner puts its body in the query.
    run("CREATE TEMP TABLE plan_lines (line text)");
    run("DO $$ DECLARE l text; BEGIN
             FOR l IN EXECUTE 'EXPLAIN (VERBOSE) SELECT backups._period(s) FROM backups.schedules s' LOOP
                 INSERT INTO plan_lines VALUES (l);
             END LOOP;
         END $$");
    let text: String = one("SELECT string_agg(line, E'\\n') FROM plan_lines");
    assert!(text.contains("_next_run(") && !text.contains("_period("), "not inlined:\n{text}");
}
