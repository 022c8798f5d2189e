//! Pins end to end: a kept backup survives the retention that expires its
//! unkept siblings (manual backups beyond keep_manual, and a schedule's
//! daily/weekly/monthly policy), takes no slot of that retention, cannot be
//! deleted until unkept, and retention applies to it again once unkept.

use std::path::Path;
use std::time::Duration;

use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::wait_for;
use pgbackups_e2e::env::{capture, TestEnv};

const PATIENCE: Duration = Duration::from_secs(60);

fn status(c: &Cluster, id: &str) -> String {
    c.sql("postgres", &format!("SELECT status FROM backups.transfers WHERE name = '{id}'")).unwrap()
}

fn stored(store: &Path, id: &str) -> bool {
    store.join("shop").join(id).join("backup.dump.zst").exists()
}

/// The error psql prints for `sql`, which must fail.
fn error_of(c: &Cluster, sql: &str) -> String {
    format!("{:#}", c.sql("postgres", sql).expect_err(sql))
}

#[test]
fn a_kept_backup_survives_manual_retention_takes_no_slot_and_cannot_be_deleted_until_unkept() {
    // The worker's tick runs every second with this limit.
    let TestEnv { c, store, agent, .. } = TestEnv::new()
        .conf("backups.keep_manual = 2")
        .db("shop", "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
        .start();
    let b1 = capture(&c, "'shop'");
    let b2 = capture(&c, "'shop'");
    assert_eq!(c.sql("postgres", &format!("SELECT backups.keep('{b2}')")).unwrap(), "kept");
    // Again: no change, no second log line.
    assert_eq!(c.sql("postgres", &format!("SELECT backups.keep('{b2}')")).unwrap(), "kept");
    assert_eq!(
        c.sql("postgres", "SELECT string_agg(id || '=' || kept, ',' ORDER BY id) FROM backups.list()").unwrap(),
        format!("{b1}=false,{b2}=true")
    );
    let info = c
        .sql("postgres", &format!("SELECT string_agg(field || ': ' || value, E'\\n') FROM backups.info('{b2}')"))
        .unwrap();
    assert!(info.contains("kept: since ") && info.contains("by postgres"), "{info}");
    assert_eq!(info.matches("kept by postgres").count(), 1, "{info}");
    // Storage says so too (kept.json beside the manifest), for adoption.
    let marker = |id: &str| store.path().join(pgbackups_e2e::data::home(&c)).join("shop").join(id).join("kept.json");
    wait_for(&c, &format!("SELECT kept_stored FROM backups.transfers WHERE name = '{b2}'"), "t", PATIENCE).unwrap();
    let said: serde_json::Value = serde_json::from_slice(&std::fs::read(marker(&b2)).unwrap()).unwrap();
    assert_eq!(said["kept_by"], "postgres", "{said}");

    // b3 makes two unkept backups (b1, b3) and one kept: keep_manual = 2
    // leaves all three, since the kept one takes no slot.
    let b3 = capture(&c, "'shop'");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(&c, &b1), "completed", "a kept backup took the slot of an unkept one");
    // b4: three unkept now, so the oldest unkept one (b1) expires; b2 stays.
    let b4 = capture(&c, "'shop'");
    wait_for(&c, &format!("SELECT status FROM backups.transfers WHERE name = '{b1}'"), "expired", PATIENCE).unwrap();
    wait_for(&c, &format!("SELECT purged_at IS NOT NULL FROM backups.transfers WHERE name = '{b1}'"), "t", PATIENCE)
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status(&c, &b2), "completed");
    assert!(
        stored(&store.path().join(pgbackups_e2e::data::home(&c)), &b2)
            && !stored(&store.path().join(pgbackups_e2e::data::home(&c)), &b1),
        "{}",
        agent.log_text()
    );

    // delete() refuses a kept backup, and says how to unkeep it.
    let e = error_of(&c, &format!("SELECT backups.delete('{b2}')"));
    assert!(e.contains(&format!("{b2} is kept")) && e.contains(&format!("SELECT backups.keep('{b2}', false);")), "{e}");
    assert_eq!(status(&c, &b2), "completed");

    // Only completed, existing captures can be kept.
    let e = error_of(&c, &format!("SELECT backups.keep('{b1}')"));
    assert!(e.contains(&format!("cannot keep {b1}: it is expired, not completed")) && e.contains("HINT"), "{e}");
    let e = error_of(&c, "SELECT backups.keep('b999')");
    assert!(e.contains("b999"), "{e}");
    let e = error_of(&c, "SELECT backups.keep(NULL)");
    assert!(e.contains("needs the id of a backup"), "{e}");

    // Pins are an admin's act, as delete() is.
    c.sql("postgres", "CREATE ROLE alice LOGIN IN ROLE backups_user").unwrap();
    let out = std::process::Command::new(c.program("psql"))
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &c.port.to_string(), "-U", "alice", "-d", "postgres"])
        .args(["-c", &format!("SELECT backups.keep('{b4}')")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied for function keep"), "{out:?}");

    // Unkept, it is the oldest of three unkept backups beyond keep_manual = 2, and goes.
    assert_eq!(c.sql("postgres", &format!("SELECT backups.keep('{b2}', false)")).unwrap(), "not kept");
    wait_for(&c, &format!("SELECT status FROM backups.transfers WHERE name = '{b2}'"), "expired", PATIENCE).unwrap();
    let log = c
        .sql("postgres", &format!("SELECT string_agg(value, E'\\n') FROM backups.info('{b2}') WHERE field = 'log'"))
        .unwrap();
    assert!(log.contains("kept by postgres") && log.contains("unkept by postgres") && log.contains("expired"), "{log}");
    assert_eq!(status(&c, &b3), "completed");
    assert_eq!(status(&c, &b4), "completed");
    // Unkept, its marker goes.
    c.sql("postgres", &format!("SELECT backups.keep('{b4}')")).unwrap();
    wait_for(&c, &format!("SELECT kept_stored FROM backups.transfers WHERE name = '{b4}'"), "t", PATIENCE).unwrap();
    assert!(marker(&b4).exists());
    c.sql("postgres", &format!("SELECT backups.keep('{b4}', false)")).unwrap();
    wait_for(&c, &format!("SELECT kept_stored FROM backups.transfers WHERE name = '{b4}'"), "f", PATIENCE).unwrap();
    assert!(!marker(&b4).exists());
}

#[test]
fn a_kept_scheduled_backup_survives_its_schedules_retention_and_takes_no_slot() {
    let (c, _store) = TestEnv::new().db("shop", "CREATE TABLE t (x int)").without_agent();
    c.sql(
        "postgres",
        "SELECT backups.schedule('daily 02:00', database => 'shop', retain_daily => 2, retain_weekly => 0, retain_monthly => 0)",
    )
    .unwrap();
    // Five scheduled backups a day apart, a001 the oldest; no agent: the
    // worker's retention needs none (nothing is stored to purge). Keep the
    // newest and the oldest in the same transaction, before the worker's
    // tick sees them. Retention then keeps the newest unkept backup of each
    // of the last 2 days that have one: a004 and a003.
    let ids: Vec<String> = (0..5).map(|_| c.sql("postgres", "SELECT backups._next_name('a')").unwrap()).collect();
    let mut sql = String::from("BEGIN;");
    for (id, day) in ids.iter().zip((0..5).rev()) {
        sql += &format!(
            "INSERT INTO backups.transfers (name, kind, status, database, scheduled, created_at, finished_at)
             VALUES ('{id}', 'capture', 'completed', 'shop', true, now() - interval '{day} days', now() - interval '{day} days');"
        );
    }
    sql += &format!("SELECT backups.keep('{}'), backups.keep('{}'); COMMIT;", ids[4], ids[0]);
    assert_eq!(c.sql("postgres", &sql).unwrap(), "kept|kept");
    wait_for(&c, &format!("SELECT status FROM backups.transfers WHERE name = '{}'", ids[1]), "expired", PATIENCE)
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let statuses: Vec<String> = ids.iter().map(|id| status(&c, id)).collect();
    assert_eq!(statuses, ["completed", "expired", "completed", "completed", "completed"], "{ids:?}");
    // Unkept, the oldest falls to the policy too.
    c.sql("postgres", &format!("SELECT backups.keep('{}', false)", ids[0])).unwrap();
    wait_for(&c, &format!("SELECT status FROM backups.transfers WHERE name = '{}'", ids[0]), "expired", PATIENCE)
        .unwrap();
    assert_eq!(status(&c, &ids[4]), "completed");
}
