// Tenancy: superusers and backups_admin act on every database; a
// backups_user only on the databases whose owner role it is a member of.
// The caller is the session user, so these tests switch it with SET SESSION
// AUTHORIZATION (SET ROLE would leave the superuser as session user). CREATE
// DATABASE cannot run in a test's transaction, so the tests hand the
// databases the cluster has (postgres, template1, this one) to roles.

/// Transfers queued so far (the table is the superuser's to read).
#[allow(dead_code)]
fn queued(back_to: &str) -> i64 {
    as_superuser();
    let n = one("SELECT count(*) FROM backups.transfers");
    as_user(back_to);
    n
}

/// The statement's error message, or None if it succeeded (the error is
/// caught in a subtransaction, so the test goes on).
#[allow(dead_code)]
fn refusal(sql: &str) -> Option<String> {
    let escaped = sql.replace('\'', "''");
    Spi::get_one::<String>(&format!(
        "DO $t$ BEGIN EXECUTE '{escaped}'; RAISE EXCEPTION 'allowed'; EXCEPTION WHEN OTHERS THEN
             IF SQLERRM = 'allowed' THEN PERFORM set_config('pgrx.refusal', '', true);
             ELSE PERFORM set_config('pgrx.refusal', SQLSTATE || ' ' || SQLERRM, true); END IF; END $t$;
         SELECT current_setting('pgrx.refusal')"
    ))
    .ok()
    .flatten()
    .filter(|s| !s.is_empty())
}

/// `alice` owns database `postgres` (through role `shop_owners`); `bob`
/// owns nothing; `carol` is a backups_admin. All three are backups_users.
#[allow(dead_code)]
fn tenants() {
    run("CREATE ROLE shop_owners");
    run("CREATE ROLE alice LOGIN IN ROLE backups_user, shop_owners");
    run("CREATE ROLE bob LOGIN IN ROLE backups_user");
    run("CREATE ROLE carol LOGIN IN ROLE backups_admin");
    run("ALTER DATABASE postgres OWNER TO shop_owners");
}

#[allow(dead_code)]
fn as_user(role: &str) {
    run(&format!("SET SESSION AUTHORIZATION {role}"));
}

#[allow(dead_code)]
fn as_superuser() {
    run("RESET SESSION AUTHORIZATION");
}

#[pg_test]
fn a_backups_user_captures_only_databases_it_owns() {
    tenants();
    as_user("alice");
    let b: String = one("SELECT backups.capture('postgres')");
    assert!(b.starts_with('b'));
    let before = queued("alice");
    for sql in [
        "SELECT backups.capture('template1')",
        "SELECT backups.capture(current_database())",
        "SELECT backups.capture(source => 'replica')",
        "SELECT backups.database_info('template1')",
    ] {
        let err = refusal(sql).unwrap_or_else(|| panic!("{sql} was allowed"));
        assert!(err.starts_with("42501 permission denied"), "{sql}: {err}");
    }
    assert_eq!(queued("alice"), before, "nothing is queued on a refusal");
    let size: String = one("SELECT value FROM backups.database_info('postgres') WHERE field = 'database'");
    assert_eq!(size, "postgres");
    as_user("bob");
    assert!(refusal("SELECT backups.capture('postgres')").unwrap().contains("permission denied"));
    as_superuser();
}

#[pg_test(error = "permission denied to capture database \"template1\"")]
fn a_refused_capture_says_why() {
    tenants();
    as_user("bob");
    run("SELECT backups.capture('template1')");
}

#[pg_test]
fn a_backups_user_lists_and_reads_only_its_databases_transfers() {
    tenants();
    // Queued by the superuser: one on alice's database, one on another.
    let ours: String = one("SELECT backups.capture('postgres')");
    let theirs: String = one("SELECT backups.capture('template1')");
    run(&format!(
        "UPDATE backups.transfers SET status = 'completed', finished_at = now(), format = 'custom' WHERE name IN ('{ours}', '{theirs}')"
    ));
    // As if alice had queued it (with the owner's rights, so hers to download).
    run(&format!("UPDATE backups.transfers SET options = '{{\"role\": \"shop_owners\"}}' WHERE name = '{ours}'"));
    run("SELECT backups.schedule('daily 03:00', database => 'postgres')");
    run("SELECT backups.schedule('daily 04:00', database => 'template1')");

    as_user("alice");
    let listed: i64 = one(&format!("SELECT count(*) FROM backups.list() WHERE id IN ('{ours}', '{theirs}')"));
    assert_eq!(listed, 1);
    let visible: String = one("SELECT string_agg(id, ',') FROM backups.list()");
    assert_eq!(visible, ours);
    let id: String = one(&format!("SELECT value FROM backups.info('{ours}') WHERE field = 'id'"));
    assert_eq!(id, ours);
    // NULL means the newest transfer the caller may see.
    let newest: String = one("SELECT value FROM backups.info() WHERE field = 'id'");
    assert_eq!(newest, ours);
    let link: String = one("SELECT backups.url()");
    assert!(link.contains(&format!("/backups/{ours}.dump")), "{link}");
    for sql in [
        format!("SELECT * FROM backups.info('{theirs}')"),
        format!("SELECT backups.url('{theirs}')"),
        format!("SELECT backups.wait('{theirs}')"),
    ] {
        let err = refusal(&sql).unwrap_or_else(|| panic!("{sql} was allowed"));
        assert!(err.starts_with("42501 permission denied for transfer"), "{sql}: {err}");
    }
    let schedules: String = one("SELECT string_agg(database::text, ',') FROM backups.schedules()");
    assert_eq!(schedules, "postgres");
    // An admin's capture of her database read with the agent's rights: she
    // sees it, but only an admin gets its data.
    as_superuser();
    let admins: String = one("SELECT backups.capture('postgres')");
    run(&format!("UPDATE backups.transfers SET status = 'completed', finished_at = now() + interval '1 s', format = 'custom' WHERE name = '{admins}'"));
    as_user("alice");
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.list() WHERE id = '{admins}'")), 1);
    let err = refusal(&format!("SELECT backups.url('{admins}')")).unwrap();
    assert!(err.starts_with("42501 permission denied to download"), "{err}");
    let link: String = one("SELECT backups.url()");
    assert!(link.contains(&format!("/backups/{ours}.dump")), "url() skips what she may not download: {link}");

    as_user("bob");
    assert_eq!(one::<i64>("SELECT count(*) FROM backups.list()"), 0);
    assert_eq!(one::<i64>("SELECT count(*) FROM backups.schedules()"), 0);
    assert!(refusal("SELECT backups.url()").unwrap().contains("no completed backup"));

    // An admin sees and acts on every database.
    as_user("carol");
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.list() WHERE id IN ('{ours}', '{theirs}')")), 2);
    let c: String = one("SELECT backups.capture('template1')");
    assert!(c.starts_with('b'));
    as_superuser();
}

#[pg_test]
fn a_backups_user_cancels_only_its_own_pending_transfers() {
    tenants();
    let by_admin: String = one("SELECT backups.capture('postgres')");
    as_user("alice");
    let own: String = one("SELECT backups.capture('postgres')");
    let running: String = one("SELECT backups.capture('postgres')");
    as_superuser();
    run(&format!("UPDATE backups.transfers SET status = 'running', agent_id = 'a1', attempts = 1 WHERE name = '{running}'"));
    as_user("alice");
    for id in [&by_admin, &running] {
        let err = refusal(&format!("SELECT backups.cancel('{id}')")).unwrap_or_else(|| panic!("cancel {id} allowed"));
        assert!(err.starts_with("42501 permission denied to cancel"), "{err}");
    }
    // NULL: the newest pending transfer this user queued.
    assert_eq!(one::<String>("SELECT backups.cancel()"), "cancelled");
    assert_eq!(one::<String>(&format!("SELECT status FROM backups.list() WHERE id = '{own}'")), "cancelled");
    as_user("bob");
    assert!(refusal(&format!("SELECT backups.cancel('{by_admin}')")).unwrap().contains("permission denied for transfer"));
    as_superuser();
    assert_eq!(one::<String>(&format!("SELECT status FROM backups.transfers WHERE name = '{by_admin}'")), "pending");
    assert_eq!(one::<String>(&format!("SELECT status FROM backups.transfers WHERE name = '{running}'")), "running");
}

#[pg_test]
fn restore_urls_are_shown_without_credentials_or_query_strings() {
    let r: String = one(
        "SELECT backups.restore('https://alice:s3cret@backups.example.com/b001.dump?expires=1&signature=deadbeef', 'template1', 'template1')",
    );
    let shown: String = one(&format!("SELECT string_agg(value, ' ') FROM backups.info('{r}')"));
    assert!(!shown.contains("s3cret") && !shown.contains("deadbeef") && !shown.contains("expires="), "{shown}");
    assert!(shown.contains("https://***@backups.example.com/b001.dump?***"), "{shown}");
    // The agent gets the URL whole, and it is gone once the transfer ends.
    let claimed: String = one("SELECT source FROM backups._claim('a1', ARRAY['restore'], '{}')");
    assert!(claimed.ends_with("signature=deadbeef"), "{claimed}");
    run(&format!("SELECT backups._end(id, 'failed', 'x') FROM backups.transfers WHERE name = '{r}'"));
    let kept: Option<String> =
        Spi::get_one(&format!("SELECT source_url FROM backups.transfers WHERE name = '{r}'")).unwrap();
    assert_eq!(kept, None);
}

#[pg_test]
fn transfers_stay_with_the_owner_they_were_queued_under() {
    tenants();
    as_user("alice");
    let b: String = one("SELECT backups.capture('postgres')");
    as_superuser();
    // A backups_user's capture dumps with the owner's rights; an admin's does not.
    assert_eq!(one::<String>(&format!("SELECT options ->> 'role' FROM backups.transfers WHERE name = '{b}'")), "shop_owners");
    let by_admin: String = one("SELECT backups.capture('postgres')");
    let role: Option<String> =
        Spi::get_one(&format!("SELECT options ->> 'role' FROM backups.transfers WHERE name = '{by_admin}'")).unwrap();
    assert_eq!(role, None);
    // The database changes hands: its new owner does not inherit the old
    // owner's backups, which stay with the old owner.
    run("ALTER DATABASE postgres OWNER TO bob");
    as_user("bob");
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.list() WHERE id = '{b}'")), 0);
    assert!(refusal(&format!("SELECT backups.url('{b}')")).unwrap().contains("permission denied for transfer"));
    let own: String = one("SELECT backups.capture('postgres')");
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.list() WHERE id = '{own}'")), 1);
    as_user("alice");
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.list() WHERE id = '{b}'")), 1);
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.list() WHERE id = '{own}'")), 0);
    as_superuser();
}

#[pg_test]
fn scheduled_captures_run_with_the_owners_rights_so_tenants_may_download_them() {
    tenants();
    run("SELECT backups.schedule('daily 03:00', database => 'postgres')");
    run("UPDATE backups.schedules SET next_run_at = now() - interval '1 minute' WHERE database = 'postgres'");
    // (At least this one: the client tests' schedule may be due too.)
    assert!(one::<i32>("SELECT backups._fire_schedules()") >= 1);
    let role: String = one(
        "SELECT t.options ->> 'role' FROM backups.transfers t JOIN backups.schedules s ON s.id = t.schedule_id
          WHERE s.database = 'postgres'",
    );
    assert_eq!(role, "shop_owners");
}

#[pg_test]
fn a_backups_user_verifies_and_reads_contents_only_of_backups_taken_with_its_rights() {
    tenants();
    // Alice's own capture (owner's rights), an admin's capture of her
    // database (agent's rights), and a capture of another database.
    let ours: String = one("SELECT backups.capture('postgres')");
    let admins: String = one("SELECT backups.capture('postgres')");
    let theirs: String = one("SELECT backups.capture('template1')");
    run(&format!(
        "UPDATE backups.transfers SET status = 'completed', finished_at = now(), format = 'custom',
                contents = '[{{\"schema\": \"public\", \"table\": \"t\", \"rows\": 3, \"bytes\": 12, \"digest\": \"00000000000000ff\"}}]'
          WHERE name IN ('{ours}', '{admins}', '{theirs}')"
    ));
    run(&format!("UPDATE backups.transfers SET options = '{{\"role\": \"shop_owners\"}}' WHERE name = '{ours}'"));

    as_user("alice");
    let rows: i64 = one(&format!("SELECT rows FROM backups.contents('{ours}')"));
    assert_eq!(rows, 3);
    let v: String = one(&format!("SELECT backups.verify('{ours}')"));
    assert!(v.starts_with('v'), "{v}");
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.list() WHERE id = '{v}'")), 1);
    let again = refusal(&format!("SELECT backups.verify('{ours}')")).unwrap();
    assert!(again.contains(&format!("already being verified by {v}")), "{again}");
    for sql in [format!("SELECT * FROM backups.contents('{admins}')"), format!("SELECT backups.verify('{admins}')")] {
        let err = refusal(&sql).unwrap_or_else(|| panic!("{sql} was allowed"));
        assert!(err.starts_with("42501 permission denied to"), "{sql}: {err}");
    }
    for sql in [format!("SELECT * FROM backups.contents('{theirs}')"), format!("SELECT backups.verify('{theirs}')")] {
        let err = refusal(&sql).unwrap_or_else(|| panic!("{sql} was allowed"));
        assert!(err.starts_with("42501 permission denied for transfer"), "{sql}: {err}");
    }

    // The admin's verification of the admin's capture is not alice's to see.
    as_user("carol");
    let av: String = one(&format!("SELECT backups.verify('{admins}')"));
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.contents('{admins}')")), 1);
    as_user("alice");
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.list() WHERE id = '{av}'")), 0);
    // Nor in the capture's `verified` column or info(), which she sees.
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.list() WHERE id = '{admins}' AND verified IS NULL")), 1);
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.info('{admins}') WHERE field = 'verified'")), 0);
    as_user("bob");
    assert_eq!(one::<i64>("SELECT count(*) FROM backups.list()"), 0);
    as_superuser();
}

#[pg_test]
fn restore_tables_follows_restore_and_url_and_refuses_bad_input_with_nothing_queued() {
    tenants();
    // Alice's capture (owner's rights), an admin's capture of her database
    // (agent's rights), a capture of another database, and one pending.
    let ours: String = one("SELECT backups.capture('postgres')");
    let admins: String = one("SELECT backups.capture('postgres')");
    let theirs: String = one("SELECT backups.capture('template1')");
    let pending: String = one("SELECT backups.capture('postgres')");
    run(&format!(
        "UPDATE backups.transfers SET status = 'completed', finished_at = now(), format = 'custom'
          WHERE name IN ('{ours}', '{admins}', '{theirs}')"
    ));
    run(&format!("UPDATE backups.transfers SET options = '{{\"role\": \"shop_owners\"}}' WHERE name IN ('{ours}', '{pending}')"));

    as_user("alice");
    let before = queued("alice");
    for (sql, want) in [
        (format!("SELECT backups.restore_tables('{admins}', ARRAY['public.t'])"), "42501 permission denied to restore tables from"),
        (format!("SELECT backups.restore_tables('{theirs}', ARRAY['public.t'])"), "42501 permission denied for transfer"),
        (format!("SELECT backups.restore_tables('{ours}', ARRAY['public.t'], database => 'template1')"), "42501 permission denied to restore tables into database \"template1\""),
        (format!("SELECT backups.restore_tables('{pending}', ARRAY['public.t'])"), "cannot restore tables from"),
        (format!("SELECT backups.restore_tables('{ours}', ARRAY[]::text[])"), "22023 name the tables to restore"),
        (format!("SELECT backups.restore_tables('{ours}', NULL)"), "22023 name the tables to restore"),
        (format!("SELECT backups.restore_tables('{ours}', ARRAY['public.t', NULL])"), "22023 invalid tables pattern: NULL"),
        (format!("SELECT backups.restore_tables('{ours}', ARRAY['a.b.c.d'])"), "22023 invalid tables pattern"),
        (format!("SELECT backups.restore_tables('{ours}', ARRAY['t'], into_schema => 'pg_mine')"), "22023 cannot restore tables into schema \"pg_mine\""),
        (format!("SELECT backups.restore_tables('{ours}', ARRAY['t'], database => 'no_such_db')"), "database \"no_such_db\" does not exist"),
        ("SELECT backups.restore_tables('', ARRAY['t'])".to_string(), "22023 backups.restore_tables() needs a backup id"),
    ] {
        let err = refusal(&sql).unwrap_or_else(|| panic!("{sql} was allowed"));
        assert!(err.contains(want), "{sql}: {err}");
    }
    assert_eq!(queued("alice"), before, "a refused table restore queues nothing");

    // Her own: queued as t001 into restored_<backup> of her database.
    let t: String = one(&format!("SELECT backups.restore_tables('{ours}', ARRAY['public.orders', 'billing.*'])"));
    assert!(t.starts_with('t'), "{t}");
    as_superuser();
    let (kind, target, options): (String, String, String) = (
        one(&format!("SELECT kind FROM backups.transfers WHERE name = '{t}'")),
        one(&format!("SELECT target FROM backups.transfers WHERE name = '{t}'")),
        one(&format!("SELECT options::text FROM backups.transfers WHERE name = '{t}'")),
    );
    assert_eq!((kind.as_str(), target.as_str()), ("restore_tables", "postgres"));
    assert_eq!(options, format!("{{\"tables\": [\"public.orders\", \"billing.*\"], \"into_schema\": \"restored_{ours}\"}}"));
    as_user("alice");
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM backups.list() WHERE id = '{t}'")), 1);
    // An admin restores from the admin's capture, anywhere.
    as_user("carol");
    let t2: String = one(&format!("SELECT backups.restore_tables('{admins}', ARRAY['t'], into_schema => 'back', database => 'template1')"));
    assert!(t2.starts_with('t'), "{t2}");
    as_user("bob");
    assert_eq!(one::<i64>("SELECT count(*) FROM backups.list()"), 0);
    as_superuser();
}
