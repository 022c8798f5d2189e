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
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::pg::conn;
use crate::pg::quote::{ident, literal};
use crate::pg::target::{self, Target};

/// Comments on the databases the agent makes start with this.
const MARK: &str = "pg_backups: ";

/// How many times the swap ends the target's sessions and tries again
/// when a new one got in before the renames.
const SWAP_ATTEMPTS: u32 = 5;

/// A shadow of a target, dropped unless it was swapped in.
pub struct Shadow {
    target: Target,
    shadow: Target,
    data_url: String,
    tracker: TaskTracker,
    swapped: bool,
}

fn shadow_name(oid: u32) -> String {
    format!("pgbackups_shadow_{oid}")
}

fn replaced_name(oid: u32) -> String {
    format!("pgbackups_replaced_{oid}")
}

impl Shadow {
    /// Drop what an earlier attempt left for `target`, and create its
    /// shadow for transfer `transfer`.
    pub async fn create(cfg: &Config, target: &Target, transfer: &str, tracker: &TaskTracker) -> Result<Shadow> {
        let c = conn::connect(&cfg.data_url).await?;
        let name = shadow_name(target.props.oid);
        for leftover in [name.clone(), replaced_name(target.props.oid)] {
            sweep(&c, target, &leftover).await?;
        }
        let shadow = Shadow {
            target: target.clone(),
            shadow: target.into_database(&name),
            data_url: cfg.data_url.clone(),
            tracker: tracker.clone(),
            swapped: false,
        };
        target::create(&c, &shadow.shadow).await.context("creating the shadow database the archive goes into")?;
        c.batch_execute(&format!(
            "COMMENT ON DATABASE {} IS {}",
            ident(&name),
            literal(&format!("{MARK}shadow of {:?} for {transfer}, dropped unless swapped in", target.name))
        ))
        .await?;
        Ok(shadow)
    }

    /// Where the archive goes.
    pub fn target(&self) -> &Target {
        &self.shadow
    }

    /// Swap the shadow in: end the target's sessions, then in one
    /// transaction rename the target away and the shadow to its name, with
    /// the target's comment; then drop the old contents.
    pub async fn swap(mut self, transfer: &str) -> Result<()> {
        let c = conn::connect(&self.data_url).await?;
        let (name, shadow) = (&self.target.name, &self.shadow.name);
        let oid: u32 = c
            .query_one("SELECT oid FROM pg_catalog.pg_database WHERE datname = $1", &[shadow])
            .await
            .context("finding the shadow database")?
            .get(0);
        let old = replaced_name(oid);
        let renames = format!(
            "BEGIN; ALTER DATABASE {t} RENAME TO {o}; ALTER DATABASE {s} RENAME TO {t}; {comment}; \
             COMMENT ON DATABASE {o} IS {mark}; COMMIT",
            t = ident(name),
            o = ident(&old),
            s = ident(shadow),
            comment = self.target.props.comment_statement(name),
            mark = literal(&format!("{MARK}{name:?} as it was before {transfer}, being dropped")),
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            end_sessions(&c, name).await;
            match c.batch_execute(&renames).await {
                Ok(()) => break,
                Err(e) => {
                    c.batch_execute("ROLLBACK").await.ok();
                    let in_use = e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE);
                    if !(in_use && attempt < SWAP_ATTEMPTS) {
                        return Err(anyhow::Error::from(e).context(format!(
                            "swapping the restored copy in for {name}{}; {name} is as it was",
                            if in_use {
                                " (sessions kept connecting to it, or the agent may not end them: it needs \
                                 pg_signal_backend or the sessions' roles)"
                            } else {
                                ""
                            }
                        )));
                    }
                }
            }
        }
        self.swapped = true;
        if let Err(e) = c.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", ident(&old))).await {
            tracing::warn!(
                "could not drop {old}, which holds what {name} held before {transfer}: {:#} (the next restore into \
                 {name} drops it)",
                anyhow::Error::from(e)
            );
        }
        Ok(())
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        if self.swapped {
            return;
        }
        let (url, name) = (self.data_url.clone(), self.shadow.name.clone());
        self.tracker.spawn(async move {
            let dropped = async {
                let c = conn::connect(&url).await?;
                c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&name))).await?;
                anyhow::Ok(())
            };
            if let Err(e) = dropped.await {
                tracing::warn!("could not drop the shadow database {name}: {e:#} (the next restore into it drops it)");
            }
        });
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
            "a database named {name} is in the way of restoring into {}, and pg_backups did not make it: rename or \
             drop it",
            target.name
        );
    }
    tracing::info!("dropping {name}, left by an earlier restore into {}", target.name);
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(name))).await?;
    Ok(())
}
