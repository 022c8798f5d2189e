//! Restores and copies are atomic: the archive goes into a shadow database
//! swapped in at the end, so a restore that fails (a truncated archive, an
//! extension the server lacks) or is cancelled mid-data leaves the target
//! exactly as it was: same database (oid), schema, data and settings, and
//! no shadow left behind. A restore or copy that succeeds keeps the
//! target's settings, grants, connection limit and comment, in place or
//! not.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{create_db, fingerprint, noise, schema, wait, SHOP};
use pgbackups_e2e::env::{capture, log_of, TestEnv};

const PATIENCE: Duration = Duration::from_secs(120);
const OTHER_DATA: &str = "CREATE TABLE leftovers (x int); INSERT INTO leftovers VALUES (1), (2); CREATE SCHEMA extra; CREATE TABLE extra.t (y text)";

/// What the target's owner set on it, beyond its contents.
const SETTINGS: &str = r#"
CREATE ROLE reader;
ALTER DATABASE staging SET work_mem = '7MB';
ALTER DATABASE staging SET search_path = '$user', public, 'B c';
ALTER DATABASE staging SET app.note = 'it''s = staging';
ALTER DATABASE staging CONNECTION LIMIT 7;
REVOKE CONNECT, TEMPORARY ON DATABASE staging FROM PUBLIC;
GRANT CONNECT ON DATABASE staging TO reader WITH GRANT OPTION;
ALTER ROLE reader IN DATABASE staging SET statement_timeout = '5s';
COMMENT ON DATABASE staging IS 'it''s staging';
"#;

fn setup() -> TestEnv {
    TestEnv::new().db("shop", SHOP).db("staging", OTHER_DATA).args(&["--allow-private-urls"]).start()
}

/// Everything a failed restore must leave as it was: the database itself
/// (its oid), its schema and data, and its settings; and no database the
/// agent made is left.
fn state(c: &Cluster, db: &str) -> String {
    format!(
        "oid {}\n{}\n{}\n{}\nleft: {}",
        c.sql("postgres", &format!("SELECT oid FROM pg_database WHERE datname = '{db}'")).unwrap(),
        settings(c, db),
        schema(c, db).unwrap(),
        fingerprint(c, db).unwrap(),
        c.sql(
            "postgres",
            "SELECT coalesce(string_agg(datname, ' '), '') FROM pg_database WHERE datname LIKE 'pgbackups%'"
        )
        .unwrap()
    )
}

/// The database's settings, role settings, grants, connection limit and
/// comment.
fn settings(c: &Cluster, db: &str) -> String {
    c.sql(
        "postgres",
        &format!(
            "SELECT d.datconnlimit || ' ' || coalesce(d.datacl::text, 'default') || ' '
                    || coalesce(shobj_description(d.oid, 'pg_database'), '-') || ' '
                    || coalesce((SELECT string_agg(coalesce(r.rolname, '*') || ':' || s.setconfig::text, ' ' ORDER BY 1)
                                   FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
                                  WHERE s.setdatabase = d.oid), '')
               FROM pg_database d WHERE d.datname = '{db}'"
        ),
    )
    .unwrap()
}

/// `pg_dump -Fc -Z0 db` as bytes.
fn dump(c: &Cluster, db: &str, dir: &Path) -> Vec<u8> {
    let file = dir.join(format!("{db}.dump"));
    let out = Command::new(c.program("pg_dump"))
        .args(["-Fc", "-Z0", "--no-owner", "--no-acl", "-f"])
        .arg(&file)
        .arg(c.connstr(db))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(file).unwrap()
}

/// Serve `body` to every GET on a loopback port; its URL.
fn serve(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/backup.dump", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                req.push(byte[0]);
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(&body));
        }
    });
    url
}

fn restore(c: &Cluster, from: &str, target: &str) -> String {
    c.sql("postgres", &format!("SELECT backups.restore('{from}', '{target}', '{target}')")).unwrap()
}

#[test]
fn a_restore_of_a_truncated_archive_leaves_the_target_as_it_was() {
    let TestEnv { c, store: _store, agent, .. } = setup();
    c.sql("staging", SETTINGS).unwrap();
    let before = state(&c, "staging");
    let dir = tempfile::tempdir().unwrap();
    let mut archive = dump(&c, "shop", dir.path());
    // The table of contents is whole; the data stops two thirds of the way.
    archive.truncate(archive.len() * 2 / 3);
    let r = restore(&c, &serve(archive), "staging");
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "failed", "{}", agent.log_text());
    let log = log_of(&c, &r);
    assert!(log.contains("applying into pgbackups_shadow_"), "the archive went into the target itself:\n{log}");
    assert_eq!(state(&c, "staging"), before, "{log}");
}

#[test]
fn a_restore_needing_an_extension_the_server_lacks_leaves_the_target_as_it_was() {
    let TestEnv { c, store: _store, agent, .. } = setup();
    create_db(&c, "ext", "CREATE EXTENSION citext; CREATE TABLE t (x int); INSERT INTO t VALUES (1)").unwrap();
    let before = state(&c, "staging");
    let dir = tempfile::tempdir().unwrap();
    // The same archive, naming an extension no server has (same length, so
    // the archive's lengths still hold).
    let archive = dump(&c, "ext", dir.path());
    let mut renamed = archive.clone();
    let mut at = 0;
    while let Some(i) = renamed[at..].windows(6).position(|w| w == b"citext") {
        renamed[at + i + 5] = b'q';
        at += i + 6;
    }
    assert_ne!(renamed, archive);
    let r = restore(&c, &serve(renamed), "staging");
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "failed", "{}", agent.log_text());
    let log = log_of(&c, &r);
    assert!(log.contains("citexq") && log.contains("pg_available_extensions"), "{log}");
    assert_eq!(state(&c, "staging"), before, "{log}");
}

#[test]
fn a_restore_cancelled_mid_data_leaves_the_target_as_it_was() {
    let TestEnv { c, store: _store, agent, .. } = setup();
    // Enough data that the restore is still loading when the cancel lands.
    create_db(&c, "big", &format!("{}; CREATE INDEX ON noise (data)", noise(150_000, 24))).unwrap();
    let b = capture(&c, "'big'");
    c.sql("staging", SETTINGS).unwrap();
    let before = state(&c, "staging");
    let r = restore(&c, &b, "staging");
    // Cancel once the shadow is being loaded.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let loading = c
            .sql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'pgbackups_shadow_%' AND query ILIKE 'COPY%'",
            )
            .unwrap();
        if loading != "0" {
            break;
        }
        assert!(Instant::now() < deadline, "the restore never loaded its shadow: {}", agent.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.sql("postgres", &format!("SELECT backups.cancel('{r}')")).unwrap(), "cancelling");
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "cancelled", "{}", agent.log_text());
    assert_eq!(state(&c, "staging"), before, "{}", log_of(&c, &r));
}

#[test]
fn settings_grants_and_limits_survive_a_restore_and_a_copy_in_place_or_not() {
    let TestEnv { c, store: _store, agent, .. } = setup();
    c.sql("staging", SETTINGS).unwrap();
    let kept = settings(&c, "staging");
    assert!(kept.contains("reader=c*/") && kept.contains("B c") && kept.starts_with("7 "), "{kept}");
    let b = capture(&c, "'shop'");
    for (call, in_place) in [
        (format!("backups.restore('{b}', 'staging', 'staging')"), false),
        ("backups.copy('shop', 'staging', 'staging')".to_string(), false),
        (format!("backups.restore('{b}', 'staging', 'staging', in_place => true)"), true),
        ("backups.copy('shop', 'staging', 'staging', in_place => true)".to_string(), true),
    ] {
        let oid = c.sql("postgres", "SELECT oid FROM pg_database WHERE datname = 'staging'").unwrap();
        let id = c.sql("postgres", &format!("SELECT {call}")).unwrap();
        assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed", "{call}: {}", agent.log_text());
        assert_eq!(settings(&c, "staging"), kept, "{call}: {}", log_of(&c, &id));
        assert_eq!(fingerprint(&c, "staging").unwrap(), fingerprint(&c, "shop").unwrap(), "{call}");
        assert_eq!(schema(&c, "staging").unwrap(), schema(&c, "shop").unwrap(), "{call}");
        let log = log_of(&c, &id);
        assert_eq!(log.contains("swapped in"), !in_place, "{call}: {log}");
        assert_eq!(log.contains("in place: dropping staging"), in_place, "{call}: {log}");
        assert_ne!(c.sql("postgres", "SELECT oid FROM pg_database WHERE datname = 'staging'").unwrap(), oid, "{call}");
        assert_eq!(
            c.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgbackups%'").unwrap(),
            "0",
            "{call}: the shadow or the replaced database was left"
        );
        // The owner's role setting holds in the new database.
        assert_eq!(
            c.sql(
                "staging",
                "SET ROLE reader; SELECT current_setting('work_mem') || ' ' || current_setting('app.note')"
            )
            .unwrap(),
            "7MB it's = staging",
            "{call}"
        );
    }
}
