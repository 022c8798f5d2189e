//! Any database name works end to end: capture (custom and parallel),
//! restore into a target with an odd name too, a download link fetched with
//! curl, `pgbackups download`, and delete, which really removes the objects.

use std::process::Command;
use std::time::Duration;

use pgbackups_e2e::agent::{self};
use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{create_db, fingerprint, ident, literal, wait, wait_for};
use pgbackups_e2e::env::TestEnv;
use pgbackups_e2e::os::files_under;

const PATIENCE: Duration = Duration::from_secs(90);

/// Names that break naive keys, paths, URLs, connection strings and command lines.
const NAMES: &[&str] = &["q3#sales", "50% off", "it's \"quoted\"", "café ünïcode", "a/b", "..", "-leading", "x%2Fy"];

const DATA: &str = "CREATE TABLE t (id int PRIMARY KEY, note text);
INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 500) g;";

fn curl(url: &str, out: &std::path::Path) -> (i32, String) {
    let o = Command::new("curl").args(["-s", "-o"]).arg(out).args(["-w", "%{http_code}", url]).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).to_string())
}

fn pg_restore_into(c: &Cluster, db: &str, path: &std::path::Path, extra: &[&str]) {
    c.sql("postgres", &format!("CREATE DATABASE {}", ident(db))).unwrap();
    let o = Command::new("pg_restore")
        .args(["--no-acl", "--no-owner", "--exit-on-error", "-d", &c.connstr(db)])
        .args(extra)
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn odd_database_names_go_through_capture_restore_link_download_and_delete() {
    let env = TestEnv::new().links().start();
    let storage = env.storage();
    let TestEnv { c, store, agent, .. } = env;
    let work = tempfile::tempdir().unwrap();
    let mut backups = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        create_db(&c, name, DATA).unwrap();
        let jobs = if i % 3 == 0 { ", jobs => 2" } else { "" };
        let b = c.sql("postgres", &format!("SELECT backups.capture({}{jobs})", literal(name))).unwrap();
        assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "completed", "{name}: {}", agent.log_text());
        backups.push(b.clone());

        // Restore, into a target whose name is odd too.
        let target = format!("{name} restored");
        create_db(&c, &target, "CREATE TABLE leftover (x int)").unwrap();
        let r = c
            .sql("postgres", &format!("SELECT backups.restore('{b}', {}, {})", literal(&target), literal(&target)))
            .unwrap();
        assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "completed", "{name}: {}", agent.log_text());
        assert_eq!(fingerprint(&c, &target).unwrap(), fingerprint(&c, name).unwrap(), "restore of {name:?}");

        // A link, fetched with curl and restored with the standard pg_restore.
        let url = c.sql("postgres", &format!("SELECT backups.url('{b}')")).unwrap();
        let file = work.path().join(format!("{b}.download"));
        assert_eq!(curl(&url, &file), (0, "200".to_string()), "{name}: {}", agent.log_text());
        let linked = format!("{name} linked");
        if jobs.is_empty() {
            pg_restore_into(&c, &linked, &file, &[]);
        } else {
            let st = Command::new("tar").arg("xf").arg(&file).arg("-C").arg(work.path()).status().unwrap();
            assert!(st.success());
            pg_restore_into(&c, &linked, &work.path().join(&b), &["-Fd"]);
        }
        assert_eq!(fingerprint(&c, &linked).unwrap(), fingerprint(&c, name).unwrap(), "link of {name:?}");

        // pgbackups download.
        let out = work.path().join(format!("{b}.dl"));
        let o = Command::new(agent::binary())
            .args(["download", &b, "--database-url", &c.url("postgres"), "--storage", &storage])
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let downloaded = format!("{name} downloaded");
        let extra: &[&str] = if jobs.is_empty() { &[] } else { &["-Fd"] };
        pg_restore_into(&c, &downloaded, &out, extra);
        assert_eq!(fingerprint(&c, &downloaded).unwrap(), fingerprint(&c, name).unwrap(), "download of {name:?}");
    }
    // Delete removes every object of every backup from storage.
    for b in &backups {
        c.sql("postgres", &format!("SELECT backups.delete('{b}')")).unwrap();
    }
    for b in &backups {
        wait_for(&c, &format!("SELECT purged_at IS NOT NULL FROM backups.transfers WHERE name = '{b}'"), "t", PATIENCE)
            .unwrap();
    }
    assert_eq!(files_under(store.path()), Vec::<std::path::PathBuf>::new(), "{}", agent.log_text());
}

/// pg_dump --verbose names tables in the database's encoding: in an
/// SQL_ASCII database a name can hold any byte, which is not UTF-8 on the
/// agent's side, and must neither stop the reading of pg_dump's output (which
/// would kill pg_dump with SIGPIPE) nor be lost.
#[test]
fn a_database_whose_names_are_not_utf8_is_captured_and_restored() {
    let TestEnv { c, store: _store, agent, .. } = TestEnv::new().start();
    for db in ["raw", "raw_back"] {
        c.sql(
            "postgres",
            &format!("CREATE DATABASE {db} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"),
        )
        .unwrap();
    }
    // Tables named "caf" + the byte 0xE9 + "_N" (LATIN1's é, invalid UTF-8).
    c.sql(
        "raw",
        "DO $$ BEGIN FOR i IN 0..29 LOOP
           EXECUTE format('CREATE TABLE %I (x text); INSERT INTO %I SELECT ''row '' || g FROM generate_series(1, %s) g',
                          'caf' || convert_from('\\xe9'::bytea, 'SQL_ASCII') || '_' || i,
                          'caf' || convert_from('\\xe9'::bytea, 'SQL_ASCII') || '_' || i, i);
         END LOOP; END $$",
    )
    .unwrap();
    // Names and row counts, as ASCII (the names themselves are not UTF-8).
    let summary = "SELECT count(*) || ' ' || md5(string_agg(relname::text, ',' ORDER BY relname)) || ' ' ||
                          sum((xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I', relname), false, true, '')))[1]::text::int)
                     FROM pg_class WHERE relname LIKE 'caf%' AND relkind = 'r'";
    let want = c.sql("raw", summary).unwrap();
    assert!(want.starts_with("30 "), "{want}");
    for jobs in ["NULL", "2"] {
        let b = c.sql("postgres", &format!("SELECT backups.capture('raw', jobs => {jobs})")).unwrap();
        assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
        let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'raw_back', 'raw_back')")).unwrap();
        assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
        assert_eq!(c.sql("raw_back", summary).unwrap(), want);
        // The names made it into the log, readable.
        let logged = c
            .sql("postgres", &format!("SELECT count(*) FROM backups.transfer_logs l JOIN backups.transfers t ON t.id = l.transfer_id WHERE t.name = '{b}' AND l.message LIKE '%caf%\\_29%'"))
            .unwrap();
        assert_ne!(logged, "0", "the table names are missing from the log of {b}");
    }
}
