//! Backups you can prove: a capture records every table's rows, bytes and
//! digest as it streams (`backups.contents()`), and `backups.verify()`
//! restores a backup into a scratch database, tallies it again and
//! compares. It passes on a good backup, fails naming the table when the
//! stored data or the manifest's digest was altered, fails on corrupt
//! bytes, runs after every scheduled capture when asked, and leaves no
//! scratch database behind.

use std::path::Path;
use std::time::Duration;

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{create_db, sha256_hex, wait, wait_for};
use pgbackups_e2e::env::{log_of, TestEnv};

const PATIENCE: Duration = Duration::from_secs(120);

/// Tables of many kinds and odd names: every one's count must match.
const RICH: &str = r#"
CREATE SCHEMA "Sales #1";
CREATE TABLE "Sales #1"."it's 100%" (id int PRIMARY KEY, "Note" text, t timestamptz, f float8, i interval, b bytea,
                                     a int[], u text);
INSERT INTO "Sales #1"."it's 100%"
SELECT g, CASE WHEN g % 5 = 0 THEN NULL ELSE E'tab\there\nnew line \\ back' || g END,
       timestamptz '2026-03-01 12:00+02' + g * interval '17 minutes', g / 3.0, g * interval '1 hour 3 sec',
       decode(lpad(to_hex(g), 8, '0') || '00ff', 'hex'), ARRAY[g, -g], 'ünïcødé ✓ ' || g
FROM generate_series(1, 30000) g;
CREATE TABLE plain (x int, dropped int, y text);
ALTER TABLE plain DROP COLUMN dropped;
INSERT INTO plain SELECT g, repeat('y', g % 300) FROM generate_series(1, 70000) g;
CREATE TABLE gen (a int, b int GENERATED ALWAYS AS (a * 2) STORED);
INSERT INTO gen (a) SELECT generate_series(1, 1000);
CREATE TABLE measures (at date NOT NULL, v int) PARTITION BY RANGE (at);
CREATE TABLE measures_2025 PARTITION OF measures FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measures_2026 PARTITION OF measures FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO measures SELECT date '2025-06-01' + g % 400, g FROM generate_series(1, 5000) g;
CREATE TABLE parent (id int);
CREATE TABLE child (extra text) INHERITS (parent);
INSERT INTO parent SELECT generate_series(1, 10);
INSERT INTO child SELECT g, 'c' FROM generate_series(1, 20) g;
CREATE TABLE nothing_at_all ();
INSERT INTO nothing_at_all DEFAULT VALUES;
INSERT INTO nothing_at_all DEFAULT VALUES;
CREATE TABLE "UPPER" (v text);
INSERT INTO "UPPER" VALUES ('\.'), ('.'), (E'\\.'), ('');
CREATE TABLE empty_one (id int);
"#;

fn setup() -> TestEnv {
    TestEnv::new().db("rich", RICH).start()
}

fn run(c: &Cluster, agent: &Agent, sql: &str) -> (String, String) {
    let id = c.sql("postgres", sql).unwrap();
    let status = wait(c, &id, PATIENCE).unwrap();
    let _ = agent;
    (id, status)
}

/// Every user table of `db` with its count(*), `schema|table|n` sorted.
fn counts(c: &Cluster, db: &str) -> Vec<String> {
    let tables = c
        .sql(
            db,
            "SELECT string_agg(format('%I.%I', n.nspname, c.relname) || '|' || n.nspname || '|' || c.relname, E'\\n' ORDER BY 1)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
        )
        .unwrap();
    let mut out = Vec::new();
    for line in tables.lines() {
        let mut p = line.splitn(3, '|');
        let (q, s, t) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        let n = c.sql(db, &format!("SELECT count(*) FROM ONLY {q}")).unwrap();
        out.push(format!("{s}|{t}|{n}"));
    }
    out.sort();
    out
}

fn contents(c: &Cluster, id: &str) -> Vec<String> {
    let text = c
        .sql("postgres", &format!("SELECT string_agg(schema_name || '|' || table_name || '|' || rows, E'\\n') FROM backups.contents('{id}')"))
        .unwrap();
    let mut out: Vec<String> = text.lines().map(str::to_string).collect();
    out.sort();
    out
}

fn no_scratch_left(c: &Cluster) {
    wait_for(
        c,
        "SELECT (SELECT count(*) FROM pg_database WHERE datname LIKE 'pgbackups%')
              + (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgbackups\\_verify%')",
        "0",
        Duration::from_secs(20),
    )
    .unwrap();
}

/// The stored dump of custom-format backup `id`, decompressed.
fn stored_dump(store: &Path, id: &str) -> (std::path::PathBuf, Vec<u8>) {
    let path = store.join("rich").join(id).join("backup.dump.zst");
    let bytes = zstd::decode_all(&std::fs::read(&path).unwrap()[..]).unwrap();
    (path, bytes)
}

#[test]
fn contents_match_every_table_and_a_good_backup_verifies() {
    let TestEnv { c, store: _store, agent, .. } = setup();
    let expected = counts(&c, "rich");
    assert!(expected.len() >= 10, "{expected:?}");
    for args in ["'rich'", "'rich', jobs => 2"] {
        let (b, status) = run(&c, &agent, &format!("SELECT backups.capture({args})"));
        assert_eq!(status, "completed", "{}", log_of(&c, &b));
        assert_eq!(contents(&c, &b), expected, "contents of {b} ({args})");
        let (v, status) = run(&c, &agent, &format!("SELECT backups.verify('{b}')"));
        assert!(v.starts_with('v'), "{v}");
        assert_eq!(status, "completed", "{}\n{}", log_of(&c, &v), agent.log_text());
        assert!(log_of(&c, &v).contains("verified:"), "{}", log_of(&c, &v));
        let listed = c.sql("postgres", &format!("SELECT verified FROM backups.list() WHERE id = '{b}'")).unwrap();
        assert!(listed.starts_with("passed") && listed.ends_with(&format!("({v})")), "{listed}");
        no_scratch_left(&c);
    }
    // The source was not touched.
    assert_eq!(counts(&c, "rich"), expected);
}

#[test]
fn verify_fails_naming_the_table_when_data_or_manifest_was_altered() {
    let TestEnv { c, store, agent, .. } = setup();
    let (b, status) = run(&c, &agent, "SELECT backups.capture('rich')");
    assert_eq!(status, "completed", "{}", log_of(&c, &b));

    // 1. The manifest's digest of one table altered (a custom-format
    // backup's checksum covers its dump, not its manifest): the manifest's
    // own checksum no longer matches.
    let manifest_path = store.path().join(pgbackups_e2e::data::home(&c)).join("rich").join(&b).join("manifest.json");
    let original = std::fs::read(&manifest_path).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let tables = m["contents"]["tables"].as_array_mut().unwrap();
    let t = tables.iter_mut().find(|t| t["table"] == "plain").unwrap();
    t["digest"] = serde_json::json!("0123456789abcdef");
    std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
    let (v, status) = run(&c, &agent, &format!("SELECT backups.verify('{b}')"));
    assert_eq!(status, "failed", "{}", log_of(&c, &v));
    let error = c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{v}'")).unwrap();
    assert!(error.contains("does not match its own checksum") && error.contains("altered"), "{error}");
    no_scratch_left(&c);
    // And with its checksum made to match, as whoever can write storage
    // could: what the control database recorded still tells.
    std::fs::write(&manifest_path, pgbackups_e2e::data::reseal(&mut m)).unwrap();
    let (v, status) = run(&c, &agent, &format!("SELECT backups.verify('{b}')"));
    assert_eq!(status, "failed", "{}", log_of(&c, &v));
    let error = c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{v}'")).unwrap();
    assert!(error.contains("public.plain: expected 70000 rows") && error.contains("1 of its"), "{error}");
    // And the manifest no longer says what the control database recorded.
    assert!(
        error.contains("manifest.json disagrees") && error.contains("manifest.json: public.plain: 70000 rows"),
        "{error}"
    );
    assert!(log_of(&c, &v).contains("ERROR: public.plain"), "{}", log_of(&c, &v));
    let listed = c.sql("postgres", &format!("SELECT verified FROM backups.list() WHERE id = '{b}'")).unwrap();
    assert!(listed.starts_with("failed"), "{listed}");
    no_scratch_left(&c);
    std::fs::write(&manifest_path, &original).unwrap();

    // 2. The stored data altered consistently: one value changed, the
    // object recompressed and its checksum recorded anew, so that only
    // the comparison of contents can tell.
    let (path, mut dump) = stored_dump(&store.path().join(pgbackups_e2e::data::home(&c)), &b);
    let needle = "ünïcødé ✓ 12345\n".as_bytes();
    let at = dump.windows(needle.len()).position(|w| w == needle).expect("the row is in the dump");
    dump[at + needle.len() - 2] = b'6';
    let altered = zstd::encode_all(&dump[..], 3).unwrap();
    std::fs::write(&path, &altered).unwrap();
    c.sql(
        "postgres",
        &format!("UPDATE backups.transfers SET checksum = '{}' WHERE name = '{b}'", sha256_hex(&altered)),
    )
    .unwrap();
    let (v, status) = run(&c, &agent, &format!("SELECT backups.verify('{b}')"));
    assert_eq!(status, "failed", "{}", log_of(&c, &v));
    let error = c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{v}'")).unwrap();
    assert!(error.contains("Sales #1.it's 100%: expected 30000 rows"), "{error}");
    assert!(!error.contains("public.plain"), "only the altered table differs: {error}");
    no_scratch_left(&c);

    // 3. Bytes corrupted in storage: the checksum catches it, nothing is
    // compared, and the scratch database still goes.
    let mut raw = std::fs::read(&path).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0xff;
    std::fs::write(&path, &raw).unwrap();
    let (v, status) = run(&c, &agent, &format!("SELECT backups.verify('{b}')"));
    assert_eq!(status, "failed", "{}", log_of(&c, &v));
    assert!(log_of(&c, &v).contains("does not restore"), "{}", log_of(&c, &v));
    no_scratch_left(&c);
}

#[test]
fn a_backup_without_contents_still_proves_it_restores() {
    let TestEnv { c, store, agent, .. } = setup();
    let (b, status) = run(&c, &agent, "SELECT backups.capture('rich')");
    assert_eq!(status, "completed");
    // As a backup taken before contents were recorded.
    let manifest_path = store.path().join(pgbackups_e2e::data::home(&c)).join("rich").join(&b).join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("contents");
    std::fs::write(&manifest_path, pgbackups_e2e::data::reseal(&mut m)).unwrap();
    c.sql("postgres", &format!("UPDATE backups.transfers SET contents = NULL WHERE name = '{b}'")).unwrap();
    let (v, status) = run(&c, &agent, &format!("SELECT backups.verify('{b}')"));
    assert_eq!(status, "completed", "{}", log_of(&c, &v));
    assert!(log_of(&c, &v).contains("nothing to compare"), "{}", log_of(&c, &v));
    no_scratch_left(&c);
}

#[test]
fn a_schedule_with_verify_verifies_each_capture() {
    let TestEnv { c, store: _store, agent, .. } = setup();
    c.sql("postgres", "SELECT backups.schedule('daily 03:00', 'rich', verify => true)").unwrap();
    assert_eq!(c.sql("postgres", "SELECT verify FROM backups.schedules() WHERE database = 'rich'").unwrap(), "t");
    c.sql("postgres", "UPDATE backups.schedules SET next_run_at = now()").unwrap();
    wait_for(&c, "SELECT count(*) FROM backups.transfers WHERE kind = 'verify'", "1", PATIENCE).unwrap();
    let v = c.sql("postgres", "SELECT name FROM backups.transfers WHERE kind = 'verify'").unwrap();
    assert_eq!(wait(&c, &v, PATIENCE).unwrap(), "completed", "{}\n{}", log_of(&c, &v), agent.log_text());
    let a = c.sql("postgres", "SELECT name FROM backups.transfers WHERE kind = 'capture'").unwrap();
    assert!(a.starts_with('a'), "{a}");
    assert_eq!(c.sql("postgres", &format!("SELECT source FROM backups.transfers WHERE name = '{v}'")).unwrap(), a);
    no_scratch_left(&c);
}

#[test]
fn an_agent_without_superuser_verifies_and_leaves_nothing() {
    let c = Cluster::start().unwrap();
    // The agent's data role reads everything and may create databases and
    // roles, as a restore needs; it is no superuser.
    c.sql("postgres", "CREATE ROLE verifier LOGIN CREATEDB CREATEROLE IN ROLE pg_read_all_data").unwrap();
    create_db(&c, "rich", RICH).unwrap();
    let store = tempfile::tempdir().unwrap();
    let data = format!("postgres://verifier@127.0.0.1:{}/postgres", c.port);
    let agent =
        Agent::start(&c.url("postgres"), &format!("file://{}", store.path().display()), &["--data-url", &data], &[])
            .unwrap();
    let (b, status) = run(&c, &agent, "SELECT backups.capture('rich')");
    assert_eq!(status, "completed", "{}", log_of(&c, &b));
    let (v, status) = run(&c, &agent, &format!("SELECT backups.verify('{b}')"));
    assert_eq!(status, "completed", "{}\n{}", log_of(&c, &v), agent.log_text());
    no_scratch_left(&c);
    assert_eq!(c.sql("postgres", "SELECT rolsuper FROM pg_roles WHERE rolname = 'verifier'").unwrap(), "f");
}

/// What pg_dump does not pin (bytea_output, lc_monetary) but a database's
/// settings may change: verify reads back with what the capture had, so a
/// good backup of such a database verifies. And an admin's verification of
/// an admin's capture is not shown to the database's tenant, not even in
/// the capture's `verified` column or info().
#[test]
fn a_database_with_its_own_bytea_output_verifies_and_admin_verifications_stay_hidden() {
    let TestEnv { c, store: _store, agent, .. } = setup();
    create_db(
        &c,
        "escaped",
        "CREATE TABLE b (id int, v bytea);
         INSERT INTO b SELECT g, decode(lpad(to_hex(g), 8, '0') || '5c00ff', 'hex') FROM generate_series(1, 500) g;",
    )
    .unwrap();
    c.sql(
        "postgres",
        "ALTER DATABASE escaped SET bytea_output = 'escape';
         CREATE ROLE escaped_owner; ALTER DATABASE escaped OWNER TO escaped_owner;
         CREATE ROLE alice LOGIN IN ROLE backups_user, escaped_owner;",
    )
    .unwrap();
    let (b, status) = run(&c, &agent, "SELECT backups.capture('escaped')");
    assert_eq!(status, "completed", "{}", log_of(&c, &b));
    let (v, status) = run(&c, &agent, &format!("SELECT backups.verify('{b}')"));
    assert_eq!(status, "completed", "{}", log_of(&c, &v));
    no_scratch_left(&c);

    // A tenant of `escaped` sees the admin's capture, not its verification.
    let as_alice = |sql: &str| c.sql("postgres", &format!("SET SESSION AUTHORIZATION alice; {sql}")).unwrap();
    assert_eq!(as_alice(&format!("SELECT count(*) FROM backups.list() WHERE id = '{b}'")), "1");
    assert_eq!(
        as_alice(&format!("SELECT coalesce(verified, 'hidden') FROM backups.list() WHERE id = '{b}'")),
        "hidden"
    );
    assert_eq!(as_alice(&format!("SELECT count(*) FROM backups.info('{b}') WHERE field = 'verified'")), "0");
    assert_eq!(
        c.sql("postgres", &format!("SELECT verified LIKE 'passed%({v})' FROM backups.list() WHERE id = '{b}'"))
            .unwrap(),
        "t"
    );
}
