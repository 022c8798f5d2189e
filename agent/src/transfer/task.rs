//! What the work of one transfer is given: the agent's context, which
//! transfer and attempt it is, where to report progress, and the tracker
//! its background tasks are spawned on, so that the supervisor can wait for
//! every one of them to end before it records how the transfer ended.

use std::sync::Arc;

use anyhow::Result;
use tokio_util::task::TaskTracker;

use crate::ctx::Ctx;
use crate::transfer::progress::Progress;
use crate::transfer::staging::Staging;

pub struct Task {
    pub ctx: Arc<Ctx>,
    pub name: String,
    pub attempt: i32,
    pub progress: Progress,
    pub tracker: TaskTracker,
}

impl Task {
    /// This attempt's own staging directory.
    pub fn staging(&self) -> Result<Staging> {
        Staging::create(&self.ctx.cfg.staging_dir, &self.name, self.attempt)
    }
}
