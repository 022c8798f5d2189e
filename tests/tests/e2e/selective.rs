//! Selective capture end to end: exclude_table_data and exclude_schemas
//! reach the real pg_dump as its --exclude-table-data/--exclude-schema, for
//! names with capitals, quotes, spaces, % and # and unicode; malformed
//! patterns are refused before anything is queued; a pattern that matches
//! nothing fails the capture, naming it, rather than dumping what was meant
//! to be left out; a backups_user's selective capture still dumps with the
//! owner's rights.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{self, create_db, wait, SHOP};
use pgbackups_e2e::env::{store_url, TestEnv};

const PATIENCE: Duration = Duration::from_secs(60);

/// SHOP, plus a schema to leave out, a hidden schema off the search_path,
/// and names that need quoting.
const EXTRA: &str = r#"
CREATE SCHEMA scratch;
CREATE TABLE scratch.tmp AS SELECT g FROM generate_series(1, 10) g;
CREATE SCHEMA "Ünïcode Schema";
CREATE TABLE "Ünïcode Schema"."Mixed Case" AS SELECT g FROM generate_series(1, 7) g;
CREATE TABLE public."Order's #1%" AS SELECT g FROM generate_series(1, 5) g;
CREATE TABLE public."Kept Too" AS SELECT g FROM generate_series(1, 3) g;
CREATE SCHEMA hidden;
CREATE TABLE hidden.secret AS SELECT g FROM generate_series(1, 4) g;
"#;

fn field(c: &Cluster, id: &str, column: &str) -> String {
    c.sql("postgres", &format!("SELECT {column} FROM backups.transfers WHERE name = '{id}'")).unwrap()
}

/// The stored backup `id`, decompressed into `work`: the path pg_restore takes.
fn archive(c: &Cluster, store: &Path, id: &str, work: &Path) -> std::path::PathBuf {
    let object = field(c, id, "object_key");
    let folder = Path::new(&object).parent().unwrap().to_str().unwrap().to_string();
    let m = data::manifest(store, &folder, field(c, id, "attempts").parse().unwrap()).unwrap();
    data::materialise(store, &m, work).unwrap()
}

/// `pg_restore --list`: the archive's table of contents.
fn toc(c: &Cluster, path: &Path) -> String {
    let out = Command::new(c.program("pg_restore")).arg("--list").arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Whether the TOC has an entry of `kind` (`TABLE`, `TABLE DATA`, `SCHEMA`)
/// for `schema` and `name` (as pg_restore prints them: unquoted).
fn has(toc: &str, kind: &str, schema: &str, name: &str) -> bool {
    let want = format!(" {kind} {schema} {name} ");
    toc.lines().filter(|l| !l.starts_with(';')).any(|l| l.contains(&want))
}

fn count(c: &Cluster, db: &str, table: &str) -> String {
    c.sql(db, &format!("SELECT count(*) FROM {table}")).unwrap()
}

#[test]
fn excluded_table_data_and_schemas_are_left_out_and_everything_else_restores() {
    let TestEnv { c, store, agent, .. } = TestEnv::new().db("shop", &format!("{SHOP}{EXTRA}")).start();
    // Unquoted names are lower-cased (ORDERS is orders); quoted ones keep
    // their case, quotes, spaces, % and #; * is a wildcard.
    let id = c
        .sql(
            "postgres",
            r#"SELECT backups.capture('shop',
                   exclude_table_data => ARRAY['ORDERS', 'public."Order''s #1%"', 'hidden.sec*'],
                   exclude_schemas => ARRAY['scratch', '"Ünïcode Schema"'])"#,
        )
        .unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    // info() shows what was left out.
    let options =
        c.sql("postgres", &format!("SELECT value FROM backups.info('{id}') WHERE field = 'options'")).unwrap();
    assert!(options.contains(r#""exclude_schemas": ["scratch", "\"Ünïcode Schema\""]"#), "{options}");
    assert!(
        options.contains(r#""exclude_table_data": ["ORDERS", "public.\"Order's #1%\"", "hidden.sec*"]"#),
        "{options}"
    );

    let work = tempfile::tempdir().unwrap();
    let path = archive(&c, store.path(), &id, work.path());
    let list = toc(&c, &path);
    // Excluded data: the table is there, its rows are not.
    for (schema, table) in [("public", "orders"), ("public", "Order's #1%"), ("hidden", "secret")] {
        assert!(has(&list, "TABLE", schema, table), "{schema}.{table} missing:\n{list}");
        assert!(!has(&list, "TABLE DATA", schema, table), "{schema}.{table} data present:\n{list}");
    }
    // Excluded schemas: nothing of them at all.
    for schema in ["scratch", "Ünïcode Schema"] {
        assert!(!list.lines().any(|l| !l.starts_with(';') && l.contains(&format!(" {schema} "))), "{schema}:\n{list}");
    }
    // Everything else, data included.
    for (schema, table) in [("public", "customers"), ("public", "blobs"), ("public", "Kept Too")] {
        assert!(has(&list, "TABLE DATA", schema, table), "{schema}.{table} data missing:\n{list}");
    }
    assert!(has(&list, "SEQUENCE SET", "public", "orders_id_seq"), "{list}");

    // And restored with the standard pg_restore.
    c.sql("postgres", "CREATE DATABASE shop_back").unwrap();
    data::pg_restore(&c, "shop_back", &path).unwrap();
    assert_eq!(count(&c, "shop_back", "orders"), "0");
    assert_eq!(count(&c, "shop_back", r#"public."Order's #1%""#), "0");
    assert_eq!(count(&c, "shop_back", "hidden.secret"), "0");
    assert_eq!(count(&c, "shop_back", "customers"), "5000");
    assert_eq!(count(&c, "shop_back", "blobs"), "500");
    assert_eq!(count(&c, "shop_back", r#"public."Kept Too""#), "3");
    assert_eq!(
        c.sql("shop_back", "SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname IN ('scratch', 'Ünïcode Schema', 'hidden')")
            .unwrap(),
        "hidden"
    );
    assert_eq!(c.sql("shop_back", "SELECT last_value FROM orders_id_seq").unwrap(), "123456");
}

#[test]
fn malformed_patterns_are_refused_before_anything_is_queued() {
    let (c, _store) = TestEnv::new().db("shop", SHOP).without_agent();
    for (args, want) in [
        ("exclude_table_data => ARRAY['--format=plain']", "starts with -"),
        ("exclude_schemas => ARRAY['-n']", "starts with -"),
        ("exclude_table_data => ARRAY['orders --format=plain']", "holds a space outside double quotes"),
        ("exclude_table_data => ARRAY[NULL]", "invalid exclude_table_data pattern: NULL"),
        ("exclude_table_data => ARRAY['']", "an empty pattern"),
        ("exclude_table_data => ARRAY[E'orders\\n--format=plain']", "control character"),
        ("exclude_table_data => ARRAY['\"orders']", "unterminated double quote"),
        ("exclude_table_data => ARRAY['shop.public.orders']", "too many dotted names"),
        ("exclude_table_data => ARRAY['public.']", "empty name"),
        ("exclude_schemas => ARRAY['public.orders']", "is not a schema name"),
        ("exclude_table_data => ARRAY['orders(']", "invalid regular expression"),
    ] {
        let sql = format!("SELECT backups.capture('shop', {args})");
        let e = format!("{:#}", c.sql("postgres", &sql).expect_err(&sql));
        assert!(e.contains(want), "{sql}: {e}");
        assert!(e.contains("HINT"), "{sql}: {e}");
    }
    // Capturing the database it runs in, capture() looks the names up itself.
    let e = format!(
        "{:#}",
        c.sql("postgres", "SELECT backups.capture(exclude_table_data => ARRAY['no_such_table', 'backups.transfers'], exclude_schemas => ARRAY['\"Backups\"'])")
            .unwrap_err()
    );
    assert!(e.contains("exclude_table_data matches nothing in database \"postgres\": 'no_such_table'"), "{e}");
    assert_eq!(c.sql("postgres", "SELECT count(*) FROM backups.transfers").unwrap(), "0");
    // What does match is accepted.
    c.sql(
        "postgres",
        "SELECT backups.capture(exclude_table_data => ARRAY['backups.transfer*'], exclude_schemas => ARRAY['public'])",
    )
    .unwrap();
}

#[test]
fn a_pattern_that_matches_nothing_fails_the_capture_and_names_it() {
    let TestEnv { c, store, agent, .. } = TestEnv::new().db("shop", &format!("{SHOP}{EXTRA}")).start();
    // A typo; "Scratch" quoted keeps its capital and so is not scratch; and
    // secret, unqualified, is looked up on the search_path, which hidden is
    // not on (pg_dump would match nothing either). orders does match.
    let id = c
        .sql(
            "postgres",
            r#"SELECT backups.capture('shop', exclude_table_data => ARRAY['orders', 'ordres', 'secret'],
                                      exclude_schemas => ARRAY['"Scratch"'])"#,
        )
        .unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "failed", "{}", agent.log_text());
    let error = field(&c, &id, "error");
    assert!(
        error.contains(r#"nothing in the source database matches exclude_table_data 'ordres', exclude_table_data 'secret', exclude_schemas '"Scratch"'"#),
        "{error}"
    );
    assert!(!error.contains("'orders'"), "{error}");
    assert!(files(&store.path().join(data::home(&c)).join("shop")).is_empty(), "a failed capture left objects");
    // Qualified, it matches; a parallel capture takes the same arguments.
    let id = c
        .sql("postgres", "SELECT backups.capture('shop', jobs => 2, exclude_table_data => ARRAY['hidden.secret'])")
        .unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    let work = tempfile::tempdir().unwrap();
    let list = toc(&c, &archive(&c, store.path(), &id, work.path()));
    assert!(has(&list, "TABLE", "hidden", "secret") && !has(&list, "TABLE DATA", "hidden", "secret"), "{list}");
    assert!(has(&list, "TABLE DATA", "public", "orders"), "{list}");
}

#[test]
fn a_backups_users_selective_capture_dumps_with_the_owners_rights() {
    let c = Cluster::start().unwrap();
    c.sql("postgres", "CREATE ROLE alice LOGIN IN ROLE backups_user").unwrap();
    c.sql("postgres", "CREATE DATABASE alicedb OWNER alice").unwrap();
    // alice's tables, and a schema in her database she may not use.
    let out = Command::new(c.program("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &c.port.to_string(), "-U", "alice"])
        .args(["-d", "alicedb", "-c", "CREATE TABLE notes AS SELECT g FROM generate_series(1, 9) g; CREATE TABLE logs AS SELECT g FROM generate_series(1, 9) g"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.sql("alicedb", "CREATE SCHEMA private; CREATE TABLE private.admin_only AS SELECT 1 AS x").unwrap();
    let store = tempfile::tempdir().unwrap();
    let agent = Agent::start(&c.url("postgres"), &store_url(store.path()), &[], &[]).unwrap();
    let as_alice = |sql: &str| {
        let out = Command::new(c.program("psql"))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &c.port.to_string(), "-U", "alice"])
            .args(["-d", "postgres", "-c", sql])
            .output()
            .unwrap();
        (String::from_utf8_lossy(&out.stdout).trim().to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    // With the owner's rights, the private schema cannot be read: leaving
    // it out is what lets alice back up the rest.
    let (id, err) = as_alice(
        "SELECT backups.capture('alicedb', exclude_table_data => ARRAY['logs'], exclude_schemas => ARRAY['private'])",
    );
    assert!(err.is_empty(), "{err}");
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    let (info, _) = as_alice(&format!("SELECT string_agg(field || ': ' || value, E'\\n') FROM backups.info('{id}')"));
    assert!(info.contains("dumping with the rights of the database's owner, alice"), "{info}");
    assert!(info.contains(r#""role": "alice""#), "{info}");
    let work = tempfile::tempdir().unwrap();
    let list = toc(&c, &archive(&c, store.path(), &id, work.path()));
    assert!(has(&list, "TABLE DATA", "public", "notes"), "{list}");
    assert!(!has(&list, "TABLE DATA", "public", "logs") && has(&list, "TABLE", "public", "logs"), "{list}");
    assert!(!list.contains("admin_only"), "{list}");
    // The same capture without the schema left out fails on permissions:
    // the owner's rights, not the agent's (a superuser's), were used.
    let (id, _) = as_alice("SELECT backups.capture('alicedb', exclude_table_data => ARRAY['logs'])");
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "failed");
    assert!(field(&c, &id, "error").contains("permission denied"), "{}", field(&c, &id, "error"));
}

#[test]
fn excluding_a_partitioned_or_inherited_tables_data_covers_its_children_or_fails() {
    // pg_dump's --exclude-table-data leaves out the rows of the matched
    // relation only: a partitioned table has none, its partitions hold them,
    // and an inheritance parent's children keep theirs. Naming the parent
    // alone must not quietly dump the rows meant to be left out.
    let c = Cluster::start().unwrap();
    let sql = "CREATE TABLE m (id int, secret text) PARTITION BY RANGE (id);
               CREATE TABLE m_low PARTITION OF m FOR VALUES FROM (0) TO (100) PARTITION BY RANGE (id);
               CREATE TABLE part_a PARTITION OF m_low FOR VALUES FROM (0) TO (50);
               INSERT INTO m VALUES (1, 'secret');
               CREATE TABLE parent (secret text);
               CREATE TABLE kid () INHERITS (parent);
               INSERT INTO kid VALUES ('secret');";
    create_db(&c, "shop", &format!("{SHOP}{sql}")).unwrap();
    let store = tempfile::tempdir().unwrap();
    let agent = Agent::start(&c.url("postgres"), &store_url(store.path()), &[], &[]).unwrap();
    let id = c.sql("postgres", "SELECT backups.capture('shop', exclude_table_data => ARRAY['m', 'parent'])").unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "failed", "{}", agent.log_text());
    let error = field(&c, &id, "error");
    assert!(error.contains("pg_dump would still dump the rows of public.kid, public.part_a"), "{error}");
    assert!(files(&store.path().join(data::home(&c)).join("shop")).is_empty(), "a failed capture left objects");
    // Named too (directly, or by a wildcard), their rows are left out.
    let id = c
        .sql(
            "postgres",
            "SELECT backups.capture('shop', exclude_table_data => ARRAY['m', 'm_low', 'part_*', 'parent', 'kid'])",
        )
        .unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    let work = tempfile::tempdir().unwrap();
    let list = toc(&c, &archive(&c, store.path(), &id, work.path()));
    assert!(has(&list, "TABLE", "public", "part_a") && !has(&list, "TABLE DATA", "public", "part_a"), "{list}");
    assert!(has(&list, "TABLE", "public", "kid") && !has(&list, "TABLE DATA", "public", "kid"), "{list}");
    assert!(has(&list, "TABLE DATA", "public", "orders"), "{list}");
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    pgbackups_e2e::os::files_under(dir)
}

#[test]
fn a_database_search_path_cannot_hijack_the_pattern_check() {
    // The check's session keeps the database's own search_path (pg_dump
    // resolves unqualified table patterns with it), so the owner's
    // functions and operators must never stand in for pg_catalog's there.
    let c = Cluster::start().unwrap();
    c.sql("postgres", "CREATE ROLE alice LOGIN IN ROLE backups_user").unwrap();
    c.sql("postgres", "CREATE DATABASE alicedb OWNER alice").unwrap();
    let promote = "BEGIN EXECUTE 'ALTER ROLE alice SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;";
    let sql = format!(
        "CREATE SCHEMA evil;
         CREATE FUNCTION evil.pg_table_is_visible(oid) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN {promote} RETURN true; END $$;
         CREATE FUNCTION evil.m(name, text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN {promote} RETURN true; END $$;
         CREATE OPERATOR evil.~ (LEFTARG = name, RIGHTARG = text, FUNCTION = evil.m);
         CREATE TABLE t AS SELECT generate_series(1, 10) AS x;
         CREATE TABLE u AS SELECT generate_series(1, 10) AS x;
         ALTER DATABASE alicedb SET search_path = evil, pg_catalog, public;"
    );
    let out = Command::new(c.program("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &c.port.to_string(), "-U", "alice"])
        .args(["-d", "alicedb", "-c", &sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let store = tempfile::tempdir().unwrap();
    let agent = Agent::start(&c.url("postgres"), &store_url(store.path()), &[], &[]).unwrap();
    // An admin's capture: the check runs with the agent's (superuser) rights.
    // A pattern that matches nothing must still be caught (the traps say
    // everything matches), and one that does must go through.
    let bad = c.sql("postgres", "SELECT backups.capture('alicedb', exclude_table_data => ARRAY['nope'])").unwrap();
    assert_eq!(wait(&c, &bad, PATIENCE).unwrap(), "failed", "{}", agent.log_text());
    assert!(field(&c, &bad, "error").contains("'nope'"), "{}", field(&c, &bad, "error"));
    let good = c.sql("postgres", "SELECT backups.capture('alicedb', exclude_table_data => ARRAY['t'])").unwrap();
    assert_eq!(wait(&c, &good, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    assert_eq!(
        c.sql("postgres", "SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'").unwrap(),
        "f",
        "the pattern check ran the owner's functions as the agent"
    );
    let work = tempfile::tempdir().unwrap();
    let list = toc(&c, &archive(&c, store.path(), &good, work.path()));
    assert!(!has(&list, "TABLE DATA", "public", "t") && has(&list, "TABLE DATA", "public", "u"), "{list}");
}
