//! `pgbackups adopt`: the backups of this cluster found in storage that
//! its catalog lacks (after a rebuild, `--cluster NAME`: the old cluster's
//! name or system identifier), brought into it as completed captures
//! (`backups._adopt`: the SQL decides what a row is and moves the name
//! counters past them). Each manifest is read back and checked against
//! its objects first; one that does not match is reported, not adopted,
//! and the command exits non-zero once the others are in. Adopting twice
//! adopts nothing twice.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cli::output;
use crate::config::StoreConfig;
use crate::pg::conn;
use crate::store::catalog::{self, Found};
use crate::store::storage::Storage;

pub async fn run(cfg: &StoreConfig, cluster: Option<String>, json: bool) -> Result<()> {
    let control = conn::connect_with_retry(cfg.control()?, Duration::from_secs(10))
        .await
        .context("cannot reach the control database")?;
    let here: String = control
        .query_one("SELECT backups._system_identifier()", &[])
        .await
        .context("reading this cluster's identifier (is pg_backups installed in the control database?)")?
        .get(0);
    let storage = Storage::open(cfg)?;
    let found = catalog::list(&storage).await?;
    let cluster = match cluster {
        Some(c) => catalog::resolve(&found, &c)?,
        None => here.clone(),
    };
    let mut rows = Vec::new();
    let mut refused = 0;
    // Oldest first: names and counters come out as they were made.
    for f in found.iter().rev().filter(|f| f.of_cluster(&cluster)) {
        let outcome = match adopt(&control, &storage, f).await {
            Ok(result) => result,
            Err(e) => {
                refused += 1;
                // In this cluster's own folder its objects keep its name:
                // no later capture may take it (and write over them).
                if f.of_cluster(&here) {
                    if let Err(e) = control.execute("SELECT backups._pass_name($1)", &[&f.id()]).await {
                        tracing::warn!("cannot move the counters past {}: {e}", f.id());
                    }
                }
                format!("refused: {e:#}")
            }
        };
        rows.push(vec![Some(f.id().to_string()), Some(f.database().to_string()), Some(outcome)]);
    }
    let columns = ["id", "database", "result"].map(String::from).to_vec();
    output::rows(&columns, &rows, json);
    if refused > 0 {
        bail!("{refused} backup(s) in storage were not adopted (see above)");
    }
    Ok(())
}

/// One backup: checked, then handed to `backups._adopt`; what it said.
async fn adopt(control: &tokio_postgres::Client, storage: &Storage, f: &Found) -> Result<String> {
    let m = f.readable()?;
    f.check_objects(storage).await?;
    let keys = storage.keys(&f.place, f.attempt).sealed(f.sealed);
    let stored = f.stored(storage)?;
    let (processed, stored_size) = m.sizes();
    let fact = |name: &str| m.fact(name).cloned().unwrap_or(serde_json::Value::Null);
    let b = serde_json::json!({
        "name": f.id(),
        "database": f.database(),
        "owner": fact("owner"),
        "source": fact("source"),
        // (A backup from before manifests said when it was queued: when
        // it was written.)
        "created_at": m.fact("created_at").cloned().unwrap_or_else(|| m.created_at.clone().into()),
        "created_by": fact("created_by"),
        "started_at": fact("started_at"),
        "finished_at": m.created_at,
        "attempt": f.attempt,
        "options": fact("options"),
        "scheduled": fact("scheduled"),
        "kept": f.kept.is_some() || fact("kept") == serde_json::Value::Bool(true),
        "kept_at": f.kept.as_ref().and_then(|k| k.get("kept_at")).cloned(),
        "kept_by": f.kept.as_ref().and_then(|k| k.get("kept_by")).cloned(),
        "stored_under": f.place.under,
        "format": m.format.as_str(),
        "object_key": storage.relative(&keys.object(m.format)),
        "checksum": stored.checksum,
        "head_sha256": stored.head_sha256,
        "source_size": m.source_size,
        "processed": processed,
        "stored_size": stored_size,
        "tool_versions": m.tool_versions,
        "encrypted_to": stored.encrypted_to,
        "contents": stored.contents,
        "cluster": m.cluster.as_ref().map(ToString::to_string),
    });
    let result: String = control
        .query_one("SELECT backups._adopt($1)", &[&b])
        .await
        .with_context(|| format!("adopting {}", f.id()))?
        .get(0);
    Ok(match result.as_str() {
        "taken" => bail!("another backup here is called {} already (captured before the adoption)", f.id()),
        "present" => "already in the catalog".into(),
        other => other.to_string(),
    })
}
