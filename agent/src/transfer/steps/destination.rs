//! Where a restore or a copy writes, and how it ends there. By default the
//! archive goes into a shadow of the target, swapped in once everything is
//! in (`pg/shadow.rs`), so that nothing short of success touches the
//! target; `in_place => true` drops and recreates the target first instead,
//! for servers without the room for a second copy. Either way the result
//! gets the target's settings, grants, connection limit and comment, and
//! the archive is applied by the transfer's throwaway login
//! (`pg/applier.rs`), with at most the owner's rights.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::pg::cluster::applier::Applier;
use crate::pg::cluster::shadow::{self, Shadow};
use crate::pg::cluster::target::{self, Target};
use crate::pg::conn::{self, Conn};
use crate::transfer::outcome::Completion;
use crate::transfer::progress::Level;
use crate::transfer::steps::apply;
use crate::transfer::task::Task;

/// How long the swap's record waits for the control database.
const RECORD_PATIENCE: Duration = Duration::from_secs(15);

pub struct Destination {
    /// Where the archive is applied: the shadow, or the target in place.
    pub target: Target,
    /// The target as it was found.
    original: Target,
    applier: Applier,
    shadow: Option<Shadow>,
}

impl Destination {
    /// Find target `name` and make where its archive goes: its shadow, or,
    /// `in_place`, the target itself, dropped and recreated once the
    /// applier has shown it can log in. What the archive runs gets the
    /// owner's rights: say so when they are more than a database owner's
    /// should be.
    pub async fn prepare(task: &Task, name: &str, in_place: bool) -> Result<Destination> {
        let cluster = task.cluster().await?;
        let target = target::find(cluster, name).await?;
        warn_if_privileged(task, &target);
        target::check_replaceable(cluster, &target).await?;
        let (into, applier, shadow) = if in_place {
            let applier = Applier::create(cluster, &target, &task.name, task.attempt, &task.teardown).await?;
            task.progress.say(
                Level::Warning,
                format!(
                    "in place: dropping {} now; if this transfer fails or is cancelled, it is left empty or \
                     half-restored",
                    target.name
                ),
            );
            target::recreate(cluster, &target).await?;
            (target.clone(), applier, None)
        } else {
            let shadow = Shadow::create(cluster, &target, &task.name, &task.teardown).await?;
            let into = shadow.target().clone();
            task.progress.say(
                Level::Info,
                format!("applying into {}, which replaces {} once everything is in", into.name, target.name),
            );
            let applier = Applier::create(cluster, &into, &task.name, task.attempt, &task.teardown).await?;
            (into, applier, Some(shadow))
        };
        // Until it gets the target's grants, only the applier (NOINHERIT:
        // the owner's rights are not its own) may connect, not PUBLIC.
        target::open_only_to(cluster, &into.name, applier.role()).await?;
        Ok(Destination { target: into, original: target, applier, shadow })
    }

    /// The connection the tools apply the archive over.
    pub fn conn(&self) -> Result<Conn> {
        self.applier.conn()
    }

    /// Everything is in: end the applier (its sessions end, what it made
    /// is the owner's), give what was applied the grants, limit and
    /// settings the target has now, and swap the shadow in. The settings
    /// the agent could not keep, as warnings.
    pub async fn finish(self, task: &Task) -> Result<i32> {
        let cluster = task.cluster().await?;
        self.applier.close().await?;
        // As the target is now, not as it was when the restore began.
        let now = match &self.shadow {
            Some(_) => target::find(cluster, &self.original.name).await?,
            None => self.original.clone(),
        };
        if now.props.oid != self.original.props.oid {
            bail!("{} was replaced by another database during the restore: refusing to swap", now.name);
        }
        let mut warnings = target::configure(cluster, &now, &self.target.name).await?;
        match self.shadow {
            Some(shadow) => {
                task.commit_point();
                record_swap(task, shadow.oid()).await?;
                match shadow.swap(&now, &task.name).await? {
                    None => {
                        task.progress.say(Level::Info, "swapped in; the previous contents were dropped".to_string())
                    }
                    Some(w) => {
                        task.progress.say(Level::Info, "swapped in".to_string());
                        warnings.push(w);
                    }
                }
            }
            None => {
                target::comment(cluster, &self.target).await?;
                // In place, the target is now this transfer's: a later
                // attempt must not drop and fill it again.
                task.commit_point();
                record_swap(task, target::oid_of(cluster, &self.target.name).await?).await?;
            }
        }
        for w in &warnings {
            task.progress.say(Level::Warning, w.clone());
        }
        Ok(warnings.len() as i32)
    }
}

/// Say in the control database which database is about to be swapped in,
/// before the swap: a later attempt of this transfer then knows whether
/// the swap happened (`finished_earlier`). Refuses to go on when the
/// transfer is no longer this attempt's.
async fn record_swap(task: &Task, oid: u32) -> Result<()> {
    let cfg = &task.ctx.cfg;
    // A restore from the shell with storage alone has no catalog to tell,
    // and no later attempt to tell it to.
    let Some(url) = &cfg.store.database_url else { return Ok(()) };
    let control =
        conn::connect_with_retry(url, RECORD_PATIENCE).await.context("recording the swap in the control database")?;
    let ours: bool = control
        .query_one("SELECT backups._record_swap($1, $2, $3, $4)", &[&task.id, &cfg.agent_id, &task.attempt, &oid])
        .await
        .context("recording the swap in the control database")?
        .get(0);
    if !ours {
        bail!("the transfer is no longer this attempt's (the worker requeued it): not swapping");
    }
    Ok(())
}

/// An earlier attempt of this restore or copy into `target` recorded that
/// it was swapping in database `swapped` (or, in place, that it had
/// filled it): if that database is `target` now, it committed before the
/// attempt stopped (killed, stopped, cut off), and what was written to the
/// target since must not be replaced again. Then only what that attempt
/// left (the target's old contents) is dropped, and the transfer ends here.
/// If it is still the shadow, it is dropped first: the earlier attempt may
/// be alive and about to swap it in, and the drop waits for its swap (both
/// take the database's lock), so that what is read after it is final.
pub async fn finished_earlier(task: &Task, target: &str, swapped: Option<u32>) -> Result<Option<Completion>> {
    let Some(oid) = swapped else { return Ok(None) };
    let cluster = task.cluster().await?;
    let mut now = target::database_named(cluster, oid).await?;
    if let Some(shadow) = now.as_deref().filter(|n| *n != target && shadow::is_shadow_name(n)) {
        task.progress.say(Level::Info, format!("dropping {shadow}, which an earlier attempt did not swap in"));
        shadow::drop_unswapped(cluster, shadow).await?;
        now = target::database_named(cluster, oid).await?;
    }
    if now.as_deref() != Some(target) {
        task.progress.say(Level::Info, "an earlier attempt stopped before its swap: restoring into a new shadow");
        return Ok(None);
    }
    task.progress.say(
        Level::Info,
        format!(
            "an earlier attempt swapped its copy in for {target} before it stopped (database oid {oid}): keeping it, \
             and what was written to it since"
        ),
    );
    if let Some(w) = shadow::drop_replaced(&*cluster.client().await?, oid).await {
        task.progress.say(Level::Warning, w);
    }
    Ok(Some(apply::completion(task, &format!("swapped into {target} by an earlier attempt"), "read", 0)))
}

/// What the archive runs gets the owner's rights: say so when they are
/// more than a database owner's should be.
pub fn warn_if_privileged(task: &Task, target: &Target) {
    if target.privileged_owner {
        task.progress.say(
            Level::Warning,
            format!(
                "{} is owned by {}, a superuser or a role with powers beyond its databases: what the archive \
                 runs (functions in constraints, triggers, index expressions) runs with those; give the \
                 database to an ordinary role (ALTER DATABASE ... OWNER TO) to contain it",
                target.name, target.owner
            ),
        );
    }
}
