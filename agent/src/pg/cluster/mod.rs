//! The customer's cluster, as the agent changes it: one `Cluster` (an admin
//! connection a transfer opens once) that every statement of this folder
//! goes through; the target a restore or copy replaces (`target`, with its
//! properties, `database`), the shadow it fills and swaps in (`shadow`),
//! the throwaway login that applies an archive (`applier`), a
//! verification's scratch database (`scratch`), the table sizes a progress
//! estimate reads (`size`), what a transfer leaves to drop (`teardown`),
//! what killed agents left (`leftovers`), and the roles a database names
//! (`roles`), and the transaction a table restore makes its tables in
//! (`beside`). Nothing outside this folder
//! sends the cluster DDL.

pub mod applier;
pub mod beside;
pub mod database;
pub mod leftovers;
pub mod roles;
pub mod scratch;
pub mod shadow;
pub mod size;
pub mod target;
pub mod teardown;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::config::Config;
use crate::pg::conn;

/// How long a closed admin connection is tried again (a server that
/// restarted) before the transfer fails.
const REOPEN_PATIENCE: Duration = Duration::from_secs(30);

/// How many times, in all, a statement that waits `conn::LOCK_TIMEOUT`
/// for a lock is tried before the transfer fails on it, 1 to 5 s apart:
/// a lock held for less than about 45 s (a tenant's open `COMMENT ON
/// DATABASE`, a `GRANT` not yet committed) must not fail an hour's
/// restore at its last step.
const LOCK_TRIES: u32 = 6;

/// The customer's cluster, over one admin connection (the data role's,
/// `--data-url`) that waits at most `conn::LOCK_TIMEOUT` for a lock, and is
/// opened again if the server closed it (an `idle_session_timeout`, a
/// DBA's `pg_terminate_backend`) while a long transfer did not use it. A
/// swap's transaction, and what is left to drop after the transfer, have
/// connections of their own.
pub struct Cluster {
    client: Mutex<Arc<Client>>,
    /// The data role's URL, for the connections to single databases.
    pub data_url: String,
    /// The control database's URL (a target is never it); none for a
    /// restore from the shell with storage alone.
    pub control_url: Option<String>,
}

impl Cluster {
    pub async fn open(cfg: &Config) -> Result<Cluster> {
        let client = Mutex::new(admin(conn::connect(&cfg.data_url).await?).await?);
        Ok(Cluster { client, data_url: cfg.data_url.clone(), control_url: cfg.store.database_url.clone() })
    }

    /// The admin connection, for this folder's queries; a new one if the
    /// server closed the last.
    pub async fn client(&self) -> Result<Arc<Client>> {
        let current = self.client.lock().expect("cluster connection lock").clone();
        if !current.is_closed() {
            return Ok(current);
        }
        tracing::info!("the connection to the cluster was closed: opening another");
        let fresh = admin(conn::connect_with_retry(&self.data_url, REOPEN_PATIENCE).await?).await?;
        *self.client.lock().expect("cluster connection lock") = fresh.clone();
        Ok(fresh)
    }

    /// Run `sql` (statements that change the cluster: one implicit
    /// transaction, so a try that gave up changed nothing), trying again
    /// while it only gave up waiting for a lock.
    pub async fn execute(&self, sql: &str) -> Result<()> {
        let mut tries = 1;
        loop {
            match self.client().await?.batch_execute(sql).await {
                Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) && tries < LOCK_TRIES => {
                    tracing::info!("waited for a lock and gave up ({e}): trying again");
                    tokio::time::sleep(Duration::from_secs(u64::from(tries))).await;
                    tries += 1;
                }
                done => return Ok(done?),
            }
        }
    }
}

/// Connection `client` as an admin connection: it waits at most
/// `conn::LOCK_TIMEOUT` for a lock.
async fn admin(client: Client) -> Result<Arc<Client>> {
    client.batch_execute(conn::LOCK_TIMEOUT).await?;
    Ok(Arc::new(client))
}
