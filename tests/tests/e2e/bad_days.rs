//! Trust on bad days: a hostile tenant and a failing machine, each the way
//! it was found to hurt (issue 20), and what must hold instead.
//!
//! 1. an open tenant transaction delays no one else's capture and no
//!    `_finish` (names come from sequences, which never wait);
//! 2. a restore whose data fails to load leaves the target as it was, on
//!    every path (a parallel backup's, one with large objects);
//! 3. a tenant's captures stuck on its own locks leave room for others;
//! 4. a restore whose agent stopped right after its swap committed is
//!    never restored again: what was written to the target since stays;
//! 5. a capture whose control database was down is never `completed`
//!    without its format and key;
//! 6. a backup object replaced in storage executes nothing;
//! 7. a name recreated by another owner sees and expires nothing of the
//!    previous owner's;
//! 8. 60 concurrent downloads of a link leave connections for others and
//!    stage nothing;
//! 9. a 300 MB value restores within the documented memory bound;
//! 10. no shadow is left after a failed restore, in 20 tries, and what a
//!     killed agent left is dropped when an agent starts;
//! 11. (issue 21) a restore whose admin connection the server closed while
//!     the archive loaded opens another and completes; an in-place one
//!     waits out a tenant's lock on its target held longer than 5 s.

use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::{free_port, Cluster};
use pgbackups_e2e::data::{create_db, fingerprint, schema, wait, wait_for, SHOP};
use pgbackups_e2e::env::{capture, log_of, store_url, TestEnv};
use pgbackups_e2e::proxy::Proxy;

const PATIENCE: Duration = Duration::from_secs(120);

/// A session as login `role`, for a transaction left open.
fn client_as(c: &Cluster, role: &str, db: &str) -> postgres::Client {
    postgres::Client::connect(&format!("host=127.0.0.1 port={} user={role} dbname={db}", c.port), postgres::NoTls)
        .unwrap()
}

/// What a failed restore must leave as it was: the database (its oid), its
/// schema and data; and nothing the agent made.
fn state(c: &Cluster, db: &str) -> String {
    format!(
        "oid {}\n{}\n{}\n{}",
        c.sql("postgres", &format!("SELECT oid FROM pg_database WHERE datname = '{db}'")).unwrap(),
        schema(c, db).unwrap(),
        fingerprint(c, db).unwrap(),
        leftovers(c)
    )
}

/// The databases and roles the agent makes for a transfer, left now.
fn leftovers(c: &Cluster) -> String {
    c.sql(
        "postgres",
        "SELECT 'databases: ' || coalesce((SELECT string_agg(datname, ' ') FROM pg_database WHERE datname LIKE 'pgbackups%'), '')
             || ', roles: ' || coalesce((SELECT string_agg(rolname, ' ') FROM pg_roles WHERE rolname LIKE 'pgbackups%'), '')",
    )
    .unwrap()
}

const TENANTS: &str = "CREATE ROLE alice LOGIN IN ROLE backups_user; CREATE ROLE bob LOGIN IN ROLE backups_user;
                       GRANT CONNECT ON DATABASE postgres TO alice, bob";

/// A cluster with tenants alice and bob, alice's database `alice_db` (a
/// table `t`), an admin's `shop`, and an agent (default slots).
fn tenants() -> (Cluster, tempfile::TempDir, Agent) {
    let c = Cluster::start().unwrap();
    c.sql("postgres", TENANTS).unwrap();
    c.sql("postgres", "CREATE DATABASE alice_db OWNER alice").unwrap();
    c.sql_as("alice", "alice_db", "CREATE TABLE t (x int); INSERT INTO t VALUES (1)").unwrap();
    create_db(&c, "shop", SHOP).unwrap();
    let store = tempfile::tempdir().unwrap();
    let agent = Agent::start(&c.url("postgres"), &store_url(store.path()), &[], &[]).unwrap();
    (c, store, agent)
}

#[test]
fn an_open_tenant_transaction_delays_no_other_capture_and_no_finish() {
    let (c, _store, agent) = tenants();
    let mine = c.sql_as("alice", "postgres", "SELECT backups.capture('alice_db')").unwrap();
    assert_eq!(wait(&c, &mine, PATIENCE).unwrap(), "completed");

    // Alice queues a capture and a verification, and leaves both
    // transactions open.
    let mut open_capture = client_as(&c, "alice", "postgres");
    open_capture.batch_execute("BEGIN; SELECT backups.capture('alice_db')").unwrap();
    let mut open_verify = client_as(&c, "alice", "postgres");
    open_verify.batch_execute(&format!("BEGIN; SELECT backups.verify('{mine}')")).unwrap();

    // Everyone else's capture is queued at once...
    let started = Instant::now();
    let b = c.sql("postgres", "SET statement_timeout = '5s'; SELECT backups.capture('shop')").unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "capture() waited {:?}", started.elapsed());
    assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    // ...and a scheduled capture that verifies what it makes finishes, its
    // verification queued and run.
    c.sql("postgres", "SELECT backups.schedule('hourly', 'shop', verify => true)").unwrap();
    c.sql("postgres", "UPDATE backups.schedules SET next_run_at = now()").unwrap();
    // (Scheduled captures are named a001, a002...)
    wait_for(&c, "SELECT count(*) FROM backups.list() WHERE id LIKE 'a%'", "1", PATIENCE).unwrap();
    let a = c.sql("postgres", "SELECT id FROM backups.list() WHERE id LIKE 'a%'").unwrap();
    assert_eq!(wait(&c, &a, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    let v = c
        .sql("postgres", &format!("SELECT name FROM backups.transfers WHERE kind = 'verify' AND source = '{a}'"))
        .unwrap();
    assert!(!v.is_empty(), "no verification was queued for {a}: {}", log_of(&c, &a));
    assert_eq!(wait(&c, &v, PATIENCE).unwrap(), "completed", "{}", log_of(&c, &v));

    // Alice's own requests go through once she commits.
    open_capture.batch_execute("COMMIT").unwrap();
    open_verify.batch_execute("COMMIT").unwrap();
    wait_for(
        &c,
        "SELECT count(*) FROM backups.transfers WHERE status NOT IN ('completed') AND database = 'alice_db'",
        "0",
        PATIENCE,
    )
    .unwrap();
}

/// A source whose text does not fit LATIN1, and a LATIN1 target owned by
/// `owner` with contents of its own.
fn latin1_target(c: &Cluster, owner: &str) {
    create_db(
        c,
        "src",
        "CREATE TABLE prices (id int PRIMARY KEY, label text);
         INSERT INTO prices SELECT g, 'price in € ' || g FROM generate_series(1, 200) g;
         CREATE TABLE plain (id int);
         INSERT INTO plain SELECT generate_series(1, 1000);",
    )
    .unwrap();
    c.sql(
        "postgres",
        &format!(
            "CREATE DATABASE latin OWNER {owner} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ),
    )
    .unwrap();
    c.sql("latin", "CREATE TABLE mine (x int); INSERT INTO mine VALUES (1), (2); CREATE SCHEMA extra").unwrap();
}

#[test]
fn a_restore_whose_data_does_not_load_leaves_the_target_as_it_was_on_every_path() {
    let c = Cluster::start().unwrap();
    latin1_target(&c, "postgres");
    c.sql("src", "SELECT lo_from_bytea(0, 'a large object')").unwrap();
    let store = tempfile::tempdir().unwrap();
    let agent = Agent::start(&c.url("postgres"), &store_url(store.path()), &[], &[]).unwrap();
    let before = state(&c, "latin");
    // A parallel (directory-format) backup, and a custom-format one with a
    // large object: both are staged and restored by pg_restore -j.
    for args in ["'src', jobs => 2", "'src'"] {
        let b = capture(&c, args);
        let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'latin', 'latin')")).unwrap();
        assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "failed", "{args}: {}", log_of(&c, &r));
        let log = log_of(&c, &r);
        assert!(log.contains("has no equivalent in encoding \"LATIN1\""), "{args}: {log}");
        assert_eq!(state(&c, "latin"), before, "{args}: {log}\n{}", agent.log_text());
    }
}

#[test]
fn a_tenants_captures_stuck_on_its_own_locks_leave_room_for_others() {
    // Two slots, the default.
    let (c, _store, agent) = tenants();
    let mut lock = client_as(&c, "alice", "alice_db");
    lock.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").unwrap();
    let mine: Vec<String> =
        (0..2).map(|_| c.sql_as("alice", "postgres", "SELECT backups.capture('alice_db')").unwrap()).collect();
    wait_for(&c, &format!("SELECT status FROM backups.transfers WHERE name = '{}'", mine[0]), "running", PATIENCE)
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // An admin's capture of another database runs meanwhile.
    let b = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &b, Duration::from_secs(60)).unwrap(), "completed", "{}", agent.log_text());
    let second =
        c.sql("postgres", &format!("SELECT status FROM backups.transfers WHERE name = '{}'", mine[1])).unwrap();
    assert_eq!(second, "pending", "the tenant's second capture took the other slot");
    // Once the lock goes, the tenant's captures run too.
    lock.batch_execute("ROLLBACK").unwrap();
    for id in &mine {
        assert_eq!(wait(&c, id, PATIENCE).unwrap(), "completed", "{}", log_of(&c, id));
    }
}

#[test]
fn a_restore_whose_agent_stopped_right_after_its_swap_keeps_what_was_written_since() {
    let (c, store) = TestEnv::new()
        .conf("backups.agent_timeout = '4s'")
        .db("shop", SHOP)
        .db("staging", "CREATE TABLE old (x int)")
        .without_agent();
    // The first agent reaches the data through a proxy, which stops it
    // the moment its swap's COMMIT has been answered, before it hears so.
    let proxy = Proxy::start(c.port).unwrap();
    let data_url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port);
    let mut first =
        Agent::start(&c.url("postgres"), &store_url(store.path()), &["--data-url", &data_url], &[]).unwrap();
    let b = capture(&c, "'shop'");
    let pid = Arc::new(AtomicI32::new(first.pid()));
    let stop = pid.clone();
    proxy.on_reply("as it was before", b"COMMIT", move || unsafe {
        libc::kill(stop.load(Ordering::SeqCst), libc::SIGSTOP);
    });
    let old_oid = c.sql("postgres", "SELECT oid FROM pg_database WHERE datname = 'staging'").unwrap();
    let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'staging', 'staging')")).unwrap();
    // The swap committed; the agent is stopped before it could say so.
    let swapped = format!("SELECT count(*) FROM pg_database WHERE datname = 'staging' AND oid <> {old_oid}");
    wait_for(&c, &swapped, "1", PATIENCE).unwrap();
    // The restored database is in use at once.
    c.sql("staging", "CREATE TABLE written_since (x int); INSERT INTO written_since SELECT generate_series(1, 42)")
        .unwrap();
    // Its heartbeats stop: the worker finds the swap done (the database it
    // recorded has the target's name) and ends the restore completed,
    // instead of giving it to the queue again.
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "completed", "{}", log_of(&c, &r));
    let log = log_of(&c, &r);
    assert!(log.contains("after its swap committed"), "{log}");
    // Another agent has nothing to restore again.
    let second = Agent::start(&c.url("postgres"), &store_url(store.path()), &["--agent-id", "second"], &[]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.sql("staging", "SELECT count(*) FROM written_since").unwrap(), "42", "{}", second.log_text());
    assert_eq!(c.sql("postgres", &format!("SELECT attempts FROM backups.transfers WHERE name = '{r}'")).unwrap(), "1");
    // The first agent wakes up: it harms nothing.
    unsafe { libc::kill(first.pid(), libc::SIGCONT) };
    std::thread::sleep(Duration::from_secs(3));
    first.kill9();
    assert_eq!(c.sql("staging", "SELECT count(*) FROM written_since").unwrap(), "42");
    assert_eq!(
        c.sql("postgres", &format!("SELECT status FROM backups.transfers WHERE name = '{r}'")).unwrap(),
        "completed"
    );
    assert_eq!(
        c.sql("staging", "SELECT count(*) FROM customers").unwrap(),
        c.sql("shop", "SELECT count(*) FROM customers").unwrap()
    );
    wait_for(&c, "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgbackups%'", "0", PATIENCE).unwrap();
}

#[test]
fn a_capture_whose_control_database_was_down_is_never_completed_without_its_format_and_key() {
    // (The worker waits out the outage: it is the agent's to survive.)
    let (c, store) =
        TestEnv::new().conf("backups.agent_timeout = '300s'").db("shop", SHOP).db("staging", "").without_agent();
    // The agent reaches the control database through a proxy that goes
    // down right after the claim, for longer than the heartbeat's and the
    // facts' reconnects (15 s each) and shorter than a finish's patience
    // (120 s).
    let proxy = Proxy::start(c.port).unwrap();
    let control = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port);
    let agent = Agent::start(&control, &store_url(store.path()), &["--data-url", &c.url("postgres")], &[]).unwrap();
    // (The first heartbeat comes right after the claim, before the facts
    // of the work are known.)
    proxy.down_after("backups._heartbeat(", Duration::ZERO, Duration::from_secs(40));
    let b = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    let status = wait(&c, &b, Duration::from_secs(180)).unwrap();
    let facts = c
        .sql(
            "postgres",
            &format!(
                "SELECT concat_ws(' ', format, object_key IS NOT NULL, source_size > 0, checksum IS NOT NULL)
                   FROM backups.transfers WHERE name = '{b}'"
            ),
        )
        .unwrap();
    // (The outage came while it ran: it could only be recorded after.)
    let took =
        format!("SELECT finished_at - started_at > interval '15 seconds' FROM backups.transfers WHERE name = '{b}'");
    assert_eq!(c.sql("postgres", &took).unwrap(), "t", "{}", agent.log_text());
    if status == "completed" {
        assert_eq!(facts, "custom t t t", "{}", agent.log_text());
        // It restores.
        let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'staging', 'staging')")).unwrap();
        assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "completed", "{}", log_of(&c, &r));
        assert_eq!(fingerprint(&c, "staging").unwrap(), fingerprint(&c, "shop").unwrap());
    } else {
        // Not completed is fine; completed without what a restore needs is not.
        assert_eq!(status, "failed", "{}", agent.log_text());
    }
}

/// A function that leaves a file behind when it runs (as a superuser
/// owner's code can), in a CHECK every row is loaded through; enough rows
/// (15 MB) that their data streams in before the backup's end.
fn evil(marker: &std::path::Path) -> String {
    format!(
        "CREATE FUNCTION f(x int) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN
             IF x = 1 THEN
                 COPY (SELECT 1) TO PROGRAM 'touch {m}';
             END IF;
             RETURN true;
         END $$;
         CREATE TABLE t (x int CHECK (f(x)), pad text);
         INSERT INTO t SELECT g, md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text)
           FROM generate_series(1, 150000) g;",
        m = marker.display()
    )
}

#[test]
fn a_backup_replaced_in_storage_executes_nothing() {
    let (c, _store) = TestEnv::new()
        .db("shop", SHOP)
        .db("staging", "CREATE TABLE mine (x int); INSERT INTO mine VALUES (1)")
        .without_agent();
    let marks = tempfile::tempdir().unwrap();
    std::fs::set_permissions(marks.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let marker = marks.path().join("it-ran");
    create_db(&c, "other", &evil(&marker)).unwrap();
    std::fs::remove_file(&marker).unwrap();
    let store = tempfile::tempdir().unwrap();
    let agent = Agent::start(&c.url("postgres"), &store_url(store.path()), &[], &[]).unwrap();
    let b = capture(&c, "'shop'");
    let o = capture(&c, "'other'");
    // Someone with write access to storage puts the other database's
    // backup where shop's is.
    std::fs::copy(
        store.path().join(pgbackups_e2e::data::home(&c)).join(format!("other/{o}/backup.dump.zst")),
        store.path().join(pgbackups_e2e::data::home(&c)).join(format!("shop/{b}/backup.dump.zst")),
    )
    .unwrap();
    let before = state(&c, "staging");
    let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'staging', 'staging')")).unwrap();
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "failed", "{}", agent.log_text());
    let log = log_of(&c, &r);
    assert!(log.contains("checksum mismatch"), "{log}");
    assert!(!marker.exists(), "the substituted archive's code ran:\n{log}");
    assert_eq!(state(&c, "staging"), before, "{log}");
}

#[test]
fn a_name_recreated_by_another_owner_sees_and_expires_nothing_of_the_previous_owners() {
    let c = Cluster::start_with(&["backups.keep_manual = 1"]).unwrap();
    c.sql("postgres", TENANTS).unwrap();
    c.sql("postgres", "CREATE DATABASE shop OWNER alice").unwrap();
    c.sql_as("alice", "shop", "CREATE TABLE t (x int); INSERT INTO t VALUES (1)").unwrap();
    let store = tempfile::tempdir().unwrap();
    let agent =
        Agent::start(&c.url("postgres"), &store_url(store.path()), &["--lock-wait-timeout", "1s"], &[]).unwrap();
    let hers = c.sql_as("alice", "postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &hers, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    // And a failure of hers: a table locked past the lock wait.
    let mut lock = client_as(&c, "alice", "shop");
    lock.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").unwrap();
    let failed = c.sql_as("alice", "postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &failed, PATIENCE).unwrap(), "failed");
    drop(lock);
    assert_eq!(
        c.sql_as("alice", "postgres", "SELECT status FROM backups.health() WHERE database = 'shop'").unwrap(),
        "ok"
    );

    c.sql("postgres", "DROP DATABASE shop WITH (FORCE)").unwrap();
    c.sql("postgres", "CREATE DATABASE shop OWNER bob").unwrap();
    c.sql_as("bob", "shop", "CREATE TABLE u (y int)").unwrap();
    // Bob's database has no backup and no failure yet.
    assert_eq!(
        c.sql_as("bob",
            "postgres",
            "SELECT concat_ws(' ', status, coalesce(last_backup, '-'), coalesce(last_failure, '-')) FROM backups.health() WHERE database = 'shop'"
        ).unwrap(),
        "",
        "bob sees a database he never backed up"
    );
    let info = c
        .sql_as("bob", "postgres", "SELECT string_agg(field || '=' || value, '; ') FROM backups.database_info('shop')")
        .unwrap();
    assert!(info.contains("backups=0 completed") && !info.contains("latest backup"), "{info}");
    // Bob's captures, one manual backup kept per database: only his own expire.
    let his: Vec<String> = (0..2)
        .map(|_| {
            let id = c.sql_as("bob", "postgres", "SELECT backups.capture('shop')").unwrap();
            assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
            id
        })
        .collect();
    wait_for(&c, &format!("SELECT status FROM backups.transfers WHERE name = '{}'", his[0]), "expired", PATIENCE)
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.sql("postgres", &format!("SELECT status FROM backups.transfers WHERE name = '{hers}'")).unwrap(),
        "completed"
    );
    assert!(
        store.path().join(pgbackups_e2e::data::home(&c)).join(format!("shop/{hers}/backup.dump.zst")).exists(),
        "alice's backup was purged"
    );
    let health_of_shop = "SELECT concat_ws(' ', status, last_backup, coalesce(last_failure, '-'))
                            FROM backups.health() WHERE database = 'shop'";
    let health = c.sql_as("bob", "postgres", health_of_shop).unwrap();
    assert_eq!(health, format!("ok {} -", his[1]));
    // A restore replaces his database with another (a new oid): its
    // history goes with the name he still owns.
    let r = c.sql("postgres", &format!("SELECT backups.restore('{}', 'shop', 'shop')", his[1])).unwrap();
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "completed", "{}", log_of(&c, &r));
    assert_eq!(c.sql_as("bob", "postgres", health_of_shop).unwrap(), format!("ok {} -", his[1]));
    let info =
        c.sql_as("bob", "postgres", "SELECT value FROM backups.database_info('shop') WHERE field = 'backups'").unwrap();
    assert_eq!(info, "1 completed");
}

#[test]
fn many_downloads_of_a_link_at_once_leave_connections_for_others_and_stage_nothing() {
    const SECRET: &str = "bad-days-link-secret";
    let port = free_port().unwrap();
    let (c, store) = TestEnv::new()
        .conf("max_connections = 30")
        .conf(&format!("backups.link_base_url = 'http://127.0.0.1:{port}'"))
        .conf(&format!("backups.link_secret = '{SECRET}'"))
        .db("shop", SHOP)
        .without_agent();
    let staging = tempfile::tempdir().unwrap();
    let staging_dir = staging.path().display().to_string();
    let listen = format!("127.0.0.1:{port}");
    let agent = Agent::start(
        &c.url("postgres"),
        &store_url(store.path()),
        &["--listen", &listen, "--link-secret", SECRET, "--staging-dir", &staging_dir],
        &[],
    )
    .unwrap();
    let b = capture(&c, "'shop', jobs => 2");
    let url = c.sql("postgres", &format!("SELECT backups.url('{b}')")).unwrap();
    let out = tempfile::tempdir().unwrap();
    // Watch the connections the cluster has left and the staging area.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let (done, conn, dir) = (done.clone(), c.connstr("postgres"), staging.path().to_path_buf());
        std::thread::spawn(move || {
            let (mut refused, mut most_staged) = (0, 0u64);
            while !done.load(Ordering::SeqCst) {
                if postgres::Client::connect(&conn, postgres::NoTls)
                    .and_then(|mut k| k.simple_query("SELECT 1"))
                    .is_err()
                {
                    refused += 1;
                }
                most_staged = most_staged.max(du(&dir));
                std::thread::sleep(Duration::from_millis(50));
            }
            (refused, most_staged)
        })
    };
    let downloads: Vec<_> = (0..60)
        .map(|i| {
            let (url, file) = (url.clone(), out.path().join(format!("{i}.tar")));
            std::thread::spawn(move || {
                let o = Command::new("curl")
                    .args(["-s", "-o"])
                    .arg(&file)
                    .args(["-w", "%{http_code}", &url])
                    .output()
                    .unwrap();
                (String::from_utf8_lossy(&o.stdout).to_string(), file)
            })
        })
        .collect();
    let results: Vec<(String, std::path::PathBuf)> = downloads.into_iter().map(|d| d.join().unwrap()).collect();
    done.store(true, Ordering::SeqCst);
    let (refused, most_staged) = watch.join().unwrap();
    let codes: Vec<&str> = results.iter().map(|(code, _)| code.as_str()).collect();
    assert!(codes.iter().all(|c| *c == "200" || *c == "503"), "{codes:?}\n{}", agent.log_text());
    let served: Vec<&std::path::PathBuf> = results.iter().filter(|(code, _)| code == "200").map(|(_, f)| f).collect();
    assert!(served.len() >= 8, "{codes:?}");
    assert_eq!(refused, 0, "the cluster refused connections while the links were served");
    assert!(most_staged < 1 << 20, "{most_staged} bytes staged for a link");
    // Every download is the same tar, which pg_restore takes.
    let first = std::fs::read(served[0]).unwrap();
    assert!(served.iter().all(|f| std::fs::read(f).unwrap() == first));
    let x = tempfile::tempdir().unwrap();
    let o = Command::new("tar").arg("xf").arg(served[0]).arg("-C").arg(x.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.sql("postgres", "CREATE DATABASE fetched").unwrap();
    let o = Command::new(c.program("pg_restore"))
        .args(["--no-acl", "--no-owner", "--exit-on-error", "-d", &c.connstr("fetched")])
        .arg(x.path().join(&b))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fingerprint(&c, "fetched").unwrap(), fingerprint(&c, "shop").unwrap());
}

/// Bytes under `dir`.
fn du(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The most memory process `pid` has used (VmHWM), in bytes.
fn peak_memory(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// What a streamed restore may hold, whatever its rows (docs/architecture.md: "Memory").
const RESTORE_MEMORY_BOUND: u64 = 128 << 20;

#[test]
fn a_300_mb_value_restores_within_the_documented_memory_bound() {
    let c = Cluster::start().unwrap();
    create_db(
        &c,
        "big",
        "CREATE TABLE blob (id int PRIMARY KEY, data bytea);
         INSERT INTO blob VALUES (1, convert_to(repeat('x', 300 * 1024 * 1024), 'UTF8')), (2, '\\x00ff');",
    )
    .unwrap();
    create_db(&c, "staging", "").unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut capturing = Agent::start(&c.url("postgres"), &store_url(store.path()), &[], &[]).unwrap();
    let b = capture(&c, "'big'");
    capturing.terminate(Duration::from_secs(30)).unwrap();
    // A fresh agent for the restore alone.
    let agent = Agent::start(&c.url("postgres"), &store_url(store.path()), &[], &[]).unwrap();
    let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'staging', 'staging')")).unwrap();
    assert_eq!(wait(&c, &r, Duration::from_secs(600)).unwrap(), "completed", "{}", agent.log_text());
    let peak = peak_memory(agent.pid());
    assert_eq!(
        c.sql("staging", "SELECT string_agg(id || ':' || length(data) || ':' || md5(data), ' ' ORDER BY id) FROM blob")
            .unwrap(),
        c.sql("big", "SELECT string_agg(id || ':' || length(data) || ':' || md5(data), ' ' ORDER BY id) FROM blob")
            .unwrap()
    );
    eprintln!("the agent peaked at {} MB restoring a 300 MB value", peak >> 20);
    assert!(peak < RESTORE_MEMORY_BOUND, "the agent peaked at {} MB restoring a 300 MB value", peak >> 20);
}

#[test]
fn no_shadow_is_left_after_a_failed_restore_and_a_killed_agents_are_swept_at_start() {
    let c = Cluster::start_with(&["backups.agent_timeout = '3s'"]).unwrap();
    // The documented data role for restores (docs/operations.md: "The agent's roles"),
    // no superuser, restoring into an ordinary owner's databases.
    c.sql(
        "postgres",
        "CREATE ROLE app; CREATE ROLE restorer LOGIN CREATEDB CREATEROLE BYPASSRLS IN ROLE pg_read_all_data, pg_signal_backend;
         GRANT app TO restorer WITH ADMIN OPTION",
    )
    .unwrap();
    latin1_target(&c, "app");
    c.sql("latin", "ALTER TABLE mine OWNER TO app; ALTER SCHEMA extra OWNER TO app").unwrap();
    let store = tempfile::tempdir().unwrap();
    let data = format!("postgres://restorer@127.0.0.1:{}/postgres", c.port);
    let agent_args = ["--data-url", data.as_str()];
    let mut agent = Agent::start(&c.url("postgres"), &store_url(store.path()), &agent_args, &[]).unwrap();
    let b = capture(&c, "'src'");
    let before = state(&c, "latin");
    for i in 0..20 {
        let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'latin', 'latin')")).unwrap();
        assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "failed", "try {i}: {}", log_of(&c, &r));
        // Recorded only once everything it made is gone.
        assert_eq!(state(&c, "latin"), before, "try {i}: {}\n{}", log_of(&c, &r), agent.log_text());
    }

    // An agent killed mid-restore leaves its shadow and its login; the next
    // agent to start drops them once the restore is over.
    create_db(&c, "many", &pgbackups_e2e::data::noise(150_000, 24)).unwrap();
    let m = capture(&c, "'many'");
    c.sql("postgres", "CREATE DATABASE target OWNER app").unwrap();
    let r = c.sql("postgres", &format!("SELECT backups.restore('{m}', 'target', 'target')")).unwrap();
    wait_for(
        &c,
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname LIKE 'pgbackups_shadow_%' AND query ILIKE 'COPY%'",
        "t",
        PATIENCE,
    )
    .unwrap();
    agent.kill9();
    c.sql("postgres", &format!("SELECT backups.cancel('{r}')")).unwrap();
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "cancelled");
    assert_ne!(leftovers(&c), "databases: , roles:", "the killed agent left nothing to sweep");
    let _next = Agent::start(&c.url("postgres"), &store_url(store.path()), &agent_args, &[]).unwrap();
    wait_for(&c, "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgbackups%'", "0", Duration::from_secs(30))
        .unwrap();
    wait_for(&c, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgbackups%'", "0", Duration::from_secs(30))
        .unwrap();
}

/// Issue 21's review: one admin connection now carries a transfer's
/// statements to the cluster from start to end. The server may close it
/// while the archive loads (an `idle_session_timeout`, a DBA's
/// `pg_terminate_backend`): the restore opens another and completes. And
/// as it sends more statements through it, a lock held a little longer
/// than it waits for one fails none of them.
#[test]
fn a_restore_whose_admin_connection_the_server_closed_mid_load_completes() {
    // Each row of `paced` takes 0.2 s to check: its load is a window.
    let paced =
        "CREATE FUNCTION public.slow_ok(n int) RETURNS boolean LANGUAGE sql AS $$ SELECT pg_sleep(0.2) IS NOT NULL $$;
                 CREATE TABLE paced (n int CHECK (public.slow_ok(n))); INSERT INTO paced SELECT generate_series(1, 30)";
    let TestEnv { c, store: _store, agent, .. } =
        TestEnv::new().db("shop", &format!("{SHOP}; {paced}")).db("staging", "CREATE TABLE old (x int)").start();
    let b = capture(&c, "'shop'");
    let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'staging', 'staging')")).unwrap();
    let loading =
        "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'pgbackups_shadow_%' AND query ILIKE 'COPY%paced%'";
    wait_for(&c, loading, "1", PATIENCE).unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_text()));
    // The admin connection, idle since it opened the shadow to the login
    // that applies the archive.
    let admin = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE state = 'idle' AND query LIKE 'REVOKE ALL ON DATABASE %GRANT CONNECT, TEMPORARY%'";
    assert_eq!(
        c.sql("postgres", admin).unwrap(),
        "1",
        "{}",
        c.sql("postgres", "SELECT string_agg(state || ': ' || query, E'\\n') FROM pg_stat_activity").unwrap()
    );
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "completed", "{}", log_of(&c, &r));
    assert_eq!(fingerprint(&c, "staging").unwrap(), fingerprint(&c, "shop").unwrap());
    assert!(agent.log_text().contains("the connection to the cluster was closed"), "{}", agent.log_text());

    // A tenant's open COMMENT ON DATABASE holds the target longer than the
    // agent's statements wait for a lock (5 s): an in-place restore's DROP
    // gives up waiting, and is tried again until the lock is let go.
    let mut holder = client_as(&c, "postgres", "postgres");
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("COMMENT ON DATABASE staging IS 'held'").unwrap();
    let seen = agent.log_text().len();
    let r =
        c.sql("postgres", &format!("SELECT backups.restore('{b}', 'staging', 'staging', in_place => true)")).unwrap();
    // The DROP waits for the lock, gives up, and is tried again.
    let dropping =
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'DROP DATABASE%staging%'";
    wait_for(&c, dropping, "1", PATIENCE).unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_text()));
    let deadline = Instant::now() + PATIENCE;
    while !agent.log_text()[seen..].contains("waited for a lock and gave up") {
        assert!(Instant::now() < deadline, "the DROP never gave up waiting: {}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    tx.rollback().unwrap();
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "completed", "{}", log_of(&c, &r));
    assert_eq!(fingerprint(&c, "staging").unwrap(), fingerprint(&c, "shop").unwrap());
}
