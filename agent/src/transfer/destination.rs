//! Where a restore or a copy writes, and how it ends there. By default the
//! archive goes into a shadow of the target, swapped in once everything is
//! in (`pg/shadow.rs`), so that nothing short of success touches the
//! target; `in_place => true` drops and recreates the target first instead,
//! for servers without the room for a second copy. Either way the result
//! gets the target's settings, grants, connection limit and comment, and
//! the archive is applied by the transfer's throwaway login
//! (`pg/applier.rs`), with at most the owner's rights.

use anyhow::Result;

use crate::pg::applier::Applier;
use crate::pg::conn::Conn;
use crate::pg::shadow::Shadow;
use crate::pg::target::{self, Target};
use crate::transfer::report::Level;
use crate::transfer::task::Task;

pub struct Destination {
    /// Where the archive is applied: the shadow, or the target in place.
    pub target: Target,
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
        let cfg = &task.ctx.cfg;
        let target = target::find(cfg, name).await?;
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
        if in_place {
            let applier = Applier::create(cfg, &target, &task.name, task.attempt, &task.tracker).await?;
            task.progress.say(
                Level::Warning,
                format!(
                    "in place: dropping {} now; if this transfer fails or is cancelled, it is left empty or \
                     half-restored",
                    target.name
                ),
            );
            target::recreate(cfg, &target).await?;
            return Ok(Destination { target, applier, shadow: None });
        }
        let shadow = Shadow::create(cfg, &target, &task.name, &task.tracker).await?;
        let into = shadow.target().clone();
        task.progress.say(
            Level::Info,
            format!("applying into {}, which replaces {} once everything is in", into.name, target.name),
        );
        let applier = Applier::create(cfg, &into, &task.name, task.attempt, &task.tracker).await?;
        Ok(Destination { target: into, applier, shadow: Some(shadow) })
    }

    /// The connection the tools apply the archive over.
    pub fn conn(&self) -> Result<Conn> {
        self.applier.conn()
    }

    /// Everything is in: give it the target's settings, grants and limit,
    /// end the applier, and swap the shadow in. The role settings the
    /// agent could not keep, as warnings.
    pub async fn finish(self, task: &Task) -> Result<i32> {
        let cfg = &task.ctx.cfg;
        let warnings = target::configure(cfg, &self.target).await?;
        for w in &warnings {
            task.progress.say(Level::Warning, w.clone());
        }
        self.applier.close().await?;
        match self.shadow {
            Some(shadow) => {
                shadow.swap(&task.name).await?;
                task.progress.say(Level::Info, "swapped in; the previous contents were dropped".to_string());
            }
            None => target::comment(cfg, &self.target).await?,
        }
        Ok(warnings.len() as i32)
    }
}
