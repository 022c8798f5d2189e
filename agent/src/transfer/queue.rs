//! The queue, seen from the agent's main loop: claim the oldest pending
//! transfer this agent can run (`FOR UPDATE SKIP LOCKED` in `_claim`, so two
//! agents never run the same one), and announce the agent while it runs.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::transfer::job::Claimed;
use crate::transfer::kind::Row;
use crate::transfer::kinds::{Job, KINDS};

/// `per_owner`: how many transfers of one database owner this agent runs
/// at once (`--max-per-owner`).
pub async fn claim(client: &Client, agent: &str, sources: &[String], per_owner: usize) -> Result<Option<Claimed>> {
    let kinds: Vec<&str> = KINDS.to_vec();
    let per_owner = i32::try_from(per_owner).unwrap_or(i32::MAX);
    let row = client
        .query_opt(
            "SELECT id, name, kind, database, source, target, options, attempt, lease, swapped, stored_under \
               FROM backups._claim($1, $2, $3, $4)",
            &[&agent, &kinds, &sources, &per_owner],
        )
        .await
        .context("claiming a transfer")?;
    Ok(row.map(|r| {
        let row = Row {
            id: r.get(0),
            name: r.get(1),
            kind: r.get(2),
            database: r.get(3),
            source: r.get(4),
            target: r.get(5),
            options: r.get(6),
            attempt: r.get(7),
            swapped: r.get(9),
            stored_under: r.get(10),
        };
        let job = Job::decode(&row).map_err(|e| format!("{e:#}"));
        let lease = Duration::from_secs_f64(r.get::<_, f64>(8).max(1.0));
        Claimed { id: row.id, name: row.name, attempt: row.attempt, lease, kind: row.kind, database: row.database, job }
    }))
}

/// Announce this agent and its source names (and keep announcing: last_seen_at).
pub async fn announce(client: &Client, agent: &str, sources: &[String]) -> Result<()> {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    client
        .execute("SELECT backups._announce($1, $2, $3, $4)", &[&agent, &host, &env!("CARGO_PKG_VERSION"), &sources])
        .await
        .context("announcing the agent (is the pg_backups extension installed in this database?)")?;
    Ok(())
}

/// The agent is going away.
pub async fn retire(client: &Client, agent: &str) -> Result<()> {
    client.execute("SELECT backups._retire($1)", &[&agent]).await?;
    Ok(())
}
