//! PostgreSQL majors end to end: a PostgreSQL 16 control cluster (the
//! extension installed into the pgserver wheel, see scripts/deps.sh), a
//! plain PostgreSQL 15 server as a named source, and the agent given the 16
//! tools with `--pg-bin-dir`, finding Debian's 15 ones by itself. Each side
//! of a transfer runs the tools of the lowest major that fits its server: a
//! capture of 16 with pg_dump 16, of 15 with pg_dump 15; a restore of that
//! 15 backup into 16 with pg_restore 16; a copy from 15 into 16 with pg_dump
//! 15 and pg_restore 16. Without tools new enough, a capture fails saying
//! which major it needs.

use std::path::Path;
use std::time::Duration;

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::{pg16_bin, Cluster, PG_BIN};
use pgbackups_e2e::data::{create_db, fingerprint, wait, SHOP};
use pgbackups_e2e::env::store_url;

const PATIENCE: Duration = Duration::from_secs(120);

/// A PostgreSQL 16 control cluster with `shop` and an empty `staging`.
fn control16() -> Cluster {
    let c = Cluster::start_with_bin(&pg16_bin(), &[]).expect(
        "a PostgreSQL 16 cluster with pg_backups (make install puts the extension into the wheel of scripts/deps.sh)",
    );
    assert!(c.sql("postgres", "SHOW server_version").unwrap().starts_with("16."));
    create_db(&c, "shop", SHOP).unwrap();
    create_db(&c, "staging", "CREATE TABLE leftovers (x int)").unwrap();
    c
}

fn field(c: &Cluster, id: &str, field: &str) -> String {
    c.sql("postgres", &format!("SELECT value FROM backups.info('{id}') WHERE field = '{field}'")).unwrap()
}

fn log_of(c: &Cluster, id: &str) -> String {
    c.sql("postgres", &format!("SELECT string_agg(value, E'\\n') FROM backups.info('{id}') WHERE field = 'log'"))
        .unwrap()
}

fn error_of(c: &Cluster, id: &str) -> String {
    c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{id}'")).unwrap()
}

#[test]
fn a_capture_of_a_16_database_uses_pg_dump_16_and_restores() {
    let c = control16();
    let store = tempfile::tempdir().unwrap();
    let bin16 = pg16_bin();
    let agent =
        Agent::start(&c.url("postgres"), &store_url(store.path()), &["--pg-bin-dir", bin16.to_str().unwrap()], &[])
            .unwrap();
    for args in ["'shop'", "'shop', jobs => 2"] {
        let b = c.sql("postgres", &format!("SELECT backups.capture({args})")).unwrap();
        assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
        let versions: serde_json::Value = serde_json::from_str(&field(&c, &b, "tool versions")).unwrap();
        assert!(versions["server"].as_str().unwrap().starts_with("16."), "{versions}");
        assert!(versions["pg_dump"].as_str().unwrap().starts_with("pg_dump (PostgreSQL) 16."), "{versions}");
        assert!(log_of(&c, &b).contains(&format!("from {}", bin16.display())), "{}", log_of(&c, &b));

        let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'staging', 'staging')")).unwrap();
        assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
        assert_eq!(fingerprint(&c, "staging").unwrap(), fingerprint(&c, "shop").unwrap(), "restore of {b}");
        assert!(log_of(&c, &r).contains("using PostgreSQL 16 tools"), "{}", log_of(&c, &r));
    }
    // Both majors were found: 16 given, 15 from /usr/lib/postgresql.
    let log = agent.log_text();
    assert!(log.contains(&format!("PostgreSQL client tools found: 15 ({PG_BIN}), 16 ({})", bin16.display())), "{log}");
}

#[test]
fn a_15_backup_restores_into_16_and_a_copy_goes_from_15_to_16() {
    let c = control16();
    // A plain 15 server: the agent reaches it by URL, it needs no extension.
    let old = Cluster::start_plain(Path::new(PG_BIN)).unwrap();
    assert!(old.sql("postgres", "SHOW server_version").unwrap().starts_with("15."));
    create_db(&old, "shop", SHOP).unwrap();
    old.sql("shop", "INSERT INTO customers (email, name) VALUES ('fifteen@example.com', 'only in 15')").unwrap();
    let store = tempfile::tempdir().unwrap();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), format!("[sources.old]\nurl = \"{}\"\n", old.url("shop"))).unwrap();
    let bin16 = pg16_bin();
    let agent = Agent::start(
        &c.url("postgres"),
        &store_url(store.path()),
        &["--config", config.path().to_str().unwrap(), "--pg-bin-dir", bin16.to_str().unwrap()],
        &[],
    )
    .unwrap();
    let want = fingerprint(&old, "shop").unwrap();

    // The backup is taken with pg_dump 15, the lowest that fits its server.
    let b = c.sql("postgres", "SELECT backups.capture(source => 'old')").unwrap();
    assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    let versions: serde_json::Value = serde_json::from_str(&field(&c, &b, "tool versions")).unwrap();
    assert!(versions["server"].as_str().unwrap().starts_with("15."), "{versions}");
    assert!(versions["pg_dump"].as_str().unwrap().starts_with("pg_dump (PostgreSQL) 15."), "{versions}");
    assert!(store.path().join(pgbackups_e2e::data::home(&c)).join("old").join(&b).join("backup.dump.zst").exists());

    // Restored into 16 (by pg_restore 16: the target's major), the same data.
    let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'staging', 'staging')")).unwrap();
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "completed", "{}\n{}", log_of(&c, &r), agent.log_text());
    assert!(log_of(&c, &r).contains("using PostgreSQL 16 tools"), "{}", log_of(&c, &r));
    assert_eq!(fingerprint(&c, "staging").unwrap(), want);
    assert_eq!(
        c.sql("staging", "SELECT name FROM customers WHERE email = 'fifteen@example.com'").unwrap(),
        "only in 15"
    );

    // Copied from 15 into 16: pg_dump 15 (the source's), pg_restore 16.
    create_db(&c, "copied", "CREATE TABLE leftovers (x int)").unwrap();
    let k = c.sql("postgres", "SELECT backups.copy('old', 'copied', 'copied')").unwrap();
    assert_eq!(wait(&c, &k, PATIENCE).unwrap(), "completed", "{}\n{}", log_of(&c, &k), agent.log_text());
    let log = log_of(&c, &k);
    assert!(log.contains(&format!("source: using PostgreSQL 15 tools from {PG_BIN}")), "{log}");
    assert!(log.contains(&format!("target: using PostgreSQL 16 tools from {}", bin16.display())), "{log}");
    assert_eq!(fingerprint(&c, "copied").unwrap(), want);
}

#[test]
fn with_only_15_tools_a_capture_of_16_fails_naming_16() {
    // The agent finds what is in /usr/lib/postgresql: this test needs no
    // PostgreSQL 16 or newer there (scripts/deps.sh installs only 15).
    let newer: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().and_then(|m| m.parse::<u32>().ok()).is_some_and(|m| m >= 16))
        .filter(|e| e.path().join("bin/pg_dump").exists())
        .map(|e| e.path())
        .collect();
    assert!(newer.is_empty(), "this test expects no pg_dump 16 or newer in /usr/lib/postgresql: {newer:?}");

    let c = control16();
    let store = tempfile::tempdir().unwrap();
    // Only the 15 tools: given, found by the scan, and on a PATH without the wheel.
    let agent = Agent::start(
        &c.url("postgres"),
        &store_url(store.path()),
        &["--pg-bin-dir", PG_BIN],
        &[("PATH", "/usr/bin:/bin")],
    )
    .unwrap();
    let b = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "failed", "{}", agent.log_text());
    assert_eq!(
        error_of(&c, &b),
        format!(
            "this server is PostgreSQL 16; pg_dump 16 or newer is needed, found 15 ({PG_BIN}); \
             add its bin directory with --pg-bin-dir"
        )
    );
    // Nothing was stored.
    assert_eq!(std::fs::read_dir(store.path()).unwrap().count(), 0);
}
