//! Copy exactness: the parallel COPY streams carry every value unchanged,
//! whatever the source database's session settings (DateStyle,
//! IntervalStyle, extra_float_digits, TimeZone, client_encoding set with
//! ALTER DATABASE), whatever the column order pg_dump gives the target
//! (an inheritance child whose parent gained columns, dropped columns),
//! past generated columns, and when a table is split into ctid ranges
//! read by several streams.

use std::time::Duration;

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{assert_same_database, wait};
use pgbackups_e2e::env::TestEnv;

const PATIENCE: Duration = Duration::from_secs(180);

/// Rows of every kind whose text form depends on the session: non-ASCII
/// text with tabs and backslashes, intervals of mixed and all-negative
/// signs, floats that need 17 digits (and a subnormal), dates whose day
/// and month swap under DMY, instants (shown with a zone abbreviation under
/// DateStyle SQL), and NULLs. About 3 MB for 20,000 rows: above the 1 MiB
/// that sends a table through the parallel COPY streams.
const VALUES: &str = r"
SELECT g AS id,
       CASE WHEN g % 11 = 0 THEN NULL ELSE 'é ß ü ' || md5(g::text) || E'\t\\x' || repeat('-', g % 40) END AS t,
       interval '-1 day -2 hours' * (g % 5) + interval '1 month 3 minutes' * (g % 3 - 1) AS iv,
       CASE WHEN g % 10 = 0 THEN 1e-310::float8 ELSE 0.1::float8 * g + 0.2::float8 END AS f,
       date '2000-01-01' + g % 10000 AS d,
       timestamptz '2020-01-01 00:00:00.123456+00' + g * interval '17 minutes 3.5 seconds' AS ts
  FROM generate_series(1, 20000) g";

/// What the source database's sessions get unless a session sets its
/// own: without pinning, COPY TO writes days first, intervals with one
/// leading sign, floats rounded to 15 digits, instants with an ambiguous
/// abbreviation (IST), text in LATIN1.
const SOURCE_SETTINGS: &str = "
ALTER DATABASE src SET DateStyle = 'SQL, DMY';
ALTER DATABASE src SET IntervalStyle = 'sql_standard';
ALTER DATABASE src SET extra_float_digits = 0;
ALTER DATABASE src SET TimeZone = 'Asia/Kolkata';
ALTER DATABASE src SET client_encoding = 'LATIN1'";

fn setup(schema: &str, agent_args: &[&str]) -> TestEnv {
    let env = TestEnv::new().db("src", schema).db("dst", "").args(agent_args).start();
    env.c.sql("src", "VACUUM ANALYZE").unwrap();
    env
}

/// `backups.copy('src', 'dst')`, completed without warnings; its log.
fn copy(c: &Cluster, agent: &Agent) -> String {
    let id = c.sql("postgres", "SELECT backups.copy('src', 'dst', 'dst')").unwrap();
    assert_eq!(wait(c, &id, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    assert_eq!(c.sql("postgres", &format!("SELECT warnings FROM backups.transfers WHERE name = '{id}'")).unwrap(), "0");
    c.sql(
        "postgres",
        &format!(
            "SELECT string_agg(l.message, E'\\n' ORDER BY l.id) FROM backups.transfer_logs l
               JOIN backups.transfers t ON t.id = l.transfer_id WHERE t.name = '{id}'"
        ),
    )
    .unwrap()
}

/// Row count and a hash of `table`'s own rows (not its children's), its
/// columns named (so that column order does not matter) and shown with
/// fixed settings (so that the database's own do not either).
fn checksum(c: &Cluster, db: &str, table: &str, columns: &str) -> String {
    c.sql(
        db,
        &format!(
            "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3; SET TimeZone = 'UTC';
             SELECT count(*) || ' ' || md5(string_agg(row({columns})::text, E'\\n' ORDER BY id)) FROM ONLY {table}"
        ),
    )
    .unwrap()
}

fn assert_same_rows(c: &Cluster, table: &str, columns: &str) {
    let (a, b) = (checksum(c, "src", table, columns), checksum(c, "dst", table, columns));
    assert!(a.starts_with(|d: char| d.is_ascii_digit()) && !a.starts_with("0 "), "{table} is empty: {a}");
    assert_eq!(a, b, "{table}: the copy's rows differ from the source's");
}

fn assert_streamed(log: &str, table: &str) {
    assert!(log.contains(&format!("copying table {table}")), "{table} did not go through a COPY stream:\n{log}");
}

#[test]
fn the_source_databases_session_settings_do_not_change_copied_values() {
    let TestEnv { c, store: _store, agent, .. } = setup(&format!("CREATE TABLE vals AS {VALUES}"), &[]);
    c.sql("postgres", SOURCE_SETTINGS).unwrap();
    let log = copy(&c, &agent);
    assert_streamed(&log, "public.vals");
    assert_same_rows(&c, "vals", "id, t, iv, f, d, ts");
}

#[test]
fn an_inheritance_child_with_shifted_and_dropped_columns_copies_exactly() {
    // The child's columns are (id, t, gone, d, iv, f, ts, label) with `gone`
    // dropped; pg_dump recreates it as (id, t, iv, f, tag, d, ts, label):
    // the parent's columns first.
    let schema = format!(
        "CREATE TABLE parent (id int, t text);
         CREATE TABLE child (gone int, d date) INHERITS (parent);
         ALTER TABLE parent ADD COLUMN iv interval, ADD COLUMN f float8, ADD COLUMN tag text;
         ALTER TABLE child DROP COLUMN gone, ADD COLUMN ts timestamptz, ADD COLUMN label text;
         INSERT INTO child (id, t, iv, f, d, ts, tag, label)
           SELECT id, t, iv, f, d, ts, 'tag ' || id, 'label ' || id FROM ({VALUES}) v;
         INSERT INTO parent (id, t, tag) VALUES (0, 'the parent''s own row', 'p')"
    );
    let TestEnv { c, store: _store, agent, .. } = setup(&schema, &[]);
    c.sql("postgres", SOURCE_SETTINGS).unwrap();
    let log = copy(&c, &agent);
    assert_streamed(&log, "public.child");
    assert_same_rows(&c, "child", "id, t, iv, f, tag, d, ts, label");
    assert_same_rows(&c, "parent", "id, t, iv, f, tag");
}

#[test]
fn generated_columns_are_recomputed_by_the_target_not_copied() {
    let schema = format!(
        "CREATE TABLE gen (id int, twice bigint GENERATED ALWAYS AS (id * 2) STORED, gone int, t text,
                           n int GENERATED ALWAYS AS (length(t)) STORED, f float8);
         ALTER TABLE gen DROP COLUMN gone;
         INSERT INTO gen (id, t, f) SELECT id, t, f FROM ({VALUES}) v"
    );
    let TestEnv { c, store: _store, agent, .. } = setup(&schema, &[]);
    let log = copy(&c, &agent);
    assert_streamed(&log, "public.gen");
    assert_same_rows(&c, "gen", "id, twice, t, n, f");
}

#[test]
fn a_table_split_into_ctid_ranges_copies_exactly() {
    // ~5 MB, scattered by an update (new row versions land in later
    // blocks), with an inheritance child whose rows must not be read with
    // the parent's.
    let schema = format!(
        "CREATE TABLE big (id int PRIMARY KEY, t text, iv interval, f float8, d date, ts timestamptz);
         INSERT INTO big {VALUES};
         INSERT INTO big SELECT id + 20000, t, iv, f, d, ts FROM ({VALUES}) v;
         UPDATE big SET t = t || ' updated' WHERE id % 3 = 0;
         CREATE TABLE big_kid (extra text) INHERITS (big);
         INSERT INTO big_kid SELECT id + 100000, t, iv, f, d, ts, 'kid' FROM ({VALUES}) v"
    );
    // 256 KiB: big is cut into several parts.
    let TestEnv { c, store: _store, agent, .. } = setup(&schema, &["--split-tables-larger-than", "262144"]);
    let log = copy(&c, &agent);
    assert!(log.contains("splitting public.big"), "big was not split:\n{log}");
    let parts = log.lines().filter(|l| l.starts_with("copying table public.big part")).count();
    assert!(parts > 2, "big was copied in {parts} parts:\n{log}");
    assert_same_rows(&c, "big", "id, t, iv, f, d, ts");
    assert_same_rows(&c, "big_kid", "id, t, iv, f, d, ts, extra");
    assert_same_database(&c, "src", "dst", "split copy");
}
