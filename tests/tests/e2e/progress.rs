//! Progress: while a capture runs, `list()` shows how far along it is (a
//! percentage of the source's table sizes) and the time left, and `info()`
//! the table being dumped, with the rows its COPY has sent so far. pg_dump is slowed by a wrapper (its output
//! passed on at about 3 MB/s) so the capture runs long enough to watch.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::{pg15_server_bin, Cluster};
use pgbackups_e2e::data::{create_db, noise, wait};

/// A bin directory whose pg_dump is the real one, its stdout slowed.
fn slow_bin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let real = pg15_server_bin();
    let script = format!(
        r#"#!/bin/bash
set -o pipefail
case "$1" in --version|-V) exec "{real}/pg_dump" "$@";; esac
"{real}/pg_dump" "$@" | python3 -c '
import sys, time
i, o = sys.stdin.buffer, sys.stdout.buffer
while True:
    b = i.read(65536)
    if not b:
        break
    o.write(b)
    o.flush()
    time.sleep(0.02)
'
"#,
        real = real.display()
    );
    let pg_dump = dir.path().join("pg_dump");
    std::fs::write(&pg_dump, script).unwrap();
    std::fs::set_permissions(&pg_dump, std::fs::Permissions::from_mode(0o755)).unwrap();
    for tool in ["pg_restore", "psql"] {
        std::os::unix::fs::symlink(real.join(tool), dir.path().join(tool)).unwrap();
    }
    dir
}

#[test]
fn a_running_capture_shows_a_percentage_time_left_and_its_table() {
    let c = Cluster::start().unwrap();
    // About 10 MB of table, 20 MB of COPY text (bytea is hex).
    create_db(&c, "slow", &noise(600, 1000)).unwrap();
    let bin = slow_bin_dir();
    let store = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &c.url("postgres"),
        &format!("file://{}", store.path().display()),
        &["--pg-bin-dir", bin.path().to_str().unwrap()],
        &[],
    )
    .unwrap();
    let id = c.sql("postgres", "SELECT backups.capture('slow')").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    let mut tables = Vec::new();
    loop {
        let row = c
            .sql(
                "postgres",
                &format!(
                    "SELECT status || '|' || coalesce(progress, '') || '|'
                            || coalesce((SELECT value FROM backups.info('{id}') WHERE field = 'current table'), '')
                       FROM backups.list() WHERE id = '{id}'"
                ),
            )
            .unwrap();
        let mut parts = row.splitn(3, '|');
        let (status, progress, table) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        if status != "running" && status != "pending" {
            break;
        }
        if status == "running" {
            seen.push(progress.to_string());
            tables.push(table.to_string());
        }
        assert!(Instant::now() < deadline, "still running: {seen:?}\n{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(wait(&c, &id, Duration::from_secs(10)).unwrap(), "completed", "{}", agent.log_text());
    // Some moment showed a percentage between 1 and 99 with the time left.
    let with_eta: Vec<&String> = seen
        .iter()
        .filter(|p| {
            let pct: Option<u32> = p.split_once('%').and_then(|(n, _)| n.parse().ok());
            pct.is_some_and(|n| (1..=99).contains(&n)) && p.contains(" left")
        })
        .collect();
    assert!(!with_eta.is_empty(), "no percentage with time left in {seen:?}");
    assert!(with_eta[0].contains(" of ~"), "{}", with_eta[0]);
    assert!(tables.iter().any(|t| t.contains("noise")), "no current table in {tables:?}");
    // pg_stat_progress_copy's detail: the rows pg_dump's COPY has sent.
    assert!(seen.iter().any(|p| p.ends_with(" rows in COPY")), "no COPY rows in {seen:?}");
    // Once done, the progress says so.
    let done = c.sql("postgres", &format!("SELECT progress FROM backups.list() WHERE id = '{id}'")).unwrap();
    assert!(done.starts_with("done in"), "{done}");
}
