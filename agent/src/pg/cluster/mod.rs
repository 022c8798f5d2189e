//! The customer's cluster, as the agent changes it: one `Cluster` (an admin
//! connection a transfer opens once) that every statement of this folder
//! goes through; the target a restore or copy replaces (`target`, with its
//! properties, `database`), the shadow it fills and swaps in (`shadow`),
//! the throwaway login that applies an archive (`applier`), a
//! verification's scratch database (`scratch`), the table sizes a progress
//! estimate reads (`size`), what a transfer leaves to drop (`teardown`),
//! and what killed agents left (`leftovers`). Nothing outside this folder
//! sends the cluster DDL.

pub mod applier;
pub mod database;
pub mod leftovers;
pub mod scratch;
pub mod shadow;
pub mod size;
pub mod target;
pub mod teardown;

use anyhow::Result;
use tokio_postgres::Client;

use crate::config::Config;
use crate::pg::conn;

/// The customer's cluster, over one admin connection (the data role's,
/// `--data-url`) that waits at most `conn::LOCK_TIMEOUT` for a lock. A
/// swap's transaction, and what is left to drop after the transfer, have
/// connections of their own.
pub struct Cluster {
    client: Client,
    /// The data role's URL, for the connections to single databases.
    pub data_url: String,
    /// The control database's URL (a target is never it).
    pub control_url: String,
}

impl Cluster {
    pub async fn open(cfg: &Config) -> Result<Cluster> {
        let client = conn::connect(&cfg.data_url).await?;
        client.batch_execute(conn::LOCK_TIMEOUT).await?;
        Ok(Cluster { client, data_url: cfg.data_url.clone(), control_url: cfg.store.database_url.clone() })
    }

    /// The admin connection, for this folder's statements.
    pub fn client(&self) -> &Client {
        &self.client
    }
}
