//! Captures into a real S3-compatible server (s3s-fs on loopback), not a
//! mock: multipart uploads of large objects, and a capture while the server
//! is down.

use std::time::Duration;

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{self, fingerprint, wait, SHOP};
use pgbackups_e2e::env::TestEnv;
use pgbackups_e2e::os;
use pgbackups_e2e::s3::S3Server;

const PATIENCE: Duration = Duration::from_secs(120);

fn env(s3: &S3Server) -> Vec<(&'static str, String)> {
    s3.env()
}

fn start_agent(c: &Cluster, s3: &S3Server, extra: &[&str]) -> Agent {
    let env = env(s3);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Agent::start(&c.url("postgres"), "s3://backups/pg", extra, &env).unwrap()
}

#[test]
fn capture_to_s3_uses_multipart_and_restores() {
    let (c, _store) = TestEnv::new().db("shop", SHOP).without_agent();
    // About 24 MB of incompressible bytes: the stored object spans several 8 MiB parts.
    c.sql("shop", &data::noise(3000, 500)).unwrap();
    let s3 = S3Server::start("backups").unwrap();
    let agent = start_agent(&c, &s3, &[]);
    let id = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed", "{}", agent.log_text());

    // s3s-fs stores objects as plain files under <root>/<bucket>/<key>.
    let object = s3.root.join("backups/pg").join(data::home(&c)).join("shop").join(&id).join("backup.dump.zst");
    let stored = std::fs::read(&object).unwrap();
    assert!(stored.len() > 2 * 8 * 1024 * 1024, "only {} bytes: not a multipart-sized object", stored.len());
    let size: usize = c
        .sql("postgres", &format!("SELECT stored_size FROM backups.transfers WHERE name = '{id}'"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(stored.len(), size);
    let checksum = c.sql("postgres", &format!("SELECT checksum FROM backups.transfers WHERE name = '{id}'")).unwrap();
    assert_eq!(data::sha256_hex(&stored), checksum);

    let manifest = data::manifest(&s3.root.join("backups/pg"), &format!("{}/shop/{id}", data::home(&c)), 1).unwrap();
    // Manifest paths are relative to the storage URL's prefix.
    assert_eq!(manifest["files"][0]["path"], format!("{}/shop/{id}/backup.dump.zst", data::home(&c)));
    let work = tempfile::tempdir().unwrap();
    let path = data::materialise(&s3.root.join("backups/pg"), &manifest, work.path()).unwrap();
    c.sql("postgres", "CREATE DATABASE from_s3").unwrap();
    data::pg_restore(&c, "from_s3", &path).unwrap();
    assert_eq!(fingerprint(&c, "from_s3").unwrap(), fingerprint(&c, "shop").unwrap());
}

#[test]
fn a_capture_while_storage_is_down_fails_cleanly_and_the_next_one_works() {
    let (c, _store) = TestEnv::new().db("shop", SHOP).without_agent();
    let mut s3 = S3Server::start("backups").unwrap();
    let agent = start_agent(&c, &s3, &["--storage-retry-timeout", "3"]);
    s3.stop();
    let id = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "failed", "{}", agent.log_text());
    let err = c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{id}'")).unwrap();
    assert!(err.contains("upload"), "the storage error is not in {err:?}");
    assert_eq!(
        c.sql("postgres", &format!("SELECT checksum IS NULL FROM backups.transfers WHERE name = '{id}'")).unwrap(),
        "t"
    );

    s3.resume().unwrap();
    let id2 = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &id2, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    assert!(!s3.root.join("backups/pg").join(data::home(&c)).join("shop").join(&id).join("backup.dump.zst").exists());
    assert!(s3.root.join("backups/pg").join(data::home(&c)).join("shop").join(&id2).join("backup.dump.zst").exists());
}

#[test]
fn a_capture_survives_a_short_storage_outage_through_retries() {
    let (c, _store) = TestEnv::new().db("shop", SHOP).without_agent();
    let mut s3 = S3Server::start("backups").unwrap();
    let agent = start_agent(&c, &s3, &["--storage-retry-timeout", "60"]);
    s3.stop();
    let id = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    data::wait_for(&c, &format!("SELECT status FROM backups.transfers WHERE name = '{id}'"), "running", PATIENCE)
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    s3.resume().unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
}

#[test]
fn a_streamed_restore_resumes_a_read_that_broke_off() {
    let (c, _store) =
        TestEnv::new().db("big", &data::noise(200_000, 40)).db("staging", "CREATE TABLE t (x int)").without_agent();
    let mut s3 = S3Server::start("backups").unwrap();
    // The client's own retries of a GET end this long after it began; the
    // restore below reads one for longer than that.
    let agent = start_agent(&c, &s3, &["--storage-retry-timeout", "2", "--split-tables-larger-than", "0"]);
    let id = c.sql("postgres", "SELECT backups.capture('big')").unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    let r = c.sql("postgres", &format!("SELECT backups.restore('{id}', 'staging', 'staging')")).unwrap();
    data::wait_for(
        &c,
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname LIKE 'pgbackups_shadow_%' AND query ILIKE 'COPY%'",
        "t",
        PATIENCE,
    )
    .unwrap();
    // The loaders pause (the agent stops reading its GET) for longer than
    // the client's retries last, and meanwhile the server goes away for a
    // moment: the GET breaks, and only a resumed read can go on.
    // (The agent's loaders read lists named data-N.list.)
    let loaders: Vec<String> = os::processes_with("pg_restore")
        .iter()
        .filter(|(_, cmdline)| cmdline.contains(".list") && cmdline.contains("data-"))
        .map(|(pid, _)| pid.to_string())
        .collect();
    assert!(!loaders.is_empty());
    let signal = |sig: &str| {
        std::process::Command::new("kill").arg(sig).args(&loaders).status().unwrap();
    };
    signal("-STOP");
    std::thread::sleep(Duration::from_secs(3));
    s3.stop();
    std::thread::sleep(Duration::from_millis(200));
    s3.resume().unwrap();
    signal("-CONT");
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    assert_eq!(fingerprint(&c, "staging").unwrap(), fingerprint(&c, "big").unwrap());
}
