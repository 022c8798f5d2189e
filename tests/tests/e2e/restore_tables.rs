//! `backups.restore_tables()`: tables of a backup come back beside the
//! live ones, in a schema of their own, identical to what was captured,
//! while nothing live is touched; a partitioned table with its partitions,
//! odd names, an enum and a domain, a whole schema by pattern; from a
//! custom-format, a parallel, an encrypted backup and one taken before
//! positions were recorded; one small table of a large backup reads a
//! small part of it (counted by the kernel: the agent's read bytes); and
//! what cannot be done fails clearly, leaving nothing behind.

use std::time::Duration;

use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{wait, wait_for};
use pgbackups_e2e::env::{capture, log_of, TestEnv};

const PATIENCE: Duration = Duration::from_secs(120);

const SHOP: &str = r#"
CREATE ROLE shop_owner;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id serial PRIMARY KEY, customer int REFERENCES customers, feeling mood NOT NULL DEFAULT 'ok',
                     qty positive, note text CHECK (note <> 'forbidden'), placed timestamptz DEFAULT now());
CREATE INDEX orders_customer_idx ON orders (customer);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 100) g;
INSERT INTO orders (customer, feeling, qty, note, placed)
SELECT 1 + g % 100, (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood, 1 + g % 7, E'tab\there\nand ''quote'' ' || g,
       timestamptz '2026-01-01 00:00+00' + g * interval '1 minute'
  FROM generate_series(1, 5000) g;
CREATE TABLE measures (at date NOT NULL, v int) PARTITION BY RANGE (at);
CREATE TABLE measures_2025 PARTITION OF measures FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measures_2026 PARTITION OF measures FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE INDEX measures_at_idx ON measures (at);
INSERT INTO measures SELECT date '2025-06-01' + g % 400, g FROM generate_series(1, 3000) g;
CREATE SCHEMA "Sales #1";
CREATE TABLE "Sales #1"."Odd ""Name""" (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "it's" text);
INSERT INTO "Sales #1"."Odd ""Name""" ("it's") SELECT 'v' || g FROM generate_series(1, 200) g;
CREATE SCHEMA billing;
CREATE TABLE billing.invoices (id bigint PRIMARY KEY, total numeric(10,2));
CREATE TABLE billing.lines (invoice bigint, n int, UNIQUE (invoice, n));
INSERT INTO billing.invoices SELECT g, g * 1.5 FROM generate_series(1, 500) g;
INSERT INTO billing.lines SELECT 1 + g % 500, g FROM generate_series(1, 2000) g;
CREATE TABLE big (id int, pad text);
INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) FROM generate_series(1, 400000) g;
ALTER SCHEMA public OWNER TO shop_owner;
"#;

/// An order-independent hash of a table's rows.
fn rows(c: &Cluster, db: &str, table: &str) -> String {
    c.sql(
        db,
        &format!(
            "SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t"
        ),
    )
    .unwrap()
}

/// Queue `backups.restore_tables(args)` and wait; its id and final status.
fn restore_tables(c: &Cluster, args: &str) -> (String, String) {
    let id = c.sql("postgres", &format!("SELECT backups.restore_tables({args})")).unwrap();
    let status = wait(c, &id, PATIENCE).unwrap();
    (id, status)
}

fn completed(c: &Cluster, args: &str) -> String {
    let (id, status) = restore_tables(c, args);
    assert_eq!(status, "completed", "{}", log_of(c, &id));
    id
}

fn one(c: &Cluster, db: &str, sql: &str) -> String {
    c.sql(db, sql).unwrap()
}

fn shop() -> TestEnv {
    let env = TestEnv::new().db("shop", SHOP).start();
    env.c.sql("postgres", "ALTER DATABASE shop OWNER TO shop_owner").unwrap();
    env
}

#[test]
fn deleted_rows_come_back_beside_the_live_tables() {
    let TestEnv { c, store: _store, agent: _agent, .. } = shop();
    let tables = ["orders", "measures", "\"Sales #1\".\"Odd \"\"Name\"\"\"", "billing.invoices", "billing.lines"];
    let before: Vec<String> = tables.iter().map(|t| rows(&c, "shop", t)).collect();
    let b = capture(&c, "'shop'");
    c.sql("shop", "DELETE FROM orders WHERE id % 2 = 0; DELETE FROM measures; TRUNCATE billing.lines").unwrap();
    let live = rows(&c, "shop", "orders");

    // One table, into restored_<backup>.
    let t = completed(&c, &format!("'{b}', ARRAY['public.orders']"));
    let schema = format!("restored_{b}");
    assert_eq!(rows(&c, "shop", &format!("{schema}.orders")), before[0], "the captured rows came back");
    assert_eq!(rows(&c, "shop", "orders"), live, "the live table is untouched");
    let log = log_of(&c, &t);
    assert!(log.contains("foreign keys, triggers, rules and policies are not recreated"), "{log}");
    assert!(
        log.contains("FK CONSTRAINT public.orders orders_customer_fkey")
            && log.contains("TRIGGER public.orders orders_touch"),
        "{log}"
    );
    assert!(log.contains("its head and the tables' frames"), "{log}");
    // Owned by the database's owner; its indexes, constraints and defaults
    // (the sequence, restored beside it, going on from the captured value).
    assert_eq!(
        one(&c, "shop", &format!("SELECT nspowner::regrole FROM pg_namespace WHERE nspname = '{schema}'")),
        "shop_owner"
    );
    assert_eq!(
        one(&c, "shop", &format!("SELECT relowner::regrole FROM pg_class WHERE oid = '{schema}.orders'::regclass")),
        "shop_owner"
    );
    assert_eq!(
        one(
            &c,
            "shop",
            &format!(
                "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE schemaname = '{schema}'"
            )
        ),
        "orders_customer_idx,orders_pkey"
    );
    assert_eq!(
        one(
            &c,
            "shop",
            &format!(
                "SELECT count(*) FROM pg_constraint WHERE connamespace = '{schema}'::regnamespace AND contype = 'f'"
            )
        ),
        "0"
    );
    assert_eq!(
        one(&c, "shop", &format!("SELECT count(*) FROM pg_trigger WHERE tgrelid = '{schema}.orders'::regclass")),
        "0"
    );
    let id = one(
        &c,
        "shop",
        &format!("INSERT INTO {schema}.orders (customer, qty) VALUES (1, 1) RETURNING id || ' ' || feeling"),
    );
    assert_eq!(id, "5001 ok");
    assert_eq!(
        one(&c, "shop", "SELECT last_value FROM orders_id_seq"),
        "5000",
        "the live sequence did not move: {}",
        log_of(&c, &t)
    );
    assert!(c.sql("shop", &format!("INSERT INTO {schema}.orders (qty, note) VALUES (1, 'forbidden')")).is_err());
    assert!(
        c.sql("shop", &format!("INSERT INTO {schema}.orders (qty) VALUES (-1)")).is_err(),
        "the domain's check holds"
    );
    assert!(c.sql("shop", &format!("INSERT INTO {schema}.orders (qty) VALUES (NULL)")).is_ok());

    // A partitioned table brings its partitions, attached, in another schema.
    completed(&c, &format!("'{b}', ARRAY['measures'], into_schema => 'parts'"));
    assert_eq!(rows(&c, "shop", "parts.measures"), before[1]);
    assert_eq!(
        one(&c, "shop", "SELECT string_agg(inhrelid::regclass::text, ',' ORDER BY inhrelid::regclass::text) FROM pg_inherits WHERE inhparent = 'parts.measures'::regclass"),
        "parts.measures_2025,parts.measures_2026"
    );
    assert_eq!(one(&c, "shop", "SELECT count(*) FROM measures"), "0");
    assert_eq!(one(&c, "shop", "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.measures'::regclass"), "2");

    // An odd name, with an identity column.
    completed(&c, &format!("'{b}', ARRAY['\"Sales #1\".\"Odd \"\"Name\"\"\"'], into_schema => 'it''s odd'"));
    assert_eq!(rows(&c, "shop", "\"it's odd\".\"Odd \"\"Name\"\"\""), before[2]);
    assert_eq!(
        one(&c, "shop", "INSERT INTO \"it's odd\".\"Odd \"\"Name\"\"\" (\"it's\") VALUES ('x') RETURNING id"),
        "201"
    );

    // A whole schema by pattern.
    completed(&c, &format!("'{b}', ARRAY['billing.*'], into_schema => 'bill'"));
    assert_eq!(rows(&c, "shop", "bill.invoices"), before[3]);
    assert_eq!(rows(&c, "shop", "bill.lines"), before[4]);
    assert_eq!(one(&c, "shop", "SELECT count(*) FROM billing.lines"), "0");
}

#[test]
fn one_small_table_of_a_large_backup_reads_a_small_part_of_it() {
    let TestEnv { c, store: _store, agent, .. } = shop();
    let b = capture(&c, "'shop'");
    let stored: u64 =
        one(&c, "postgres", &format!("SELECT stored_size FROM backups.transfers WHERE name = '{b}'")).parse().unwrap();
    let read = || -> u64 {
        let io = std::fs::read_to_string(format!("/proc/{}/io", agent.pid())).unwrap();
        io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().trim().parse().unwrap()
    };
    let before = read();
    completed(&c, &format!("'{b}', ARRAY['billing.invoices']"));
    let spent = read() - before;
    assert!(stored > 10_000_000, "the backup is large: {stored} bytes");
    assert!(spent < stored / 10, "the agent read {spent} bytes for one small table of a {stored}-byte backup");
    assert_eq!(one(&c, "shop", &format!("SELECT count(*) FROM restored_{b}.invoices")), "500");
}

#[test]
fn from_parallel_encrypted_and_older_backups() {
    let dir = tempfile::tempdir().unwrap();
    let key = age::x25519::Identity::generate();
    let identity = dir.path().join("id.txt");
    use age::secrecy::ExposeSecret;
    std::fs::write(&identity, format!("{}\n", key.to_string().expose_secret())).unwrap();
    let public = key.to_public().to_string();
    let env = TestEnv::new()
        .db("shop", SHOP)
        .args(&["--encrypt-to", &public, "--identity-file", identity.to_str().unwrap()])
        .start();
    let c = &env.c;
    c.sql("postgres", "ALTER DATABASE shop OWNER TO shop_owner").unwrap();
    let want = rows(c, "shop", "orders");
    let want_parts = rows(c, "shop", "measures");
    // Encrypted custom format: ranges decrypted alone.
    let enc = capture(c, "'shop'");
    let t = completed(c, &format!("'{enc}', ARRAY['orders', 'measures'], into_schema => 'from_enc'"));
    assert!(log_of(c, &t).contains("its head and the tables' frames"), "{}", log_of(c, &t));
    assert_eq!(rows(c, "shop", "from_enc.orders"), want);
    assert_eq!(rows(c, "shop", "from_enc.measures"), want_parts);
    // Parallel (directory format, encrypted too).
    let par = capture(c, "'shop', jobs => 2");
    // (An unqualified name that now matches in two schemas is refused.)
    let (t, status) = restore_tables(c, &format!("'{par}', ARRAY['orders'], into_schema => 'from_par'"));
    assert_eq!(status, "failed");
    assert!(log_of(c, &t).contains("pattern orders matches tables of 2 schemas"), "{}", log_of(c, &t));
    let t = completed(c, &format!("'{par}', ARRAY['public.orders', 'public.measures'], into_schema => 'from_par'"));
    assert!(log_of(c, &t).contains("its table of contents and the tables' files"), "{}", log_of(c, &t));
    assert_eq!(rows(c, "shop", "from_par.orders"), want);
    assert_eq!(rows(c, "shop", "from_par.measures"), want_parts);
    // A backup captured before positions were recorded: read whole.
    c.sql(
        "postgres",
        &format!("UPDATE backups.transfers SET contents = (SELECT jsonb_agg(e - 'position') FROM jsonb_array_elements(contents) e) WHERE name = '{enc}'"),
    )
    .unwrap();
    let t = completed(c, &format!("'{enc}', ARRAY['orders'], into_schema => 'from_old'"));
    assert!(log_of(c, &t).contains("before table positions were recorded"), "{}", log_of(c, &t));
    assert_eq!(rows(c, "shop", "from_old.orders"), want);
}

#[test]
fn what_cannot_be_done_fails_clearly_and_leaves_nothing() {
    let TestEnv { c, store: _store, agent: _agent, .. } = shop();
    c.sql("shop", "CREATE TABLE moods (m mood); INSERT INTO moods VALUES ('sad'), ('happy')").unwrap();
    let b = capture(&c, "'shop'");
    let nothing_in = |schema: &str| {
        assert_eq!(
            one(&c, "shop", &format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'")),
            "0",
            "schema {schema} is left"
        );
    };
    // A pattern that matches nothing.
    let (t, status) = restore_tables(&c, &format!("'{b}', ARRAY['orders', 'no_such_table']"));
    assert_eq!(status, "failed");
    assert!(log_of(&c, &t).contains("no_such_table matches no table of"), "{}", log_of(&c, &t));
    nothing_in(&format!("restored_{b}"));
    // A schema that already holds one of the tables: nothing else created.
    c.sql("shop", "CREATE SCHEMA mine").unwrap();
    let (t, status) = restore_tables(&c, &format!("'{b}', ARRAY['orders'], into_schema => 'mine'"));
    assert_eq!(status, "failed");
    assert!(
        log_of(&c, &t).contains("permission denied for schema mine: a table restore acts as \"shop\"'s owner"),
        "{}",
        log_of(&c, &t)
    );
    c.sql("shop", "CREATE SCHEMA here AUTHORIZATION shop_owner; CREATE TABLE here.customers (x int)").unwrap();
    let (t, status) = restore_tables(&c, &format!("'{b}', ARRAY['orders', 'customers'], into_schema => 'here'"));
    assert_eq!(status, "failed");
    assert!(log_of(&c, &t).contains("already holds"), "{}", log_of(&c, &t));
    assert_eq!(
        one(&c, "shop", "SELECT string_agg(relname, ',') FROM pg_class WHERE relnamespace = 'here'::regnamespace"),
        "customers"
    );
    // A type that is gone: named, with a hint.
    c.sql("shop", "DROP TABLE moods, orders; DROP TYPE mood").unwrap();
    let (t, status) = restore_tables(&c, &format!("'{b}', ARRAY['customers', 'moods']"));
    assert_eq!(status, "failed");
    let log = log_of(&c, &t);
    assert!(log.contains("type \"public.mood\" does not exist") && log.contains("Create the type first"), "{log}");
    nothing_in(&format!("restored_{b}"));
    // Cancelled mid-way (its first table made, the next waiting on a
    // lock another session holds): nothing left.
    c.sql("shop", "CREATE SCHEMA cut AUTHORIZATION shop_owner").unwrap();
    let mut holder = std::process::Command::new(c.program("psql"))
        .args([
            "-X",
            "-q",
            "-d",
            &c.connstr("shop"),
            "-c",
            "BEGIN; CREATE TABLE cut.customers (x int); SELECT pg_sleep(60); ROLLBACK",
        ])
        .spawn()
        .unwrap();
    wait_for(&c, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND state = 'active' AND pid <> pg_backend_pid()", "1", PATIENCE)
        .unwrap();
    let t = c
        .sql(
            "postgres",
            &format!("SELECT backups.restore_tables('{b}', ARRAY['big', 'customers'], into_schema => 'cut')"),
        )
        .unwrap();
    wait_for(
        &c,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = 'shop'",
        "1",
        PATIENCE,
    )
    .unwrap_or_else(|e| panic!("{e:#}: {}", log_of(&c, &t)));
    c.sql("postgres", &format!("SELECT backups.cancel('{t}')")).unwrap();
    assert_eq!(wait(&c, &t, PATIENCE).unwrap(), "cancelled");
    let _ = holder.kill();
    let _ = holder.wait();
    wait_for(
        &c,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' AND usename LIKE 'pgbackups_apply_%'",
        "0",
        PATIENCE,
    )
    .unwrap();
    assert_eq!(
        one(&c, "shop", "SELECT count(*) FROM pg_class WHERE relnamespace = 'cut'::regnamespace"),
        "0",
        "nothing left in cut"
    );
    assert_eq!(one(&c, "shop", "SELECT count(*) FROM pg_class WHERE relname = 'big'"), "1", "only the live one");
}
