//! What agents that were killed left on the data cluster, dropped when an
//! agent starts: shadows and the databases a swap replaced (`shadow`),
//! verifications' scratch databases and their roles (`scratch`), and the
//! throwaway logins that applied archives (`applier`), once the control
//! database says the transfer each was made for is no longer pending or
//! running. Only what carries the agent's marks is touched (a database's
//! comment, a role's prefix), a database only while it is still the one
//! listed (same oid, same comment), a shadow only while no transfer into
//! its target goes on (another agent's may be about to make it anew); no
//! lock is waited for long (someone holding one cannot hold up the agent);
//! what cannot be dropped is a warning, and the next start tries again.

use std::collections::HashSet;

use anyhow::Result;

use crate::config::Config;
use crate::pg::cluster::{applier, scratch, shadow};
use crate::pg::conn;
use crate::pg::conn::quote::ident;

/// Sweep, in the background: it never holds up or fails the agent's start.
pub fn sweep(cfg: &Config) {
    let cfg = cfg.clone();
    tokio::spawn(async move {
        match run(&cfg).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("dropped {n} database(s) and role(s) that stopped transfers had left"),
            Err(e) => tracing::warn!("could not look for what stopped transfers left: {e:#}"),
        }
    });
}

/// One database the agent made, as listed.
struct Listed {
    name: String,
    oid: u32,
    comment: String,
}

async fn run(cfg: &Config) -> Result<usize> {
    let c = conn::connect(&cfg.data_url).await?;
    c.batch_execute(conn::LOCK_TIMEOUT).await?;
    // Listed before the control database is asked which transfers go on:
    // what a transfer claimed meanwhile made is not in these lists.
    let databases: Vec<Listed> = c
        .query(
            "SELECT datname::text, oid, coalesce(pg_catalog.shobj_description(oid, 'pg_database'), '')
               FROM pg_catalog.pg_database WHERE datname ~ '^pgbackups_(shadow|replaced|verify)_'",
            &[],
        )
        .await?
        .iter()
        .map(|r| Listed { name: r.get(0), oid: r.get(1), comment: r.get(2) })
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
    let control = conn::connect(cfg.control()?).await?;
    let unfinished = control.query("SELECT name, database_oid FROM backups._unfinished()", &[]).await?;
    let going: HashSet<String> = unfinished.iter().map(|r| r.get(0)).collect();
    let targets: HashSet<String> = unfinished
        .iter()
        .filter_map(|r| r.get::<_, Option<u32>>(1))
        .map(|oid| format!("pgbackups_shadow_{oid}"))
        .collect();
    // A transfer's name (b001), not a shell restore's (`pgbackups restore
    // --to` names its own `shell<random>`: no agent knows of it), over.
    let over = |t: Option<&str>| t.is_some_and(|t| pgbackups_core::naming::is_name(t) && !going.contains(t));
    let mut dropped = 0;
    // One after another: databases first (a scratch database's shadow
    // before the scratch database), then the roles that owned them.
    for d in &databases {
        if d.name.starts_with("pgbackups_verify_") || targets.contains(&d.name) {
            continue;
        }
        let transfer = shadow::transfer_of(&d.comment);
        if !over(transfer) {
            continue;
        }
        // Still the database listed, with the mark listed?
        let same = c
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_database
                  WHERE datname = $1 AND oid = $2 AND coalesce(pg_catalog.shobj_description(oid, 'pg_database'), '') = $3",
                &[&d.name, &d.oid, &d.comment],
            )
            .await?
            .is_some();
        if !same {
            continue;
        }
        tracing::info!("dropping {}, left by {}", d.name, transfer.unwrap_or_default());
        match c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&d.name))).await {
            Ok(()) => dropped += 1,
            Err(e) => tracing::warn!("could not drop {}: {:#}", d.name, anyhow::Error::from(e)),
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
