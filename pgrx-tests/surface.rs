// The SQL surface, inside one rolled-back transaction per test.

#[pg_test]
fn capture_queues_a_pending_backup_with_heroku_naming() {
    let n: i64 = one("SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM backups.names_b");
    let first: String = one("SELECT backups.capture()");
    assert_eq!(first, pgbackups_core::naming::format_name('b', n + 1));
    let second: String = one("SELECT backups.capture(jobs => 2)");
    assert_eq!(second, pgbackups_core::naming::format_name('b', n + 2));
    let (status, db, opts): (String, String, String) = (
        one(&format!("SELECT status FROM backups.transfers WHERE name = '{second}'")),
        one(&format!("SELECT database::text FROM backups.transfers WHERE name = '{second}'")),
        one(&format!("SELECT options::text FROM backups.transfers WHERE name = '{second}'")),
    );
    assert_eq!((status.as_str(), db.as_str(), opts.as_str()), ("pending", "pgrx_tests", r#"{"jobs": 2}"#));
    let listed: String = one(&format!("SELECT status || ' ' || kind FROM backups.list() WHERE id = '{first}'"));
    assert_eq!(listed, "pending capture");
    // info() shows the transfer and its log line.
    let log: String = one(&format!("SELECT value FROM backups.info('{first}') WHERE field = 'log'"));
    assert!(log.contains("queued by"), "{log}");
    // list() is newest first.
    let newest: String = one("SELECT id FROM backups.list() LIMIT 1");
    assert_eq!(newest, second);
}

#[pg_test]
fn names_use_three_digits_then_more_and_are_never_reused() {
    run("SELECT setval('backups.names_b', 998)");
    assert_eq!(one::<String>("SELECT backups.capture()"), "b999");
    assert_eq!(one::<String>("SELECT backups.capture()"), "b1000");
    // Deleting the newest backup does not free its number.
    run("UPDATE backups.transfers SET status = 'completed' WHERE name = 'b1000'");
    run("SELECT backups.delete('b1000')");
    assert_eq!(one::<String>("SELECT backups.capture()"), "b1001");
    assert_eq!(one::<i64>("SELECT count(*) FROM backups.list() WHERE id = 'b1000'"), 0);
}

#[pg_test]
fn restore_copy_and_scheduled_captures_have_their_own_letters() {
    // restore() and copy() need a second database, which cannot be created
    // inside this transaction; the client tests queue real ones. Here, the
    // counter each of them draws from.
    for p in ["a", "r", "c"] {
        let before: i64 =
            one(&format!("SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM backups.names_{p}"));
        let name: String = one(&format!("SELECT backups._next_name('{p}')"));
        assert_eq!(name, pgbackups_core::naming::format_name(p.chars().next().unwrap(), before + 1));
    }
}

#[pg_test]
fn wait_returns_the_final_status_of_a_finished_transfer() {
    let b: String = one("SELECT backups.capture()");
    run(&format!("UPDATE backups.transfers SET status = 'failed', error = 'boom' WHERE name = '{b}'"));
    assert_eq!(one::<String>(&format!("SELECT backups.wait('{b}')")), "failed");
    assert_eq!(one::<String>(&format!("SELECT progress FROM backups.list() WHERE id = '{b}'")), "boom");
}

#[pg_test(error = "cannot wait for b001: it was queued by this same transaction, which the agent cannot see until it commits")]
fn wait_on_a_transfer_queued_by_the_same_transaction_is_an_error() {
    run("SELECT setval('backups.names_b', 1, false)");
    run("DELETE FROM backups.transfers");
    run("SELECT backups.wait(backups.capture())");
}

#[pg_test]
fn cancel_a_pending_transfer_and_request_cancel_of_a_running_one() {
    let a: String = one("SELECT backups.capture()");
    let b: String = one("SELECT backups.capture()");
    assert_eq!(one::<String>(&format!("SELECT backups.cancel('{a}')")), "cancelled");
    assert_eq!(one::<String>(&format!("SELECT status FROM backups.transfers WHERE name = '{a}'")), "cancelled");
    run(&format!("UPDATE backups.transfers SET status = 'running', started_at = now() WHERE name = '{b}'"));
    // NULL means the newest unfinished one.
    assert_eq!(one::<String>("SELECT backups.cancel()"), "cancelling");
    assert!(one::<bool>(&format!("SELECT cancel_requested FROM backups.transfers WHERE name = '{b}'")));
}

#[pg_test]
fn delete_hides_a_backup_and_asks_the_agent_to_remove_its_objects() {
    let b: String = one("SELECT backups.capture()");
    run(&format!(
        "UPDATE backups.transfers SET status = 'completed', object_key = 'pgrx_tests/{b}/backup.dump.zst' WHERE name = '{b}'"
    ));
    run(&format!("SELECT backups.delete('{b}')"));
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.list() WHERE id = '{b}'")), 0);
    // Deleted, not yet purged: the agent removes the object and sets purged_at.
    assert!(one::<bool>(&format!(
        "SELECT deleted_at IS NOT NULL AND purged_at IS NULL FROM backups.transfers WHERE name = '{b}'"
    )));
}

#[pg_test]
fn url_signs_a_link_the_agent_can_verify() {
    let b: String = one("SELECT backups.capture()");
    run(&format!("UPDATE backups.transfers SET status = 'completed', format = 'custom' WHERE name = '{b}'"));
    let url: String = one(&format!("SELECT backups.url('{b}', '10 minutes')"));
    let prefix = format!("http://127.0.0.1:8432/backups/{b}.dump?expires=");
    assert!(url.starts_with(&prefix), "{url}");
    let rest = &url[prefix.len()..];
    let (expires, sig) = rest.split_once("&signature=").expect("signature");
    let expires: i64 = expires.parse().unwrap();
    let now: i64 = one("SELECT extract(epoch FROM now())::bigint");
    assert!((expires - now - 600).abs() <= 5, "expires {expires}, now {now}");
    pgbackups_core::link::verify(b"pgrx-test-link-secret", &b, expires, sig, now).expect("a valid link");
    // NULL means the latest completed backup.
    let latest: String = one("SELECT backups.url()");
    assert!(latest.contains(&format!("/backups/{b}.dump?")), "{latest}");
}

#[pg_test]
fn database_info_reports_size_tables_connections_and_version() {
    run("CREATE TABLE info_probe (id int)");
    let size: String = one("SELECT value FROM backups.database_info() WHERE field = 'data size'");
    assert!(size.ends_with("kB") || size.ends_with("MB"), "{size}");
    let tables: i64 = one("SELECT value::bigint FROM backups.database_info() WHERE field = 'tables'");
    assert!(tables >= 1);
    let version: String = one("SELECT value FROM backups.database_info() WHERE field = 'pg version'");
    // The server this build of the extension is for (15, 16...).
    assert!(version.starts_with(&format!("{}.", pg_sys::PG_MAJORVERSION_NUM)), "{version}");
}

#[pg_test]
fn the_tables_are_closed_to_public_and_functions_to_unprivileged_roles() {
    let public_dml: bool = one(
        "SELECT has_table_privilege('public', 'backups.transfers', 'INSERT') OR has_table_privilege('public', 'backups.transfers', 'SELECT')",
    );
    assert!(!public_dml);
    run("CREATE ROLE pgrx_nobody");
    run("CREATE ROLE pgrx_user IN ROLE backups_user");
    run("CREATE ROLE pgrx_admin IN ROLE backups_admin");
    for (role, func, allowed) in [
        ("pgrx_nobody", "backups.capture(name,integer,text,text[],text[])", false),
        ("pgrx_nobody", "backups.list(integer,text,name,text,text)", false),
        ("pgrx_nobody", "backups.url(text,interval)", false),
        ("pgrx_user", "backups.capture(name,integer,text,text[],text[])", true),
        ("pgrx_user", "backups.list(integer,text,name,text,text)", true),
        ("pgrx_user", "backups.info(text)", true),
        ("pgrx_user", "backups.wait(text,interval)", true),
        ("pgrx_user", "backups.url(text,interval)", true),
        ("pgrx_user", "backups.database_info(name)", true),
        ("pgrx_user", "backups.restore(text,name,name,boolean)", false),
        ("pgrx_user", "backups.copy(text,name,name,boolean)", false),
        ("pgrx_user", "backups.delete(text)", false),
        ("pgrx_user", "backups.keep(text,boolean)", false),
        ("pgrx_user", "backups._pattern_regexes(text,text)", false),
        ("pgrx_user", "backups._exclude_option(text[],text,boolean)", false),
        ("pgrx_user", "backups.schedule(text,name,integer,integer,integer,boolean)", false),
        ("pgrx_user", "backups.unschedule(name)", false),
        ("pgrx_user", "backups.cancel(text)", true),
        ("pgrx_user", "backups.verify(text)", true),
        ("pgrx_user", "backups.health()", true),
        ("pgrx_nobody", "backups.health()", false),
        ("pgrx_user", "backups.contents(text)", true),
        ("pgrx_nobody", "backups.verify(text)", false),
        ("pgrx_nobody", "backups.contents(text)", false),
        ("pgrx_user", "backups._unfinished()", false),
        ("backups_agent", "backups._unfinished()", true),
        ("backups_agent", "backups._overview(boolean)", true),
        ("pgrx_admin", "backups._overview(boolean)", false),
        ("pgrx_user", "backups._overview(boolean)", false),
        ("pgrx_admin", "backups.status_url(interval)", true),
        ("pgrx_user", "backups.status_url(interval)", false),
        ("backups_agent", "backups._heartbeat(bigint,text,integer,bigint,text,bigint)", true),
        ("pgrx_user", "backups._tick(boolean,interval,integer,interval,text[])", false),
        ("pgrx_user", "backups._link_signature(text,bigint)", false),
        ("pgrx_admin", "backups.restore(text,name,name,boolean)", true),
        ("pgrx_admin", "backups.keep(text,boolean)", true),
        ("pgrx_admin", "backups.schedule(text,name,integer,integer,integer,boolean)", true),
        ("pgrx_admin", "backups.capture(name,integer,text,text[],text[])", true),
        ("pgrx_admin", "backups._tick(boolean,interval,integer,interval,text[])", false),
        ("pgrx_admin", "backups._finish(bigint,text,integer,text,bigint,bigint,text,integer,text,jsonb,jsonb)", false),
        ("pgrx_user", "backups._claim(text,text[],text[],integer)", false),
        ("backups_agent", "backups._claim(text,text[],text[],integer)", true),
        ("backups_agent", "backups._finish(bigint,text,integer,text,bigint,bigint,text,integer,text,jsonb,jsonb)", true),
        ("pgrx_user", "backups._record_swap(bigint,text,integer,oid)", false),
        ("backups_agent", "backups._record_swap(bigint,text,integer,oid)", true),
        ("backups_agent", "backups._tick(boolean,interval,integer,interval,text[])", false),
        ("backups_agent", "backups._end(bigint,text,text)", false),
    ] {
        let has: bool = one(&format!("SELECT has_function_privilege('{role}', '{func}', 'EXECUTE')"));
        assert_eq!(has, allowed, "{role} EXECUTE {func}");
    }
    // Nobody has direct access to the tables: not users, not admins, not
    // the agent, which changes transfers only through the lifecycle functions.
    let direct: Vec<String> = Spi::connect(|c| {
        c.select(
            "SELECT r || ' ' || p || ' ' || t.tablename FROM pg_tables t,
                    unnest(ARRAY['pgrx_user', 'pgrx_admin', 'backups_user', 'backups_admin', 'backups_agent']) r,
                    unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) p
              WHERE t.schemaname = 'backups' AND has_table_privilege(r, format('backups.%I', t.tablename), p)",
            None,
            &[],
        )
        .unwrap()
        .map(|row| row.get::<String>(1).unwrap().unwrap())
        .collect()
    });
    assert!(direct.is_empty(), "{direct:?}");
    let tables: i64 = one("SELECT count(*) FROM pg_tables WHERE schemaname = 'backups'");
    assert!(tables >= 4);
    // Every SECURITY DEFINER function pins its search_path.
    let unpinned: i64 = one(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'backups' AND p.prosecdef
           AND NOT coalesce(p.proconfig::text[] @> ARRAY['search_path=pg_catalog, pg_temp'], false)",
    );
    assert_eq!(unpinned, 0);
}

#[pg_test(error = "permission denied for function restore")]
fn an_ordinary_role_cannot_restore() {
    run("CREATE ROLE pgrx_plain");
    run("SET ROLE pgrx_plain");
    run("SELECT backups.restore('b001', 'x', 'x')");
}

#[pg_test(error = "permission denied for function schedule")]
fn a_backups_user_cannot_schedule() {
    run("CREATE ROLE pgrx_user2 IN ROLE backups_user");
    run("SET ROLE pgrx_user2");
    run("SELECT backups.schedule('daily 07:00')");
}

#[pg_test]
fn a_backups_user_can_capture_and_list() {
    run("CREATE ROLE pgrx_user3 IN ROLE backups_user");
    run("SET ROLE pgrx_user3");
    let b: String = one("SELECT backups.capture()");
    let by: String = one(&format!("SELECT value FROM backups.info('{b}') WHERE field = 'created'"));
    run("RESET ROLE");
    // session_user is the login role, not the SECURITY DEFINER owner.
    assert!(by.ends_with(&format!("by {}", one::<String>("SELECT session_user::text"))), "{by}");
}

#[pg_test]
fn info_shows_the_age_recipients_a_backup_is_encrypted_to() {
    run("DELETE FROM backups.transfers");
    let b: String = one("SELECT backups.capture()");
    let (id, attempt): (Option<i64>, Option<i32>) =
        Spi::get_two("SELECT id, attempt FROM backups._claim('agent-a', ARRAY['capture'], '{}')").unwrap();
    let (id, attempt) = (id.expect("claimed"), attempt.unwrap());
    assert!(one::<bool>(&format!(
        "SELECT backups._record_start({id}, 'agent-a', {attempt}, 1, 'custom', 'k', '{{}}', ARRAY['age1aaa', 'age1bbb'])"
    )));
    assert_eq!(
        one::<String>(&format!("SELECT value FROM backups.info('{b}') WHERE field = 'encryption'")),
        "age, to age1aaa, age1bbb"
    );
    // An attempt that does not encrypt records no recipients, and info() says nothing.
    assert!(one::<bool>(&format!(
        "SELECT backups._record_start({id}, 'agent-a', {attempt}, 1, 'custom', 'k', '{{}}', '{{}}')"
    )));
    assert!(one::<bool>(&format!("SELECT encrypted_to IS NULL FROM backups.transfers WHERE id = {id}")));
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.info('{b}') WHERE field = 'encryption'")), 0);
}

#[pg_test]
fn each_kind_registers_its_letters_and_queues_through_one_function() {
    // Heroku's letters for its kinds (a kind added later takes a free one:
    // `_register_kind` refuses a letter taken).
    assert_eq!(
        one::<String>(
            "SELECT string_agg(kind || ':' || prefix || coalesce('/' || scheduled_prefix, ''), ' ' ORDER BY kind)
               FROM backups.kinds WHERE kind IN ('capture', 'copy', 'restore', 'verify')"
        ),
        "capture:b/a copy:c restore:r verify:v"
    );
    // Every entry function queues through _enqueue: the kind's letter, or
    // its schedule's.
    let b: String = one("SELECT backups._enqueue('capture', current_database(), 'test')");
    assert!(b.starts_with('b'), "{b}");
    run("SELECT backups.schedule('daily 02:00')");
    let a: String = one(
        "SELECT backups._enqueue('capture', current_database(), 'test', schedule_id => (SELECT id FROM backups.schedules LIMIT 1))",
    );
    assert!(a.starts_with('a'), "{a}");
    assert!(one::<bool>(&format!("SELECT scheduled FROM backups.transfers WHERE name = '{a}'")));
    assert!(!one::<bool>(&format!("SELECT scheduled FROM backups.transfers WHERE name = '{b}'")));
}

#[pg_test(error = "no kind of transfer is called \"vacuum\"")]
fn an_unknown_kind_is_never_queued() {
    run("SELECT backups._enqueue('vacuum', current_database(), 'test')");
}

#[pg_test(error = "the letter of kind vacuum is taken")]
fn a_new_kind_takes_a_free_letter() {
    run("SELECT backups._register_kind('vacuum', 'a', 'vacuum', 'backups_admin')");
}

/// `backups.kinds` says who may queue each kind: its entry function
/// (`backups.<kind>`) is executable by members of that role, and by no
/// one else of ours.
#[pg_test]
fn each_kinds_entry_function_is_granted_to_the_role_that_may_queue_it() {
    assert_eq!(
        one::<String>("SELECT string_agg(kind || ':' || queued_by, ' ' ORDER BY kind) FROM backups.kinds"),
        "capture:backups_user copy:backups_admin restore:backups_admin restore_tables:backups_user verify:backups_user"
    );
    let wrong: Option<String> = Spi::get_one(
        "SELECT string_agg(format('%s by %s', p.oid::regprocedure, r), ', ')
           FROM backups.kinds k
           JOIN pg_proc p ON p.proname = k.kind AND p.pronamespace = 'backups'::regnamespace
          CROSS JOIN unnest(ARRAY['backups_user', 'backups_admin', 'backups_agent']) r
          WHERE has_function_privilege(r, p.oid, 'EXECUTE') <> pg_has_role(r, k.queued_by, 'MEMBER')",
    )
    .unwrap();
    assert_eq!(wrong, None);
    assert_eq!(
        one::<i64>(
            "SELECT count(*) FROM backups.kinds k
              WHERE NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = k.kind AND p.pronamespace = 'backups'::regnamespace)"
        ),
        0,
        "a kind without an entry function named after it"
    );
}
