//! Faults: after each, the system keeps working and no completed backup is
//! lost or corrupted. (Killing the agent mid-capture is in capture.rs,
//! agent_restarts_mid_queue_lose_nothing; two agents racing in
//! two_agents_share_the_queue_and_run_each_capture_exactly_once.)

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pgbackups_e2e::agent::{self, Agent};
use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{self, create_db, fingerprint, wait, wait_for, SHOP};
use pgbackups_e2e::env::{store_url, TestEnv};
use pgbackups_e2e::s3::S3Server;

const PATIENCE: Duration = Duration::from_secs(120);

fn error_of(c: &Cluster, id: &str) -> String {
    c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{id}'")).unwrap()
}

/// Visible objects under `dir` (multipart uploads in progress are staged as
/// `<name>#<n>` and are not objects).
fn visible(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.to_string_lossy().to_string();
                let staged =
                    name.rsplit_once('#').is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if !staged {
                    out.push(name);
                }
            }
        }
    }
    out
}

#[test]
fn the_control_cluster_restarting_under_the_agent() {
    let TestEnv { c, store, agent, .. } = TestEnv::new().db("shop", SHOP).start();
    let b = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "completed");

    // A schedule falls due while the server is down: it fires once when it is back.
    c.sql("postgres", "SELECT backups.schedule('hourly', 'shop')").unwrap();
    c.sql("postgres", "UPDATE backups.schedules SET next_run_at = now() + interval '2 seconds'").unwrap();
    c.stop_server("fast").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    c.start_server().unwrap();
    wait_for(&c, "SELECT count(*) FROM backups.transfers WHERE name LIKE 'a%'", "1", PATIENCE).unwrap();
    // The same agent process reconnects and runs it.
    assert_eq!(wait(&c, "a001", PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.sql("postgres", "SELECT count(*) FROM backups.transfers WHERE name LIKE 'a%'").unwrap(), "1");
    // The backup taken before the restart is intact.
    let stored = std::fs::read(store.path().join(data::home(&c)).join(format!("shop/{b}/backup.dump.zst"))).unwrap();
    assert_eq!(
        data::sha256_hex(&stored),
        c.sql("postgres", &format!("SELECT checksum FROM backups.transfers WHERE name = '{b}'")).unwrap()
    );
}

#[test]
fn pg_dump_failures_fail_the_capture_with_pg_dumps_message() {
    let TestEnv { c, store, agent: _agent, .. } =
        TestEnv::new().db("shop", SHOP).args(&["--lock-wait-timeout", "1s"]).start();

    // A table locked past pg_dump's lock timeout.
    let mut locker = c.client("shop").unwrap();
    locker.batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE").unwrap();
    let id = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "failed");
    let err = error_of(&c, &id);
    assert!(err.contains("pg_dump failed") && err.contains("statement timeout"), "{err}");
    assert!(err.contains("LOCK TABLE") && err.contains("orders"), "pg_dump's detail line is missing: {err}");
    locker.batch_execute("ROLLBACK").unwrap();
    assert!(visible(&store.path().join(data::home(&c)).join("shop").join(&id)).is_empty());

    // The source database dropped mid-capture (pg_dump waits on a lock, then loses its connection).
    let _slow = Agent::start(&c.url("postgres"), &store_url(store.path()), &["--agent-id", "patient"], &[]).unwrap();
    drop(_agent);
    locker.batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE").unwrap();
    let id = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    wait_for(&c, &format!("SELECT status FROM backups.transfers WHERE name = '{id}'"), "running", PATIENCE).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // FORCE terminates every connection to it: the lock holder's and pg_dump's,
    // so pg_dump never gets the lock.
    c.sql("postgres", "DROP DATABASE shop WITH (FORCE)").unwrap();
    drop(locker);
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "failed");
    let err = error_of(&c, &id);
    assert!(err.contains("pg_dump failed") && err.contains("pg_dump: error:"), "{err}");
    assert!(visible(&store.path().join(data::home(&c)).join("shop").join(&id)).is_empty());

    // And the next capture works.
    create_db(&c, "shop2", SHOP).unwrap();
    let id = c.sql("postgres", "SELECT backups.capture('shop2')").unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed");
}

#[test]
fn a_staging_directory_that_cannot_be_used_fails_cleanly() {
    let (c, store) =
        TestEnv::new().db("shop", SHOP).db("staging_db", "CREATE TABLE keep_me AS SELECT 1 AS x").without_agent();
    // A path below a regular file can never be created, even by root.
    let file = tempfile::NamedTempFile::new().unwrap();
    let bad = file.path().join("staging");
    let _agent =
        Agent::start(&c.url("postgres"), &store_url(store.path()), &["--staging-dir", bad.to_str().unwrap()], &[])
            .unwrap();
    let id = c.sql("postgres", "SELECT backups.capture('shop', jobs => 2)").unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "failed");
    assert!(error_of(&c, &id).contains("staging directory"), "{}", error_of(&c, &id));
    assert!(visible(&store.path().join(data::home(&c)).join("shop").join(&id)).is_empty());
    // A plain capture streams, so it needs no staging and works.
    let ok = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &ok, PATIENCE).unwrap(), "completed");
    // A restore needs staging: it fails before the target is touched.
    let r = c.sql("postgres", &format!("SELECT backups.restore('{ok}', 'staging_db', 'staging_db')")).unwrap();
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "failed");
    assert!(error_of(&c, &r).contains("staging directory"), "{}", error_of(&c, &r));
    assert_eq!(c.sql("staging_db", "SELECT x FROM keep_me").unwrap(), "1");
}

#[test]
fn s3_stopped_mid_upload_is_retried_or_fails_cleanly() {
    let c = Cluster::start().unwrap();
    // About 100 MB of incompressible data, so the upload takes a while.
    create_db(&c, "big", &data::noise(12000, 500)).unwrap();
    let mut s3 = S3Server::start("backups").unwrap();
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let agent = Agent::start(&c.url("postgres"), "s3://backups/pg", &["--storage-retry-timeout", "60"], &env).unwrap();
    let id = c.sql("postgres", "SELECT backups.capture('big')").unwrap();
    let deadline = Instant::now() + PATIENCE;
    while c.sql("postgres", &format!("SELECT processed_bytes > 0 OR status <> 'running' AND status <> 'pending' FROM backups.transfers WHERE name = '{id}'")).unwrap() != "t" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    s3.stop();
    std::thread::sleep(Duration::from_millis(1500));
    s3.resume().unwrap();
    let status = wait(&c, &id, PATIENCE).unwrap();
    let object = s3.root.join("backups/pg").join(data::home(&c)).join("big").join(&id).join("backup.dump.zst");
    match status.as_str() {
        "completed" => {
            let stored = std::fs::read(&object).unwrap();
            assert_eq!(
                data::sha256_hex(&stored),
                c.sql("postgres", &format!("SELECT checksum FROM backups.transfers WHERE name = '{id}'")).unwrap()
            );
            let work = tempfile::tempdir().unwrap();
            let m = data::manifest(&s3.root.join("backups/pg"), &format!("{}/big/{id}", data::home(&c)), 1).unwrap();
            let dump = data::materialise(&s3.root.join("backups/pg"), &m, work.path()).unwrap();
            c.sql("postgres", "CREATE DATABASE big_back").unwrap();
            data::pg_restore(&c, "big_back", &dump).unwrap();
            assert_eq!(fingerprint(&c, "big_back").unwrap(), fingerprint(&c, "big").unwrap());
        }
        "failed" => {
            assert!(error_of(&c, &id).contains("upload"), "{}", error_of(&c, &id));
            assert!(!object.exists(), "a failed upload left its object");
        }
        other => panic!("{id} ended {other}: {}", agent.log_text()),
    }
    // Either way, the next capture works.
    c.sql("big", "TRUNCATE noise").unwrap();
    let next = c.sql("postgres", "SELECT backups.capture('big')").unwrap();
    assert_eq!(wait(&c, &next, PATIENCE).unwrap(), "completed");
}

/// `pgbackups agent` with bad settings: one line saying why, exit code 1.
#[test]
fn the_agent_refuses_bad_settings_with_one_line() {
    let c = Cluster::start().unwrap();
    let store = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(agent::binary()).arg("agent").args(args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).trim().to_string())
    };
    let url = c.url("postgres");
    let storage = store_url(store.path());
    for (args, want) in [
        (
            vec!["--database-url", &url, "--storage", "ftp://example.com/x"],
            "pgbackups: unsupported storage scheme \"ftp\"",
        ),
        (vec!["--database-url", &url, "--storage", "not a url"], "pgbackups: invalid storage URL \"not a url\""),
        (
            vec!["--database-url", "postgres://postgres@127.0.0.1:1/postgres", "--storage", &storage],
            "pgbackups: cannot reach the control database",
        ),
        (
            vec!["--database-url", &url, "--storage", &storage, "--pg-bin-dir", "/nonexistent"],
            "pgbackups: --pg-bin-dir /nonexistent: there is no pg_dump there",
        ),
        (vec!["--storage", &storage], "pgbackups: no control database"),
        (
            vec!["--database-url", &url, "--storage", &storage, "--listen", "127.0.0.1:0"],
            "pgbackups: --listen needs --link-secret",
        ),
    ] {
        let (code, err) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.starts_with(want), "{args:?}: {err:?} does not start with {want:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}
