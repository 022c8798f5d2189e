//! Events: every status change of a transfer is a NOTIFY on channel
//! `backups_events` with a JSON payload (id, kind, status, database,
//! error), which a LISTENing client receives at commit.

use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::data::{wait, SHOP};
use pgbackups_e2e::env::TestEnv;

/// The events received for transfer `id` until one with a final status.
fn events_of(listener: &mut postgres::Client, id: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let mut batch = listener.notifications();
        let mut it = batch.timeout_iter(Duration::from_millis(500));
        while let Ok(Some(n)) = it.next() {
            assert_eq!(n.channel(), "backups_events");
            let v: serde_json::Value = serde_json::from_str(n.payload()).expect("a JSON payload");
            if v["id"] == id {
                let last = ["completed", "failed", "cancelled"].contains(&v["status"].as_str().unwrap_or_default());
                seen.push(v);
                if last {
                    return seen;
                }
            }
        }
    }
    panic!("no final event for {id}: {seen:?}");
}

#[test]
fn a_listening_client_receives_every_status_change() {
    let (c, store) = TestEnv::new().db("shop", SHOP).without_agent();
    let mut listener = c.client("postgres").unwrap();
    listener.batch_execute("LISTEN backups_events").unwrap();
    let agent = Agent::start(&c.url("postgres"), &format!("file://{}", store.path().display()), &[], &[]).unwrap();

    let b = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    let events = events_of(&mut listener, &b);
    let statuses: Vec<&str> = events.iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["pending", "running", "completed"], "{events:?}\n{}", agent.log_text());
    assert_eq!(events[2]["kind"], "capture");
    assert_eq!(events[2]["database"], "shop");
    assert!(events[2]["error"].is_null());

    // A failure carries its error's first line.
    let f = c.sql("postgres", "SELECT backups.capture(source => 'nowhere')").unwrap();
    let events = events_of(&mut listener, &f);
    let last = events.last().unwrap();
    assert_eq!(last["status"], "failed", "{events:?}");
    let error = last["error"].as_str().unwrap();
    assert!(error.contains("unknown source \"nowhere\"") && !error.contains('\n'), "{error}");
    assert_eq!(wait(&c, &f, Duration::from_secs(10)).unwrap(), "failed");
}
