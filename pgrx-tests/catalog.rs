// The catalog as storage keeps it (sql/catalog.sql): what a manifest says
// of a backup's row, and adoption of backups found in storage.

/// A backup as `pgbackups adopt` hands it over.
#[allow(dead_code)]
fn found(name: &str, checksum: &str) -> String {
    format!(
        r#"{{"name": "{name}", "database": "postgres", "owner": "postgres", "created_at": "2026-01-02T03:04:05Z",
            "finished_at": "2026-01-02T03:05:00Z", "attempt": 2, "options": {{"jobs": 2}}, "scheduled": false,
            "kept": true, "stored_under": "7301", "format": "directory", "object_key": "7301/postgres/{name}/dump-2",
            "checksum": "{checksum}", "source_size": 100, "processed": 90, "stored_size": 40,
            "tool_versions": {{"pg_dump": "15"}}, "encrypted_to": [],
            "contents": [{{"schema": "public", "table": "t", "rows": 1, "bytes": 2, "digest": "d", "columns": 3}}],
            "cluster": "prod (7301)"}}"#
    )
}

#[pg_test]
fn an_adopted_backup_is_a_completed_capture_once_and_moves_the_counter_past_it() {
    run("DELETE FROM backups.transfers");
    assert_eq!(one::<String>(&format!("SELECT backups._adopt('{}')", found("b90041", "abc"))), "adopted");
    assert_eq!(
        one::<String>(
            "SELECT concat_ws(' ', status, kind, database, attempts, format, object_key, stored_under, checksum,
                               kept_at IS NOT NULL, contents::text, database_oid IS NOT NULL, owner_role::regrole)
               FROM backups.transfers WHERE name = 'b90041'"
        ),
        "completed capture postgres 2 directory 7301/postgres/b90041/dump-2 7301 abc t \
         [{\"rows\": 1, \"bytes\": 2, \"table\": \"t\", \"digest\": \"d\", \"schema\": \"public\"}] t postgres"
    );
    // Listed as any backup, and restorable by name.
    assert_eq!(one::<String>("SELECT status FROM backups.list() WHERE id = 'b90041'"), "completed");
    assert_eq!(one::<String>("SELECT name FROM backups._stored('b90041')"), "b90041");
    // Twice: nothing twice. Another backup under its name: not adopted.
    assert_eq!(one::<String>(&format!("SELECT backups._adopt('{}')", found("b90041", "abc"))), "present");
    assert_eq!(one::<String>(&format!("SELECT backups._adopt('{}')", found("b90041", "other"))), "taken");
    assert_eq!(one::<i64>("SELECT count(*) FROM backups.transfers WHERE name = 'b90041'"), 1);
    // The next capture cannot take an adopted name, nor one passed.
    assert_eq!(one::<String>("SELECT backups.capture()"), "b90042");
    run("SELECT backups._pass_name('b90100')");
    assert_eq!(one::<String>("SELECT backups.capture()"), "b90101");
    // Passing a lower name never moves the counter back.
    run("SELECT backups._pass_name('b007')");
    assert_eq!(one::<String>("SELECT backups.capture()"), "b90102");
}

#[pg_test(error = "cannot adopt 'x001; DROP TABLE backups.transfers': not the name of a backup")]
fn adoption_refuses_what_is_not_a_backups_name() {
    run(&format!("SELECT backups._adopt('{}')", found("x001; DROP TABLE backups.transfers", "abc").replace('\'', "''")));
}

#[pg_test]
fn a_manifest_says_what_the_catalog_knows_of_its_backup() {
    run("DELETE FROM backups.transfers");
    run("SELECT backups.schedule('daily 04:00', 'postgres')");
    let name: String = one("SELECT backups._enqueue('capture', 'postgres', 'test', schedule_id => (SELECT id FROM backups.schedules))");
    let facts: String = one(&format!(
        "SELECT concat_ws(' ', f ->> 'name', f ->> 'database', f ->> 'owner', f ->> 'scheduled', f -> 'schedule' ->> 'spec',
                          (f ->> 'stored_under') = backups._system_identifier())
           FROM backups._manifest_facts((SELECT id FROM backups.transfers WHERE name = '{name}')) f"
    ));
    run("SELECT backups.unschedule('postgres')");
    run("DELETE FROM backups.transfers");
    assert_eq!(facts, format!("{name} postgres postgres true daily 04:00 t"));
}

#[pg_test]
fn an_adopted_backup_of_an_unknown_owner_is_an_admins_and_its_facts_are_tamed() {
    run("DELETE FROM backups.transfers");
    let b = found("b050", "abc")
        .replace("\"owner\": \"postgres\"", "\"owner\": \"nobody_here\"")
        .replace("\"options\": {\"jobs\": 2}", "\"options\": {\"jobs\": 2, \"role\": \"postgres\"}")
        .replace("2026-01-02T03:05:00Z", "2999-01-01T00:00:00Z");
    assert_eq!(one::<String>(&format!("SELECT backups._adopt('{b}')")), "adopted");
    // No role of that name here: nobody's but an admin's (not the owner of
    // whatever database has its name now), dumped with no one's rights,
    // and never in the future.
    assert_eq!(
        one::<String>(
            "SELECT concat_ws(' ', owner_role, options::text, finished_at <= now(), created_at <= finished_at)
               FROM backups.transfers WHERE name = 'b050'"
        ),
        "0 {\"jobs\": 2} t t"
    );
    // Adoption is an admin's act: not the agent's role.
    assert!(!one::<bool>("SELECT has_function_privilege('backups_agent', 'backups._adopt(jsonb)', 'EXECUTE')"));
    assert!(!one::<bool>("SELECT has_function_privilege('backups_user', 'backups._pass_name(text)', 'EXECUTE')"));
    assert!(one::<bool>("SELECT has_function_privilege('backups_admin', 'backups._adopt(jsonb)', 'EXECUTE')"));
}
