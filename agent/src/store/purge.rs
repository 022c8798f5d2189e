//! Retention and `backups.delete()`: remove every stored object of backups
//! that were deleted or expired (all their attempts' folders), check that
//! nothing is left, then mark them purged. And pins: a backup kept or
//! unkept gets its `kept.json` written or removed, so that storage says
//! what adoption must bring back. It runs beside the claim loop on
//! its own connection, so a backup of thousands of objects, or storage being
//! down, never delays a claim.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio_postgres::Client;

use crate::pg::conn;
use crate::shutdown::{Phase, Shutdown};
use crate::store::layout::{self, Place};
use crate::store::storage::Storage;

const EVERY: Duration = Duration::from_secs(10);
const BATCH: i32 = 50;

/// How long a backup that could not be purged is first left alone; it
/// doubles with each failure, up to `BACK_OFF_MAX`.
const BACK_OFF: Duration = Duration::from_secs(60);
const BACK_OFF_MAX: Duration = Duration::from_secs(3600);

/// Purge every `EVERY` (sooner when `wake` fires) until the agent drains.
pub async fn run(url: String, storage: Storage, mut wake: tokio::sync::watch::Receiver<()>, mut shutdown: Shutdown) {
    let mut client: Option<Client> = None;
    let mut stuck = Stuck::default();
    loop {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = conn::connect(&url).await.map_err(|e| tracing::warn!("purge: {e:#}")).ok();
        }
        if let Some(c) = &client {
            let round = tokio::select! {
                r = async { purge(c, &storage, &mut stuck).await?; pins(c, &storage).await } => r,
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

/// Backups that could not be purged lately, and until when they are left
/// alone: one that cannot be removed (a locked object, a permission) never
/// holds up the others.
#[derive(Default)]
pub struct Stuck(HashMap<i64, (Instant, Duration)>);

impl Stuck {
    /// The ids to leave alone now.
    fn ids(&self) -> Vec<i64> {
        let now = Instant::now();
        self.0.iter().filter(|(_, (until, _))| *until > now).map(|(id, _)| *id).collect()
    }

    /// `id` failed again: leave it alone for twice as long as last time.
    fn failed(&mut self, id: i64) -> Duration {
        let delay = self.0.get(&id).map_or(BACK_OFF, |(_, d)| (*d * 2).min(BACK_OFF_MAX));
        self.0.insert(id, (Instant::now() + delay, delay));
        delay
    }
}

/// Write (or remove) the pin markers of the backups kept (or unkept)
/// since; the number written.
pub async fn pins(client: &Client, storage: &Storage) -> Result<usize> {
    let rows = client
        .query(
            "SELECT id, name, label, stored_under, kept, kept_at::text, kept_by::text FROM backups._pins_to_write($1)",
            &[&BATCH],
        )
        .await?;
    for r in &rows {
        let (id, name, label, under, kept): (i64, String, String, Option<String>, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let key = layout::kept_marker(storage.prefix(), &Place::new(under.as_deref(), &label, &name));
        if kept {
            let marker = serde_json::json!({ "kept_at": r.get::<_, Option<String>>(5), "kept_by": r.get::<_, Option<String>>(6) });
            storage.store.put(&key, serde_json::to_vec(&marker)?.into()).await?;
            storage.sync(std::slice::from_ref(&key)).await?;
        } else {
            storage.delete_if_there(&key).await?;
        }
        client.execute("SELECT backups._pin_written($1, $2)", &[&id, &kept]).await?;
    }
    Ok(rows.len())
}

/// One round: up to `BATCH` backups; the number purged.
pub async fn purge(client: &Client, storage: &Storage, stuck: &mut Stuck) -> Result<usize> {
    let rows = client
        .query("SELECT id, name, label, stored_under FROM backups._to_purge($1, $2)", &[&BATCH, &stuck.ids()])
        .await?;
    let mut n = 0;
    for r in rows {
        let (id, name, label, under): (i64, String, String, Option<String>) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let folder = storage.backup_folder(&Place::new(under.as_deref(), &label, &name));
        match storage.delete_all(&folder).await {
            Ok(removed) => {
                stuck.0.remove(&id);
                let removed = i32::try_from(removed).unwrap_or(i32::MAX);
                client
                    .execute("SELECT backups._purged($1, $2, $3)", &[&id, &removed, &storage.relative(&folder)])
                    .await?;
                if removed > 0 {
                    tracing::info!(backup = %name, removed, "purged from storage");
                }
                n += 1;
            }
            Err(e) => {
                // The row waits; the rest wait for the next round, in case
                // storage itself is unreachable.
                let delay = stuck.failed(id);
                tracing::warn!(backup = %name, "cannot purge it yet (trying again in {delay:?}): {e:#}");
                break;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_backup_waits_longer_each_time_and_alone() {
        let mut stuck = Stuck::default();
        assert_eq!(stuck.failed(7), BACK_OFF);
        assert_eq!(stuck.failed(7), BACK_OFF * 2);
        assert_eq!(stuck.ids(), vec![7]);
        for _ in 0..20 {
            stuck.failed(7);
        }
        assert_eq!(stuck.failed(7), BACK_OFF_MAX);
    }
}
