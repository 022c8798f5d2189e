//! What agents that were killed left on the data cluster, dropped when an
//! agent starts: shadows and the databases a swap replaced (`shadow`),
//! verifications' scratch databases and their roles (`scratch`), and the
//! throwaway logins that applied archives (`applier`), once the control
//! database says the transfer each was made for is no longer pending or
//! running. Only what carries the agent's marks is touched (a database's
//! comment, a role's prefix); what cannot be dropped is a warning, and the
//! next start tries again.

use std::collections::HashSet;

use anyhow::Result;

use crate::config::Config;
use crate::pg::conn;
use crate::pg::quote::ident;
use crate::pg::{applier, scratch, shadow};

/// Sweep; never fails the agent's start.
pub async fn sweep(cfg: &Config) {
    match run(cfg).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("dropped {n} database(s) and role(s) that stopped transfers had left"),
        Err(e) => tracing::warn!("could not look for what stopped transfers left: {e:#}"),
    }
}

async fn run(cfg: &Config) -> Result<usize> {
    let c = conn::connect(&cfg.data_url).await?;
    // Listed before the control database is asked which transfers go on:
    // what a transfer claimed meanwhile made is not in these lists.
    let databases: Vec<(String, String)> = c
        .query(
            "SELECT datname::text, coalesce(pg_catalog.shobj_description(oid, 'pg_database'), '')
               FROM pg_catalog.pg_database WHERE datname ~ '^pgbackups_(shadow|replaced|verify)_'",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let roles: Vec<String> = c
        .query("SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname ~ '^pgbackups_(apply|verify)_'", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if databases.is_empty() && roles.is_empty() {
        return Ok(0);
    }
    let control = conn::connect(&cfg.store.database_url).await?;
    let going: HashSet<String> =
        control.query("SELECT backups._unfinished()", &[]).await?.iter().map(|r| r.get(0)).collect();
    let over = |t: Option<&str>| t.is_some_and(|t| !going.contains(t));
    let mut dropped = 0;
    // One after another: databases first (a scratch database's shadow
    // before the scratch database), then the roles that owned them.
    for (name, comment) in &databases {
        let transfer = if name.starts_with("pgbackups_verify_") {
            scratch::transfer_of(name)
        } else {
            shadow::transfer_of(comment)
        };
        if !over(transfer) || name.starts_with("pgbackups_verify_") {
            continue;
        }
        tracing::info!("dropping {name}, left by {}", transfer.unwrap_or_default());
        match c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(name))).await {
            Ok(()) => dropped += 1,
            Err(e) => tracing::warn!("could not drop {name}: {:#}", anyhow::Error::from(e)),
        }
    }
    for role in &roles {
        if let Some(t) = scratch::transfer_of(role).filter(|_| role.starts_with("pgbackups_verify_")) {
            if over(Some(t)) {
                tracing::info!("dropping the scratch database {role}, left by {t}");
                match scratch::drop_pair(&c, role).await {
                    Ok(()) => dropped += 1,
                    Err(e) => tracing::warn!("could not drop {role}: {e:#}"),
                }
            }
        } else if over(applier::transfer_of(role)) {
            match applier::retire(&c, role).await {
                Ok(()) => dropped += 1,
                Err(e) => tracing::warn!("leaving the disabled login {role}: {e:#}"),
            }
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_name_their_transfers() {
        let m = shadow::MARK;
        assert_eq!(
            shadow::transfer_of(&format!("{m}shadow of \"x, for r9\" for r001, dropped unless swapped in")),
            Some("r001")
        );
        assert_eq!(shadow::transfer_of(&format!("{m}\"x for y\" as it was before r002, being dropped")), Some("r002"));
        assert_eq!(
            shadow::transfer_of(&format!("{m}\"a before c1\" as it was before c012, being dropped")),
            Some("c012")
        );
        assert_eq!(shadow::transfer_of("shadow of \"x\" for r001, dropped unless swapped in"), None);
        assert_eq!(shadow::transfer_of(&format!("{m}something else")), None);
        assert_eq!(applier::transfer_of("pgbackups_apply_r001_2"), Some("r001"));
        assert_eq!(scratch::transfer_of("pgbackups_verify_v003_1"), Some("v003"));
    }
}
