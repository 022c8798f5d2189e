//! Retention and `backups.delete()`: remove every stored object of backups
//! that were deleted or expired (all their attempts' folders), check that
//! nothing is left, then mark them purged. It runs beside the claim loop on
//! its own connection, so a backup of thousands of objects, or storage being
//! down, never delays a claim.

use std::time::Duration;

use anyhow::Result;
use tokio_postgres::Client;

use crate::pg::conn;
use crate::shutdown::{Phase, Shutdown};
use crate::store::storage::Storage;

const EVERY: Duration = Duration::from_secs(10);
const BATCH: i32 = 50;

/// Purge every `EVERY` (sooner when `wake` fires) until the agent drains.
pub async fn run(url: String, storage: Storage, mut wake: tokio::sync::watch::Receiver<()>, mut shutdown: Shutdown) {
    let mut client: Option<Client> = None;
    loop {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = conn::connect(&url).await.map_err(|e| tracing::warn!("purge: {e:#}")).ok();
        }
        if let Some(c) = &client {
            let round = tokio::select! {
                r = purge(c, &storage) => r,
                _ = shutdown.reached(Phase::Draining) => return,
            };
            if let Err(e) = round {
                tracing::warn!("purge: {e:#}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = wake.changed() => {}
            _ = shutdown.reached(Phase::Draining) => return,
        }
    }
}

/// One round: up to `BATCH` backups.
pub async fn purge(client: &Client, storage: &Storage) -> Result<usize> {
    let rows = client.query("SELECT id, name, label FROM backups._to_purge($1)", &[&BATCH]).await?;
    let mut n = 0;
    for r in rows {
        let (id, name, label): (i64, String, String) = (r.get(0), r.get(1), r.get(2));
        let folder = storage.backup_folder(&label, &name);
        let removed = storage.delete_all(&folder).await?;
        let message = format!("removed {removed} object(s) under {} from storage", storage.relative(&folder));
        client.execute("SELECT backups._purged($1, $2)", &[&id, &message]).await?;
        tracing::info!(backup = %name, removed, "purged from storage");
        n += 1;
    }
    Ok(n)
}
