//! Captures end to end: the real cluster, the real agent binary, file
//! storage; every backup is read back out of storage, decompressed and
//! restored with the standard pg_restore, and compared row for row.

use std::path::Path;
use std::time::Duration;

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{self, fingerprint, wait, wait_for, SHOP};
use pgbackups_e2e::env::{store_url, TestEnv};

const PATIENCE: Duration = Duration::from_secs(60);

/// Restore the stored backup `id` of database `db` into a new database and
/// check it holds the same data as `db`.
fn check_restores(c: &Cluster, store: &Path, db: &str, id: &str) {
    let object: String =
        c.sql("postgres", &format!("SELECT object_key FROM backups.transfers WHERE name = '{id}'")).unwrap();
    let folder = Path::new(&object).parent().unwrap().to_str().unwrap().to_string();
    let attempt: u32 = c
        .sql("postgres", &format!("SELECT attempts FROM backups.transfers WHERE name = '{id}'"))
        .unwrap()
        .parse()
        .unwrap();
    let manifest = data::manifest(store, &folder, attempt).unwrap();
    let checksum = c.sql("postgres", &format!("SELECT checksum FROM backups.transfers WHERE name = '{id}'")).unwrap();
    if manifest["format"] == "custom" {
        // The recorded checksum is the stored object's SHA-256.
        let stored = std::fs::read(store.join(&object)).unwrap();
        assert_eq!(data::sha256_hex(&stored), checksum);
        let size: u64 = c
            .sql("postgres", &format!("SELECT stored_size FROM backups.transfers WHERE name = '{id}'"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(stored.len() as u64, size);
    } else {
        assert_eq!(attempt, 1);
        let bytes = std::fs::read(store.join(&folder).join("manifest.json")).unwrap();
        assert_eq!(data::sha256_hex(&bytes), checksum);
    }
    let work = tempfile::tempdir().unwrap();
    let path = data::materialise(store, &manifest, work.path()).unwrap();
    let restored = format!("{db}_{id}");
    c.sql("postgres", &format!("CREATE DATABASE {restored}")).unwrap();
    data::pg_restore(c, &restored, &path).unwrap();
    assert_eq!(fingerprint(c, &restored).unwrap(), fingerprint(c, db).unwrap(), "{id} restored differently");
}

#[test]
fn capture_then_pg_restore_gives_identical_data() {
    let TestEnv { c, store, agent: _agent, .. } = TestEnv::new().db("shop", SHOP).start();

    assert_eq!(c.sql("postgres", "SELECT backups.capture('shop')").unwrap(), "b001");
    assert_eq!(c.sql("postgres", "SELECT backups.wait('b001', '1 minute')").unwrap(), "completed");
    check_restores(&c, store.path(), "shop", "b001");

    // info() shows sizes, ratio, checksum, versions and the log.
    let info =
        c.sql("postgres", "SELECT string_agg(field || ': ' || value, E'\\n') FROM backups.info('b001')").unwrap();
    for want in [
        "format: custom",
        "source size: ",
        "stored size: ",
        "compression: ",
        "sha256: ",
        "pg_dump",
        "claimed by agent",
        "completed: ",
    ] {
        assert!(info.contains(want), "info lacks {want:?}:\n{info}");
    }
    // Object keys are readable: <cluster>/<database>/<id>/...
    assert_eq!(
        c.sql("postgres", "SELECT object_key FROM backups.transfers WHERE name = 'b001'").unwrap(),
        format!("{}/shop/b001/backup.dump.zst", data::home(&c))
    );
    assert!(store.path().join(data::home(&c)).join("shop/b001/manifest.json").exists());
}

#[test]
fn parallel_capture_restores_too_and_leaves_no_staging_files() {
    let (c, store) = TestEnv::new().db("shop", SHOP).without_agent();
    let staging = tempfile::tempdir().unwrap();
    let _agent = Agent::start(
        &c.url("postgres"),
        &store_url(store.path()),
        &["--staging-dir", staging.path().to_str().unwrap()],
        &[],
    )
    .unwrap();
    let id = c.sql("postgres", "SELECT backups.capture('shop', jobs => 2)").unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed");
    assert_eq!(
        c.sql("postgres", &format!("SELECT format FROM backups.transfers WHERE name = '{id}'")).unwrap(),
        "directory"
    );
    check_restores(&c, store.path(), "shop", &id);
    let left = pgbackups_e2e::os::files_left(staging.path());
    assert!(left.is_empty(), "staging directory not cleaned up: {left:?}");
}

#[test]
fn cancel_mid_capture_stops_it_and_leaves_no_object() {
    let TestEnv { c, store, agent: _agent, .. } = TestEnv::new().db("shop", SHOP).start();
    for jobs in ["NULL", "2"] {
        // An exclusive lock makes pg_dump wait, mid-capture, for as long as we like.
        let mut locker = c.client("shop").unwrap();
        locker.batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE").unwrap();
        let id = c.sql("postgres", &format!("SELECT backups.capture('shop', jobs => {jobs})")).unwrap();
        wait_for(&c, &format!("SELECT status FROM backups.transfers WHERE name = '{id}'"), "running", PATIENCE)
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(c.sql("postgres", &format!("SELECT backups.cancel('{id}')")).unwrap(), "cancelling");
        assert_eq!(wait(&c, &id, Duration::from_secs(10)).unwrap(), "cancelled");
        locker.batch_execute("ROLLBACK").unwrap();
        let folder = store.path().join(data::home(&c)).join("shop").join(&id);
        let left: Vec<_> = walk(&folder);
        assert!(left.is_empty(), "{id} left {left:?} in storage");
    }
    // The next capture works.
    let id = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn two_agents_share_the_queue_and_run_each_capture_exactly_once() {
    let (c, store) = TestEnv::new()
        .conf("backups.keep_manual = 100")
        .db("shop", "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        .without_agent();
    let url = store_url(store.path());
    let _a = Agent::start(&c.url("postgres"), &url, &["--agent-id", "agent-a"], &[]).unwrap();
    let _b = Agent::start(&c.url("postgres"), &url, &["--agent-id", "agent-b"], &[]).unwrap();
    let ids: Vec<String> = (0..50).map(|_| c.sql("postgres", "SELECT backups.capture('shop')").unwrap()).collect();
    for id in &ids {
        assert_eq!(wait(&c, id, PATIENCE).unwrap(), "completed", "{id}");
    }
    // Claimed once each, by one agent, at the first attempt.
    assert_eq!(c.sql("postgres", "SELECT count(*) FROM backups.transfers WHERE attempts <> 1").unwrap(), "0");
    assert_eq!(
        c.sql("postgres", "SELECT count(*) FROM backups.transfer_logs WHERE message LIKE 'claimed by agent%'").unwrap(),
        "50"
    );
    let agents = c.sql("postgres", "SELECT count(DISTINCT agent_id) FROM backups.transfers").unwrap();
    assert!(agents == "1" || agents == "2");
    for id in &ids {
        assert!(store.path().join(data::home(&c)).join("shop").join(id).join("backup.dump.zst").exists(), "{id}");
    }
}

#[test]
fn agent_restarts_mid_queue_lose_nothing() {
    // A short heartbeat timeout, so that a killed agent's transfer is requeued quickly.
    let (c, store) = TestEnv::new().conf("backups.agent_timeout = '3s'").db("shop", SHOP).without_agent();
    let url = store_url(store.path());
    let ids: Vec<String> = (0..4).map(|_| c.sql("postgres", "SELECT backups.capture('shop')").unwrap()).collect();

    // Graceful: SIGTERM lets the running capture finish, then the agent exits 0.
    let mut a = Agent::start(&c.url("postgres"), &url, &["--max-concurrent", "1"], &[]).unwrap();
    wait_for(&c, "SELECT count(*) > 0 FROM backups.transfers WHERE status IN ('running', 'completed')", "t", PATIENCE)
        .unwrap();
    assert!(a.terminate(PATIENCE).unwrap().success(), "{}", a.log_text());
    assert_eq!(c.sql("postgres", "SELECT count(*) FROM backups.transfers WHERE status = 'running'").unwrap(), "0");

    // Crash: SIGKILL mid-capture; the worker requeues it after the timeout.
    let mut locker = c.client("shop").unwrap();
    locker.batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE").unwrap();
    let mut b = Agent::start(&c.url("postgres"), &url, &["--max-concurrent", "1"], &[]).unwrap();
    wait_for(&c, "SELECT count(*) FROM backups.transfers WHERE status = 'running'", "1", PATIENCE).unwrap();
    let victim = c.sql("postgres", "SELECT name FROM backups.transfers WHERE status = 'running'").unwrap();
    b.kill9();
    locker.batch_execute("ROLLBACK").unwrap();
    wait_for(&c, &format!("SELECT status FROM backups.transfers WHERE name = '{victim}'"), "pending", PATIENCE)
        .unwrap();

    let _c2 = Agent::start(&c.url("postgres"), &url, &[], &[]).unwrap();
    for id in &ids {
        assert_eq!(wait(&c, id, PATIENCE).unwrap(), "completed", "{id}");
    }
    assert_eq!(
        c.sql("postgres", &format!("SELECT attempts FROM backups.transfers WHERE name = '{victim}'")).unwrap(),
        "2"
    );
    // The retried capture's object is the second attempt's.
    let key = c.sql("postgres", &format!("SELECT object_key FROM backups.transfers WHERE name = '{victim}'")).unwrap();
    assert_eq!(key, format!("{}/shop/{victim}/backup-2.dump.zst", data::home(&c)));
    // The killed attempt left no visible object: only the second attempt's
    // (an interrupted multipart upload is staged as `<name>#<n>`, not an object).
    let mut seen: Vec<String> = walk(&store.path().join(data::home(&c)).join("shop").join(&victim))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .filter(|n| !n.rsplit_once('#').is_some_and(|(_, d)| d.bytes().all(|b| b.is_ascii_digit())))
        .collect();
    seen.sort();
    assert_eq!(seen, ["backup-2.dump.zst", "manifest-2.json"]);
    check_restores(&c, store.path(), "shop", &victim);
}

#[test]
fn named_sources_come_from_the_agent_configuration() {
    let (c, store) = TestEnv::new().db("shop", SHOP).without_agent();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), format!("[sources.replica]\nurl = \"{}\"\n", c.url("shop"))).unwrap();
    let _agent =
        Agent::start(&c.url("postgres"), &store_url(store.path()), &["--config", config.path().to_str().unwrap()], &[])
            .unwrap();
    let id = c.sql("postgres", "SELECT backups.capture(source => 'replica')").unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed");
    assert!(store.path().join(data::home(&c)).join("replica").join(&id).join("backup.dump.zst").exists());
    // The secret-bearing URL is nowhere in the tables.
    assert_eq!(
        c.sql("postgres", "SELECT count(*) FROM backups.transfers WHERE source LIKE '%postgres://%'").unwrap(),
        "0"
    );

    let id = c.sql("postgres", "SELECT backups.capture(source => 'nowhere')").unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "failed");
    let err = c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{id}'")).unwrap();
    assert!(err.starts_with("unknown source \"nowhere\": define it in the agent configuration"), "{err}");
}

#[test]
fn a_pg_dump_failure_fails_the_capture_with_pg_dumps_message() {
    let TestEnv { c, store, agent: _agent, .. } = TestEnv::new().db("shop", SHOP).start();
    // A role that may connect but not read the tables: pg_dump fails.
    c.sql("shop", "CREATE ROLE weak LOGIN; REVOKE ALL ON ALL TABLES IN SCHEMA public FROM weak").unwrap();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), format!("[sources.weak]\nurl = \"postgres://weak@127.0.0.1:{}/shop\"\n", c.port))
        .unwrap();
    let _weak_agent = Agent::start(
        &c.url("postgres"),
        &store_url(store.path()),
        &["--config", config.path().to_str().unwrap(), "--agent-id", "weak"],
        &[],
    )
    .unwrap();
    // Once it has announced the source, the capture goes to the agent that knows it.
    wait_for(&c, "SELECT count(*) FROM backups.agents WHERE 'weak' = ANY (sources)", "1", PATIENCE).unwrap();
    let id = c.sql("postgres", "SELECT backups.capture(source => 'weak')").unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "failed");
    let err = c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{id}'")).unwrap();
    assert!(err.contains("pg_dump failed") && err.contains("permission denied"), "{err}");
    assert!(walk(&store.path().join(data::home(&c)).join("weak")).is_empty(), "a failed capture left objects");
}

#[test]
fn delete_and_retention_remove_objects_from_storage() {
    let TestEnv { c, store, agent: _agent, .. } = TestEnv::new()
        .conf("backups.keep_manual = 2")
        .db("shop", "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
        .start();
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let id = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
            assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed");
            id
        })
        .collect();
    // keep_manual = 2: the oldest expires and its objects go.
    wait_for(&c, &format!("SELECT status FROM backups.transfers WHERE name = '{}'", ids[0]), "expired", PATIENCE)
        .unwrap();
    wait_for(
        &c,
        &format!("SELECT purged_at IS NOT NULL FROM backups.transfers WHERE name = '{}'", ids[0]),
        "t",
        PATIENCE,
    )
    .unwrap();
    assert!(walk(&store.path().join(data::home(&c)).join("shop").join(&ids[0])).is_empty());
    // delete() removes one, and a second purge of a missing object is no error.
    c.sql("postgres", &format!("SELECT backups.delete('{}')", ids[1])).unwrap();
    wait_for(
        &c,
        &format!("SELECT purged_at IS NOT NULL FROM backups.transfers WHERE name = '{}'", ids[1]),
        "t",
        PATIENCE,
    )
    .unwrap();
    assert!(walk(&store.path().join(data::home(&c)).join("shop").join(&ids[1])).is_empty());
    assert!(store.path().join(data::home(&c)).join("shop").join(&ids[2]).join("backup.dump.zst").exists());
    assert_eq!(c.sql("postgres", "SELECT count(*) FROM backups.list()").unwrap(), "2");
}

#[test]
fn capture_and_wait_is_one_command_in_psql() {
    let TestEnv { c, store: _store, agent: _agent, .. } = TestEnv::new().db("shop", SHOP).start();
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &c.connstr("postgres"),
            "-c",
            "CALL backups.capture_and_wait('shop')",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("b001") && stdout.contains("completed"), "{stdout}");
    assert!(stderr.contains("NOTICE:  b001 queued"), "{stderr}");
    assert!(stderr.contains("NOTICE:  b001 completed"), "{stderr}");
    // And the two-statement form.
    let id = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(c.sql("postgres", &format!("SELECT backups.wait('{id}')")).unwrap(), "completed");
}
