//! Restores and copies end to end: backups.restore() of an id (custom and
//! parallel format) and backups.copy(), each into a target that already
//! holds other data, compared with the source row for row; a corrupted
//! object fails the restore before the target is touched.

use std::path::Path;
use std::time::Duration;

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{create_db, fingerprint, wait, SHOP};

const PATIENCE: Duration = Duration::from_secs(90);
const OTHER_DATA: &str = "CREATE TABLE leftovers (x int); INSERT INTO leftovers VALUES (1), (2); CREATE SCHEMA extra; CREATE TABLE extra.t (y text)";

fn setup() -> (Cluster, tempfile::TempDir, Agent) {
    let c = Cluster::start().unwrap();
    create_db(&c, "shop", SHOP).unwrap();
    create_db(&c, "staging", OTHER_DATA).unwrap();
    let store = tempfile::tempdir().unwrap();
    let agent = Agent::start(&c.url("postgres"), &format!("file://{}", store.path().display()), &[], &[]).unwrap();
    (c, store, agent)
}

fn capture(c: &Cluster, args: &str) -> String {
    let id = c.sql("postgres", &format!("SELECT backups.capture({args})")).unwrap();
    assert_eq!(wait(c, &id, PATIENCE).unwrap(), "completed");
    id
}

#[test]
fn restore_of_a_backup_replaces_the_target_with_exactly_its_content() {
    let (c, _store, agent) = setup();
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
        assert!(log.contains("verified (sha256") && log.contains("staged at"), "{log}");
    }
}

#[test]
fn copy_streams_one_database_into_another() {
    let (c, store, agent) = setup();
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
    let (c, store, agent) = setup();
    for args in ["'shop'", "'shop', jobs => 2"] {
        let b = capture(&c, args);
        // Flip a byte in the middle of the biggest stored file.
        let folder = store.path().join("shop").join(&b);
        let victim = biggest_file(&folder);
        let mut bytes = std::fs::read(&victim).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&victim, bytes).unwrap();
        let before = fingerprint(&c, "staging").unwrap();
        let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'staging', 'staging')")).unwrap();
        assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "failed", "{}", agent.log_text());
        let err = c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{r}'")).unwrap();
        assert!(err.contains("checksum mismatch") || err.contains("decompress"), "{err}");
        assert_eq!(fingerprint(&c, "staging").unwrap(), before, "the target was touched");
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
