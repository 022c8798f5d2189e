//! Restores and copies end to end: backups.restore() of an id (custom and
//! parallel format) and backups.copy(), each into a target that already
//! holds other data, compared with the source row for row; a corrupted
//! object fails the restore before the target is touched.

use std::path::Path;
use std::time::Duration;

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{create_db, fingerprint, schema, wait, SHOP};
use pgbackups_e2e::env::{capture, TestEnv};

const PATIENCE: Duration = Duration::from_secs(90);
const OTHER_DATA: &str = "CREATE TABLE leftovers (x int); INSERT INTO leftovers VALUES (1), (2); CREATE SCHEMA extra; CREATE TABLE extra.t (y text)";

fn setup() -> TestEnv {
    TestEnv::new().db("shop", SHOP).db("staging", OTHER_DATA).start()
}

#[test]
fn restore_of_a_backup_replaces_the_target_with_exactly_its_content() {
    let TestEnv { c, store: _store, agent, .. } = setup();
    for args in ["'shop'", "'shop', jobs => 2"] {
        let b = capture(&c, args);
        c.sql(
            "staging",
            OTHER_DATA
                .replace("CREATE TABLE leftovers", "CREATE TABLE IF NOT EXISTS leftovers")
                .replace("CREATE SCHEMA extra", "CREATE SCHEMA IF NOT EXISTS extra")
                .replace("CREATE TABLE extra.t", "CREATE TABLE IF NOT EXISTS extra.t")
                .as_str(),
        )
        .unwrap();
        let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'staging', 'staging')")).unwrap();
        assert!(r.starts_with('r'));
        assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
        assert_eq!(fingerprint(&c, "staging").unwrap(), fingerprint(&c, "shop").unwrap(), "restore of {b}");
        assert_eq!(c.sql("staging", "SELECT count(*) FROM pg_namespace WHERE nspname = 'extra'").unwrap(), "0");
        // Views, constraints and indexes came along.
        assert_eq!(
            c.sql("staging", "SELECT count(*) FROM big_spenders").unwrap(),
            c.sql("shop", "SELECT count(*) FROM big_spenders").unwrap()
        );
        assert_eq!(c.sql("staging", "SELECT count(*) FROM pg_constraint WHERE contype = 'f'").unwrap(), "1");
        let log = c
            .sql("postgres", &format!("SELECT string_agg(value, E'\\n') FROM backups.info('{r}') WHERE field = 'log'"))
            .unwrap();
        // A custom-format backup is streamed into the restore as it is
        // verified; a directory-format one is staged first.
        let how = if args.contains("jobs") { "staged at" } else { "as it streamed" };
        assert!(log.contains("verified (sha256") && log.contains(how), "{log}");
    }
}

#[test]
fn copy_streams_one_database_into_another() {
    let TestEnv { c, store, agent, .. } = setup();
    let id = c.sql("postgres", "SELECT backups.copy('shop', 'staging', 'staging')").unwrap();
    assert_eq!(id, "c001");
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    assert_eq!(fingerprint(&c, "staging").unwrap(), fingerprint(&c, "shop").unwrap());
    assert_eq!(c.sql("staging", "SELECT count(*) FROM pg_tables WHERE tablename = 'leftovers'").unwrap(), "0");
    // Nothing went through storage.
    assert_eq!(std::fs::read_dir(store.path()).unwrap().count(), 0);
}

#[test]
fn a_corrupted_backup_fails_the_restore_before_the_target_is_touched() {
    let TestEnv { c, store, agent, .. } = setup();
    // In place too: the target is dropped only once the backup verified.
    for (args, in_place) in [("'shop'", false), ("'shop'", true), ("'shop', jobs => 2", false)] {
        let b = capture(&c, args);
        // Flip a byte in the middle of the biggest stored file.
        let folder = store.path().join(pgbackups_e2e::data::home(&c)).join("shop").join(&b);
        let victim = biggest_file(&folder);
        let mut bytes = std::fs::read(&victim).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&victim, bytes).unwrap();
        let before = fingerprint(&c, "staging").unwrap();
        let r = c
            .sql("postgres", &format!("SELECT backups.restore('{b}', 'staging', 'staging', in_place => {in_place})"))
            .unwrap();
        assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "failed", "{}", agent.log_text());
        let err = c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{r}'")).unwrap();
        assert!(err.contains("checksum mismatch") || err.contains("decompress"), "{err}");
        assert_eq!(fingerprint(&c, "staging").unwrap(), before, "the target was touched");
    }
}

#[test]
fn a_large_table_loaded_over_several_connections_restores_exactly() {
    let c = Cluster::start().unwrap();
    // COPY text that is hard to cut: escaped newlines, tabs and backslashes
    // in values, NULLs, long rows; a child table (whose COPY names its
    // columns); about 25 MB of COPY text.
    create_db(
        &c,
        "big",
        r"CREATE TABLE parent (id bigint, note text);
          CREATE TABLE wide (id bigint PRIMARY KEY, body text, tricky text) ;
          INSERT INTO wide SELECT g, repeat(md5(g::text), 1 + g % 40),
                 CASE WHEN g % 11 = 0 THEN NULL ELSE E'line\nbreak\ttab\\back' || g || E'\r' END
            FROM generate_series(1, 30000) g;
          ALTER TABLE parent ADD COLUMN extra int;
          CREATE TABLE child (flag boolean) INHERITS (parent);
          INSERT INTO child (flag, id, note, extra) SELECT g % 2 = 0, g, repeat('x', g % 300), g FROM generate_series(1, 40000) g;",
    )
    .unwrap();
    create_db(&c, "staging", OTHER_DATA).unwrap();
    let store = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &c.url("postgres"),
        &format!("file://{}", store.path().display()),
        &["--split-tables-larger-than", "262144"],
        &[],
    )
    .unwrap();
    let b = capture(&c, "'big'");
    let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'staging', 'staging')")).unwrap();
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    assert_eq!(fingerprint(&c, "staging").unwrap(), fingerprint(&c, "big").unwrap());
    assert_eq!(schema(&c, "staging").unwrap(), schema(&c, "big").unwrap());
    let log = c
        .sql("postgres", &format!("SELECT string_agg(value, E'\\n') FROM backups.info('{r}') WHERE field = 'log'"))
        .unwrap();
    if std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) > 1 {
        assert!(log.contains("public.wide passed") && log.contains("connections"), "not split:\n{log}");
        assert!(log.contains("public.child passed"), "not split:\n{log}");
    }
}

fn biggest_file(dir: &Path) -> std::path::PathBuf {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == "zst") {
                files.push((e.metadata().unwrap().len(), e.path()));
            }
        }
    }
    files.sort();
    files.pop().unwrap().1
}
