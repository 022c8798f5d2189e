//! The shell verbs against a control database, as scripts and CI use them
//! (`heroku pg:backups:*`): each calls the SQL function, prints its answer
//! (`--json` parses), and a transfer that fails exits non-zero with its
//! error.

use std::process::Output;

use pgbackups_e2e::agent::shell;
use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{fingerprint, SHOP};
use pgbackups_e2e::env::TestEnv;

struct Shell {
    url: String,
    storage: String,
}

impl Shell {
    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--database-url", &self.url, "--storage", &self.storage]);
        shell(&all, &[])
    }

    /// Its stdout; the test fails (with stderr) unless it exits 0.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "pgbackups {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("pgbackups {args:?} printed no JSON ({e}): {text}"))
    }

    /// Its stderr; the test fails unless it exits non-zero.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "pgbackups {args:?} exited 0: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8(out.stderr).unwrap()
    }
}

fn ids(list: &serde_json::Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn every_verb_calls_the_control_database_and_failures_exit_non_zero() {
    let e = TestEnv::new().db("shop", SHOP).links().args(&["--lock-wait-timeout", "1s"]).start();
    let c: &Cluster = &e.c;
    let sh = Shell { url: c.url("postgres"), storage: e.storage() };

    // capture --wait: the id, completed.
    let done = sh.json(&["capture", "shop", "--wait"]);
    assert_eq!((done["id"].as_str(), done["status"].as_str()), (Some("b001"), Some("completed")), "{done}");
    let queued = sh.json(&["capture", "shop"]);
    assert_eq!(queued["id"], "b002");
    assert_eq!(sh.ok(&["capture", "shop", "--wait"]).trim(), "b003");
    let list = sh.json(&["list"]);
    assert!(["b001", "b002", "b003"].iter().all(|id| ids(&list).contains(&id.to_string())), "{list}");
    assert!(sh.ok(&["list"]).contains("b001"));
    // A page at a time.
    assert_eq!(ids(&sh.json(&["list", "--limit", "1"])), vec!["b003".to_string()]);
    assert_eq!(ids(&sh.json(&["list", "--limit", "1", "--before", "b003"])), vec!["b002".to_string()]);
    let info = sh.json(&["info", "b001"]);
    assert_eq!(info["status"], "completed");
    assert_eq!(info["database"], "shop");
    assert!(sh.ok(&["info", "b001"]).contains("status:"));

    // url and download.
    let url = sh.json(&["url", "b001"]);
    assert!(url["url"].as_str().unwrap().starts_with(e.base()), "{url}");
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("b001.dump");
    sh.ok(&["download", "b001", "-o", file.to_str().unwrap()]);
    assert!(std::fs::read(&file).unwrap().starts_with(b"PGDMP"));

    // restore, copy, verify, each followed to its end.
    c.sql("postgres", "CREATE DATABASE shop_copy").unwrap();
    sh.ok(&["restore", "b001", "shop_copy", "--confirm", "shop_copy", "--wait"]);
    assert_eq!(fingerprint(c, "shop_copy").unwrap(), fingerprint(c, "shop").unwrap());
    c.sql("postgres", "CREATE DATABASE shop_two").unwrap();
    sh.ok(&["copy", "shop", "shop_two", "--confirm", "shop_two", "--wait"]);
    assert_eq!(fingerprint(c, "shop_two").unwrap(), fingerprint(c, "shop").unwrap());
    let verified = sh.json(&["verify", "b001", "--wait"]);
    assert_eq!(verified["status"], "completed", "{verified}");
    // Tables beside the live ones.
    let t = sh.json(&["restore-tables", "b001", "public.customers", "orders", "--into-schema", "back", "--wait"]);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(
        c.sql("shop", "SELECT (SELECT count(*) FROM back.customers) = (SELECT count(*) FROM customers)").unwrap(),
        "t"
    );
    let said = sh.fails(&["restore-tables", "b001", "no_such_table", "--wait"]);
    assert!(said.contains("matches no table"), "{said}");
    c.sql("shop", "DROP SCHEMA back CASCADE").unwrap();
    // A wrong confirmation is the SQL function's error, and exits 1.
    let said = sh.fails(&["restore", "b001", "shop_copy", "--confirm", "shop"]);
    assert!(said.contains("confirm"), "{said}");

    // Schedules.
    let schedules = sh.json(&["schedule", "daily 05:00", "--database", "shop"]);
    assert_eq!(schedules[0]["database"], "shop", "{schedules}");
    assert_eq!(sh.json(&["schedules"]).as_array().unwrap().len(), 1);
    sh.ok(&["unschedule", "shop"]);
    assert_eq!(sh.json(&["schedules"]).as_array().unwrap().len(), 0);
    assert!(sh.fails(&["unschedule", "shop"]).contains("shop"));

    // delete: the id twice.
    assert!(sh.fails(&["delete", "b002", "--confirm", "b003"]).contains("does not match"));
    sh.ok(&["delete", "b002", "--confirm", "b002"]);
    assert!(!ids(&sh.json(&["list"])).contains(&"b002".to_string()));

    // A capture that fails (a lock held past --lock-wait-timeout): exit 1,
    // with the transfer's error.
    let mut holder = c.client("shop").unwrap();
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE").unwrap();
    let said = sh.fails(&["capture", "shop", "--wait"]);
    assert!(said.contains("failed") && said.contains("LOCK TABLE"), "{said}");
    tx.rollback().unwrap();
    // A restore that fails (a URL the agent may not fetch): exit 1.
    let said = sh.fails(&["restore", "http://127.0.0.1:9/x.dump", "shop_copy", "--confirm", "shop_copy", "--wait"]);
    assert!(said.contains("failed"), "{said}");
    assert_eq!(fingerprint(c, "shop_copy").unwrap(), fingerprint(c, "shop").unwrap());

    // cancel: of one still queued (no agent to run it).
    drop(e.agent);
    let pending = sh.json(&["capture", "shop"]);
    let id = pending["id"].as_str().unwrap();
    sh.ok(&["cancel", id]);
    assert_eq!(
        c.sql("postgres", &format!("SELECT status FROM backups.transfers WHERE name = '{id}'")).unwrap(),
        "cancelled"
    );
    let said = sh.fails(&["cancel", id]);
    assert!(said.contains(&format!("{id} has already finished (cancelled)")), "{said}");
}
