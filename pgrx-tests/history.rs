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
            "SELECT string_agg(id, ' ' ORDER BY created_at DESC, id DESC) FROM backups.list(40, {})",
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
