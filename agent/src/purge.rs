//! Retention and `backups.delete()`: remove the stored objects of backups
//! that were deleted or expired, then mark them purged. An object that is
//! already gone is not an error.

use anyhow::Result;
use object_store::path::Path;
use tokio_postgres::Client;

use crate::storage::Storage;

pub async fn purge(client: &Client, storage: &Storage) -> Result<usize> {
    let rows = client
        .query(
            "SELECT id, name, object_key FROM backups.transfers
              WHERE (status = 'expired' OR deleted_at IS NOT NULL) AND purged_at IS NULL AND object_key IS NOT NULL
              ORDER BY id LIMIT 50",
            &[],
        )
        .await?;
    let mut n = 0;
    for r in rows {
        let (id, name, key): (i64, String, String) = (r.get(0), r.get(1), r.get(2));
        let folder = parent(&storage.absolute(&key));
        let removed = storage.delete_dir(&folder).await?;
        client
            .execute("UPDATE backups.transfers SET purged_at = now() WHERE id = $1 AND purged_at IS NULL", &[&id])
            .await?;
        client
            .execute(
                "INSERT INTO backups.transfer_logs (transfer_id, message) VALUES ($1, $2)",
                &[&id, &format!("removed {removed} object(s) under {folder} from storage")],
            )
            .await?;
        tracing::info!(backup = %name, removed, "purged from storage");
        n += 1;
    }
    Ok(n)
}

/// `a/b/c` -> `a/b`: every object of a backup lives in its folder.
fn parent(key: &Path) -> Path {
    let parts: Vec<_> = key.parts().collect();
    Path::from_iter(parts[..parts.len().saturating_sub(1)].iter().cloned())
}
