//! `list` and `info` with storage alone: what the manifests say, for the
//! day the control database is gone (`store::catalog`).

use anyhow::Result;

use crate::cli::output;
use crate::config::StoreConfig;
use crate::store::catalog::{self, Filter, Found};
use crate::store::storage::Storage;
use crate::transfer::progress::human;

/// Every backup in storage that `filter` keeps, newest first.
pub async fn list(cfg: &StoreConfig, filter: &Filter, json: bool) -> Result<()> {
    let storage = Storage::open(cfg)?;
    let found = catalog::list(&storage).await?;
    let filter = &filter.clone().resolved(&found)?;
    let columns: Vec<String> =
        ["id", "database", "cluster", "kind", "finished_at", "format", "stored_size", "encrypted", "kept", "readable"]
            .map(String::from)
            .to_vec();
    let rows: Vec<Vec<Option<String>>> = found.iter().filter(|f| filter.keeps(f)).map(|f| row(f, json)).collect();
    output::rows(&columns, &rows, json);
    Ok(())
}

fn row(f: &Found, json: bool) -> Vec<Option<String>> {
    let m = f.manifest.as_ref().ok();
    let size = m.map(|m| m.sizes().1);
    vec![
        Some(f.id().to_string()),
        Some(f.database().to_string()),
        cluster(f),
        m.map(|m| kind(m).to_string()),
        Some(m.map_or_else(|| f.modified.to_rfc3339(), |m| m.created_at.clone())),
        m.map(|m| m.format.as_str().to_string()),
        size.map(|s| if json { s.to_string() } else { human(s) }),
        Some(f.sealed.to_string()),
        Some(f.kept.is_some().to_string()),
        Some(match &f.manifest {
            Ok(_) => "yes".to_string(),
            Err(why) => why.clone(),
        }),
    ]
}

fn cluster(f: &Found) -> Option<String> {
    match f.manifest.as_ref().ok().and_then(|m| m.cluster.as_ref()) {
        Some(c) => Some(c.to_string()),
        None => f.place.under.clone(),
    }
}

fn kind(m: &crate::store::manifest::Manifest) -> &'static str {
    match m.fact("scheduled").and_then(|v| v.as_bool()) {
        Some(true) => "scheduled",
        Some(false) => "manual",
        None => "backup",
    }
}

/// One backup in storage, field by field.
pub async fn info(cfg: &StoreConfig, id: &str, filter: &Filter, json: bool) -> Result<()> {
    let storage = Storage::open(cfg)?;
    let found = catalog::list(&storage).await?;
    let f = catalog::pick(&found, id, filter)?;
    let m = f.readable()?;
    let text = |v: Option<&serde_json::Value>| {
        v.map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let mut fields: Vec<(String, Option<String>)> = vec![
        ("id".into(), Some(f.id().to_string())),
        ("database".into(), Some(f.database().to_string())),
        ("owner".into(), m.fact_str("owner").map(str::to_string)),
        ("source".into(), m.fact_str("source").map(str::to_string)),
        ("cluster".into(), cluster(f)),
        ("kind".into(), Some(kind(m).to_string())),
        (
            "schedule".into(),
            m.fact("schedule").and_then(|s| s.get("spec")).and_then(|s| s.as_str()).map(str::to_string),
        ),
        ("created".into(), m.fact_str("created_at").map(str::to_string)),
        ("started".into(), m.fact_str("started_at").map(str::to_string)),
        ("finished".into(), Some(m.created_at.clone())),
        ("attempt".into(), Some(f.attempt.to_string())),
        ("format".into(), Some(m.format.as_str().to_string())),
        ("options".into(), text(m.fact("options"))),
        ("source size".into(), Some(m.source_size.to_string())),
        ("processed".into(), Some(m.sizes().0.to_string())),
        ("stored size".into(), Some(m.sizes().1.to_string())),
        ("checksum".into(), Some(f.checksum()?)),
        ("object".into(), Some(storage.relative(&storage.backup_folder(&f.place)))),
        (
            "encryption".into(),
            Some(if f.sealed { format!("age, to {}", m.encrypted_to.join(", ")) } else { "none".into() }),
        ),
        ("tool versions".into(), Some(m.tool_versions.to_string())),
        ("kept".into(), Some(f.kept.is_some().to_string())),
        ("tables".into(), m.contents.as_ref().map(|c| c.tables.len().to_string())),
    ];
    if let Some(r) = &m.receiving {
        let roles: Vec<&str> = r.roles.iter().map(|r| r.name.as_str()).collect();
        fields.push(("roles".into(), Some(roles.join(", "))));
    }
    output::record(&fields, json);
    Ok(())
}
