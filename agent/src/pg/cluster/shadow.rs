//! Atomic restores and copies. The archive is applied into a shadow
//! database, made like the target (owner, encoding, locale, tablespace,
//! then its settings and grants); only when everything is in is the target
//! swapped for it, by two renames in one transaction, and the old contents
//! dropped. Until then the target is not touched: a failed, cancelled or
//! killed restore leaves it exactly as it was, and the shadow is dropped
//! (by the transfer when it stops, or by the next restore into the same
//! target when the agent was killed).
//!
//! Names are fixed by the target's oid, so that at most one shadow per
//! target exists and a later attempt finds what an earlier one left; a
//! comment marks the databases the agent made, and nothing unmarked is ever
//! dropped.

use anyhow::{bail, Context, Result};

use crate::pg::cluster::target::{self, Target};
use crate::pg::cluster::teardown::Teardown;
use crate::pg::cluster::Cluster;
use crate::pg::conn::quote::{ident, literal};
use crate::pg::conn::{self, LOCK_TIMEOUT};

/// Comments on the databases the agent makes start with this.
pub const MARK: &str = "pg_backups: ";

/// How many times the swap ends the target's sessions and tries again
/// when a new one got in before the renames.
const SWAP_ATTEMPTS: u32 = 5;

/// A shadow of a target, dropped unless it was swapped in.
pub struct Shadow {
    shadow: Target,
    /// The shadow's oid: what is dropped or swapped in is this database,
    /// whatever holds its name by then.
    oid: u32,
    data_url: String,
    teardown: Teardown,
    swapped: bool,
}

fn shadow_name(oid: u32) -> String {
    format!("pgbackups_shadow_{oid}")
}

/// Is `name` a shadow's name (`pgbackups_shadow_<oid>`)?
pub fn is_shadow_name(name: &str) -> bool {
    name.strip_prefix("pgbackups_shadow_").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn replaced_name(oid: u32) -> String {
    format!("pgbackups_replaced_{oid}")
}

impl Shadow {
    /// Drop what an earlier attempt left for `target`, and create its
    /// shadow for transfer `transfer`, closed to everyone but its owner
    /// (PUBLIC may not connect) until it gets the target's grants.
    pub async fn create(cluster: &Cluster, target: &Target, transfer: &str, teardown: &Teardown) -> Result<Shadow> {
        let c = cluster.client().await?;
        let name = shadow_name(target.props.oid);
        sweep(&c, target, &name).await?;
        if let Err(e) = sweep(&c, target, &replaced_name(target.props.oid)).await {
            tracing::warn!("{e:#}");
        }
        let shadow = target.renamed(&name);
        target::create(cluster, &shadow).await.context("creating the shadow database the archive goes into")?;
        let oid: u32 = c
            .query_one("SELECT oid FROM pg_catalog.pg_database WHERE datname = $1", &[&name])
            .await
            .context("finding the shadow database")?
            .get(0);
        let shadow =
            Shadow { shadow, oid, data_url: cluster.data_url.clone(), teardown: teardown.clone(), swapped: false };
        cluster
            .execute(&format!(
                "COMMENT ON DATABASE {s} IS {mark}; REVOKE ALL ON DATABASE {s} FROM PUBLIC",
                s = ident(&name),
                mark = literal(&format!("{MARK}shadow of {:?} for {transfer}, dropped unless swapped in", target.name))
            ))
            .await?;
        Ok(shadow)
    }

    /// Where the archive goes.
    pub fn target(&self) -> &Target {
        &self.shadow
    }

    /// The shadow's oid: what the control database records before the swap.
    pub fn oid(&self) -> u32 {
        self.oid
    }

    /// Swap the shadow in, as `target` is now (re-read at the end, so
    /// that what changed in it meanwhile is kept): end the sessions on
    /// both, then in one transaction rename the target away (checking it is
    /// still the database the restore was for) and the shadow to its name,
    /// with the target's comment. Then drop the old contents; a warning if
    /// they could not be dropped.
    pub async fn swap(mut self, target: &Target, transfer: &str) -> Result<Option<String>> {
        let c = conn::connect(&self.data_url).await?;
        // A session that holds a lock on the target (an open COMMENT ON
        // DATABASE, say) cannot hold the swap up for good: it gives up and
        // tries again, and in the end fails with the target as it was.
        c.batch_execute(LOCK_TIMEOUT).await?;
        let (name, shadow) = (target.name.clone(), self.shadow.name.clone());
        let old = replaced_name(self.oid);
        let mut attempt = 0;
        loop {
            attempt += 1;
            end_sessions(&c, &name).await;
            end_sessions(&c, &shadow).await;
            match self.renames(&c, target, &old, transfer).await {
                Ok(()) => break,
                // The connection broke with the COMMIT on its way: it may
                // have committed. The catalog says.
                Err(_) if self.swapped_in(&name).await => break,
                Err(e) => {
                    c.batch_execute("ROLLBACK").await.ok();
                    use tokio_postgres::error::SqlState;
                    let in_use = e
                        .downcast_ref::<tokio_postgres::Error>()
                        .and_then(|e| e.code())
                        .is_some_and(|c| *c == SqlState::OBJECT_IN_USE || *c == SqlState::LOCK_NOT_AVAILABLE);
                    if !(in_use && attempt < SWAP_ATTEMPTS) {
                        return Err(e.context(format!(
                            "swapping the restored copy in for {name}{}; {name} is as it was",
                            if in_use {
                                " (sessions kept connecting to it or to the shadow, or held a lock on it, or the agent \
                                 may not end them: it needs pg_signal_backend or the sessions' roles)"
                            } else {
                                ""
                            }
                        )));
                    }
                }
            }
        }
        self.swapped = true;
        let c = match c.is_closed() {
            false => c,
            true => conn::connect(&self.data_url).await?,
        };
        Ok(drop_replaced(&c, self.oid).await)
    }

    /// Is the shadow the target `name` now (its swap committed)?
    async fn swapped_in(&self, name: &str) -> bool {
        let Ok(c) = conn::connect(&self.data_url).await else { return false };
        c.query_opt("SELECT 1 FROM pg_catalog.pg_database WHERE oid = $1 AND datname = $2", &[&self.oid, &name])
            .await
            .is_ok_and(|r| r.is_some())
    }

    /// The swap's transaction.
    async fn renames(&self, c: &tokio_postgres::Client, target: &Target, old: &str, transfer: &str) -> Result<()> {
        let name = &target.name;
        c.batch_execute(&format!("BEGIN; ALTER DATABASE {} RENAME TO {}", ident(name), ident(old))).await?;
        let still: Option<bool> = c
            .query_opt(
                "SELECT d.oid = $2 AND pg_catalog.pg_get_userbyid(d.datdba) = $3 FROM pg_catalog.pg_database d
                  WHERE d.datname = $1",
                &[&old, &target.props.oid, &target.owner],
            )
            .await?
            .map(|r| r.get(0));
        let shadow_here: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1 AND oid = $2)",
                &[&self.shadow.name, &self.oid],
            )
            .await?
            .get(0);
        if still != Some(true) || !shadow_here {
            bail!(
                "{name} is not the database the restore began with (it was replaced, renamed or given to another \
                 owner meanwhile), or its shadow changed: refusing to swap"
            );
        }
        c.batch_execute(&format!(
            "ALTER DATABASE {s} RENAME TO {t}; {comment}; COMMENT ON DATABASE {o} IS {mark}; COMMIT",
            s = ident(&self.shadow.name),
            t = ident(name),
            o = ident(old),
            comment = target.props.comment_statement(name),
            mark = literal(&format!("{MARK}{name:?} as it was before {transfer}, being dropped")),
        ))
        .await?;
        Ok(())
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        if self.swapped {
            return;
        }
        let (url, name, oid) = (self.data_url.clone(), self.shadow.name.clone(), self.oid);
        self.teardown.then(async move {
            let dropped = async {
                let c = conn::connect(&url).await?;
                // The shadow, not whatever took its name.
                let ours = c
                    .query_opt("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1 AND oid = $2", &[&name, &oid])
                    .await?;
                if ours.is_some() {
                    c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&name))).await?;
                }
                anyhow::Ok(())
            };
            if let Err(e) = dropped.await {
                tracing::warn!("could not drop the shadow database {name}: {e:#} (the next restore into it drops it)");
            }
        });
    }
}

/// The transfer a database the agent marked was made for: a shadow (`...
/// for r001, ...`) or what a swap replaced (`... before r001, ...`). None
/// for a database without the agent's mark.
pub fn transfer_of(comment: &str) -> Option<&str> {
    let rest = comment.strip_prefix(MARK)?;
    [" for ", " before "].iter().find_map(|k| {
        let name = rest.rsplit_once(k)?.1.split(',').next()?;
        pgbackups_core::naming::is_name(name).then_some(name)
    })
}

/// Drop database `name`, a shadow an earlier attempt made and did not swap
/// in: the drop waits for a swap of it under way (both take its lock), so
/// that what is read after it is final.
pub async fn drop_unswapped(cluster: &Cluster, name: &str) -> Result<()> {
    if !is_shadow_name(name) {
        bail!("{name} is not a shadow's name: not dropping it");
    }
    cluster
        .execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(name)))
        .await
        .with_context(|| format!("dropping {name}, which an earlier attempt left"))
}

/// Drop what the target held before shadow `shadow` (an oid) was swapped in
/// for it, if it is still there and marked as the agent's; a warning if it
/// could not be dropped.
pub async fn drop_replaced(c: &tokio_postgres::Client, shadow: u32) -> Option<String> {
    let old = replaced_name(shadow);
    let marked = c
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_database
              WHERE datname = $1 AND pg_catalog.starts_with(coalesce(pg_catalog.shobj_description(oid, 'pg_database'), ''), $2)",
            &[&old, &MARK],
        )
        .await;
    match marked {
        Ok(None) => None,
        Ok(Some(_)) => {
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&old))).await.err().map(|e| {
                format!(
                    "could not drop {old}, which holds what the target held before: {:#}; drop it by hand, or the \
                 agent drops it when it next starts",
                    anyhow::Error::from(e)
                )
            })
        }
        Err(e) => Some(format!("could not look for {old}: {:#}", anyhow::Error::from(e))),
    }
}

/// End every other session on database `name`, as far as the agent may
/// (the renames wait a few seconds for them to go).
async fn end_sessions(c: &tokio_postgres::Client, name: &str) {
    let Ok(rows) = c
        .query(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()",
            &[&name],
        )
        .await
    else {
        return;
    };
    for r in rows {
        let pid: i32 = r.get(0);
        c.execute("SELECT pg_catalog.pg_terminate_backend($1)", &[&pid]).await.ok();
    }
}

/// Drop database `name` if the agent made it for `target` (owned by the
/// target's owner, with the agent's mark); refuse to go on if someone else
/// holds the name.
async fn sweep(c: &tokio_postgres::Client, target: &Target, name: &str) -> Result<()> {
    let Some(row) = c
        .query_opt(
            "SELECT pg_catalog.pg_get_userbyid(datdba), coalesce(pg_catalog.shobj_description(oid, 'pg_database'), '')
               FROM pg_catalog.pg_database WHERE datname = $1",
            &[&name],
        )
        .await?
    else {
        return Ok(());
    };
    let (owner, comment): (String, String) = (row.get(0), row.get(1));
    if owner != target.owner || !comment.starts_with(MARK) {
        bail!(
            "a database named {name} is in the way of restoring into {}, and it is not marked as made by pg_backups \
             (an agent killed just after creating it leaves it unmarked): rename or drop it",
            target.name
        );
    }
    tracing::info!("dropping {name}, left by an earlier restore into {}", target.name);
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(name))).await?;
    Ok(())
}
