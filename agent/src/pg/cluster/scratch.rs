//! The scratch database a verification restores into, and drops. It is
//! owned by a role made for it alone (NOLOGIN, no memberships, no
//! attributes), so that what the archive runs while it is restored
//! (functions in constraints, triggers, index expressions) has the rights
//! of nobody: not the agent's, not a tenant's. Database and role share the
//! name `pgbackups_verify_<transfer>_<attempt>`; the verification drops both
//! when it stops, and the next one drops what a killed agent left behind
//! (any such pair whose verification is no longer pending or running, or
//! that an earlier attempt of the same verification left).

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::pg::cluster::applier::take_role;
use crate::pg::cluster::shadow::MARK;
use crate::pg::cluster::teardown::Teardown;
use crate::pg::cluster::Cluster;
use crate::pg::conn;
use crate::pg::conn::quote::{ident, literal};

const PREFIX: &str = "pgbackups_verify_";

/// A scratch database, dropped with its role when this is dropped.
pub struct Scratch {
    pub name: String,
    data_url: String,
    teardown: Teardown,
}

impl Scratch {
    /// Drop what earlier verifications left (all but the scratch databases
    /// of other verifications still pending or running), then make the
    /// scratch database of attempt `attempt` of verification `transfer`.
    pub async fn create(cluster: &Cluster, transfer: &str, attempt: i32, teardown: &Teardown) -> Result<Scratch> {
        // The attempt is in the name: an earlier attempt's agent, silent
        // but alive, that drops its own scratch when it stops must not
        // drop this one's.
        let name = format!("{PREFIX}{transfer}_{attempt}");
        sweep(cluster, transfer).await;
        // The role first: a database owned by it is one of ours, marked or
        // not (an agent killed before the comment leaves it unmarked).
        let why = "creating the role that owns the scratch database (the agent needs CREATEROLE)";
        cluster.execute(&format!("CREATE ROLE {} NOLOGIN", ident(&name))).await.context(why)?;
        take_role(&*cluster.client().await?, &name).await.context(why)?;
        let scratch = Scratch { name: name.clone(), data_url: cluster.data_url.clone(), teardown: teardown.clone() };
        cluster
            .execute(&format!("CREATE DATABASE {d} OWNER {d} TEMPLATE template0", d = ident(&name)))
            .await
            .context("creating the scratch database (the agent needs CREATEDB)")?;
        cluster
            .execute(&format!(
                "COMMENT ON DATABASE {d} IS {mark}; REVOKE ALL ON DATABASE {d} FROM PUBLIC",
                d = ident(&name),
                mark = literal(&format!("{MARK}scratch database of verification {transfer}, dropped when it ends"))
            ))
            .await?;
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (url, name) = (self.data_url.clone(), self.name.clone());
        self.teardown.then(async move {
            let dropped = async {
                let c = conn::connect(&url).await?;
                drop_pair(&c, &name).await
            };
            match dropped.await {
                Ok(()) => tracing::info!("dropped the scratch database {name}"),
                Err(e) => {
                    tracing::warn!("could not drop the scratch database {name}: {e:#} (the next verification drops it)")
                }
            }
        });
    }
}

/// The verification scratch database (or role) `name` was made for, if it
/// is one.
pub fn transfer_of(name: &str) -> Option<&str> {
    name.strip_prefix(PREFIX)?.rsplit_once('_').map(|(t, _)| t)
}

/// Drop every scratch database (and its role) left by a verification that
/// is no longer pending or running, or by an earlier attempt of `transfer`
/// (this one). The roles are listed before the control database is asked
/// which verifications are still going: a scratch made meanwhile by a
/// verification claimed meanwhile is not listed, and one listed belongs to
/// a verification already claimed. What cannot be dropped is a warning
/// (the next verification tries again), never this one's failure.
async fn sweep(cluster: &Cluster, transfer: &str) {
    let listed = async {
        let c = cluster.client().await?;
        let rows = c
            .query("SELECT r.rolname FROM pg_catalog.pg_roles r WHERE r.rolname LIKE 'pgbackups\\_verify\\_%'", &[])
            .await?;
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if names.is_empty() {
            return Ok((c, names));
        }
        let control = conn::connect(cluster.control_url.as_deref().context("no control database")?).await?;
        let going: Vec<String> =
            control.query("SELECT name FROM backups._unfinished()", &[]).await?.iter().map(|r| r.get(0)).collect();
        Ok::<_, anyhow::Error>((
            c,
            names
                .into_iter()
                .filter(|n| {
                    let of = n.strip_prefix(PREFIX).map(|rest| rest.rsplit_once('_').map_or(rest, |(t, _)| t));
                    !of.is_some_and(|t| t != transfer && going.iter().any(|g| g == t))
                })
                .collect(),
        ))
    };
    let (c, names) = match listed.await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("could not look for scratch databases earlier verifications left: {e:#}");
            return;
        }
    };
    for name in names {
        tracing::info!("dropping {name}, left by an earlier verification");
        if let Err(e) = drop_pair(&c, &name).await {
            tracing::warn!("could not drop {name}, left by an earlier verification: {e:#}");
        }
    }
}

/// Drop scratch database `name` if its role owns it (and the restore's
/// shadow of it, should an agent have been killed mid-restore), then the
/// role.
pub async fn drop_pair(c: &Client, name: &str) -> Result<()> {
    let ours = c
        .query(
            "SELECT d.datname FROM pg_catalog.pg_database d JOIN pg_catalog.pg_roles r ON r.oid = d.datdba
              WHERE r.rolname = $1 AND (d.datname = $1 OR d.datname ~ '^pgbackups_(shadow|replaced)_[0-9]+$')",
            &[&name],
        )
        .await?;
    for d in ours {
        let d: String = d.get(0);
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&d))).await?;
    }
    // It owns nothing else; should it, the error says so.
    c.batch_execute(&format!("DROP ROLE IF EXISTS {}", ident(name))).await?;
    Ok(())
}
