//! Fidelity: a rich database (tests/fixtures/rich.sql) through every path
//! (capture -> restore, parallel capture -> restore, link -> curl ->
//! pg_restore, copy) comes back identical: schema, data, sequences and large
//! objects. Any difference fails with a readable diff.

use std::process::Command;
use std::time::Duration;

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::{free_port, Cluster};
use pgbackups_e2e::data::{assert_same_database, wait};

const PATIENCE: Duration = Duration::from_secs(120);

#[test]
fn a_rich_database_survives_every_round_trip() {
    let port = free_port().unwrap();
    let secret = "fidelity-secret";
    let c = Cluster::start_with(&[
        &format!("backups.link_base_url = 'http://127.0.0.1:{port}'"),
        &format!("backups.link_secret = '{secret}'"),
    ])
    .unwrap();
    c.sql("postgres", "CREATE DATABASE rich").unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/rich.sql");
    let o = Command::new("psql").args(["-X", "-q", "-d", &c.connstr("rich"), "-f", fixture]).output().unwrap();
    assert!(o.status.success(), "loading the fixture: {}", String::from_utf8_lossy(&o.stderr));
    let store = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &c.url("postgres"),
        &format!("file://{}", store.path().display()),
        &["--listen", &format!("127.0.0.1:{port}"), "--link-secret", secret],
        &[],
    )
    .unwrap();
    let done = |id: &str| assert_eq!(wait(&c, id, PATIENCE).unwrap(), "completed", "{id}: {}", agent.log_text());
    for db in ["via_restore", "via_parallel", "via_link", "via_copy"] {
        c.sql("postgres", &format!("CREATE DATABASE {db}")).unwrap();
    }

    // capture -> restore
    let b = c.sql("postgres", "SELECT backups.capture('rich')").unwrap();
    done(&b);
    let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'via_restore', 'via_restore')")).unwrap();
    done(&r);
    assert_same_database(&c, "rich", "via_restore", "capture -> restore");

    // capture (jobs => 2) -> restore
    let p = c.sql("postgres", "SELECT backups.capture('rich', jobs => 2)").unwrap();
    done(&p);
    let r = c.sql("postgres", &format!("SELECT backups.restore('{p}', 'via_parallel', 'via_parallel')")).unwrap();
    done(&r);
    assert_same_database(&c, "rich", "via_parallel", "parallel capture -> restore");

    // capture -> link -> curl -> pg_restore (Heroku's documented command)
    let url = c.sql("postgres", &format!("SELECT backups.url('{b}')")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("latest.dump");
    let st = Command::new("curl").args(["-sfS", "-o"]).arg(&file).arg(&url).status().unwrap();
    assert!(st.success());
    let o = Command::new("pg_restore")
        .args(["--clean", "--if-exists", "--no-acl", "--no-owner", "-d", &c.connstr("via_link")])
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_database(&c, "rich", "via_link", "link -> curl -> pg_restore");

    // copy
    let cp = c.sql("postgres", "SELECT backups.copy('rich', 'via_copy', 'via_copy')").unwrap();
    done(&cp);
    assert_same_database(&c, "rich", "via_copy", "copy");
    // The copy really took both roads: parallel COPY streams and pg_dump.
    let streams = c
        .sql("postgres", &format!("SELECT count(*) FROM backups.transfer_logs l JOIN backups.transfers t ON t.id = l.transfer_id WHERE t.name = '{cp}' AND l.message LIKE 'copying table %'"))
        .unwrap();
    assert_ne!(streams, "0", "no table went through a parallel COPY stream");

    // The comparison does catch differences: one changed value, one dropped index.
    c.sql("via_copy", "UPDATE sales.oddities SET f = 0 WHERE id = 1").unwrap();
    let caught = std::panic::catch_unwind(|| assert_same_database(&c, "rich", "via_copy", "tampered copy"));
    let msg = *caught.expect_err("a changed row went unnoticed").downcast::<String>().unwrap();
    assert!(msg.contains("data differs") && msg.contains("sales.oddities"), "{msg}");
    c.sql("via_restore", "DROP INDEX sales.orders_paid_idx").unwrap();
    let caught = std::panic::catch_unwind(|| assert_same_database(&c, "rich", "via_restore", "tampered restore"));
    let msg = *caught.expect_err("a dropped index went unnoticed").downcast::<String>().unwrap();
    assert!(msg.contains("schema differs") && msg.contains("orders_paid_idx"), "{msg}");

    // No path reported warnings.
    assert_eq!(c.sql("postgres", "SELECT coalesce(sum(warnings), 0) FROM backups.transfers").unwrap(), "0");
}
