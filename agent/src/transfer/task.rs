//! What the work of one transfer is given: the agent's context, which
//! transfer and attempt it is, where to report progress, and the tracker
//! its background tasks are spawned on, so that the supervisor can wait for
//! every one of them to end before it records how the transfer ended.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tokio_util::task::TaskTracker;

use crate::ctx::Ctx;
use crate::pg::cluster::teardown::Teardown;
use crate::pg::cluster::Cluster;
use crate::staging::Staging;
use crate::transfer::progress::Progress;

pub struct Task {
    pub ctx: Arc<Ctx>,
    /// The transfer's row.
    pub id: i64,
    pub name: String,
    pub attempt: i32,
    pub progress: Progress,
    pub tracker: TaskTracker,
    /// What it leaves to drop when it stops, dropped in order (on `tracker`).
    pub teardown: Teardown,
    /// Set at the point of no return (a restore's swap): from then on a
    /// cancel or a hand back waits for the work to end instead of stopping
    /// it, so that the transfer is never recorded as stopped when its
    /// target was in fact replaced.
    pub committing: Arc<AtomicBool>,
    /// The customer's cluster, over the one admin connection this transfer
    /// opens (when it first needs it).
    pub cluster: tokio::sync::OnceCell<Cluster>,
}

impl Task {
    /// The customer's cluster (opened at the first call).
    pub async fn cluster(&self) -> Result<&Cluster> {
        self.cluster.get_or_try_init(|| Cluster::open(&self.ctx.cfg)).await
    }

    /// This attempt's own staging directory.
    pub fn staging(&self) -> Result<Staging> {
        self.ctx.staging.create(&self.name, self.attempt)
    }

    /// From here the work runs to its end: see `committing`.
    pub fn commit_point(&self) {
        self.committing.store(true, Ordering::SeqCst);
    }

    /// The commit is done (a verification's restore into its scratch
    /// database): stopping is safe again.
    pub fn past_commit(&self) {
        self.committing.store(false, Ordering::SeqCst);
    }
}
