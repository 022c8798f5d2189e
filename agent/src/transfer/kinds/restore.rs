//! Restore: a backup (by id, or from an http(s) URL) into a target
//! database, which it replaces: loaded into a shadow swapped in at the end
//! (`steps::load`), unless an earlier attempt's swap already committed
//! (`steps::destination::finished_earlier`).

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use serde::Deserialize;

use crate::transfer::kind::{self, Kind, Row};
use crate::transfer::outcome::Completion;
use crate::transfer::steps::destination;
use crate::transfer::steps::fetch::BackupRef;
use crate::transfer::steps::load;
use crate::transfer::task::Task;

#[derive(Debug, Clone)]
pub struct Restore {
    pub from: BackupRef,
    pub target: String,
    pub options: Options,
    /// The database an earlier attempt swapped in for the target (or was
    /// about to): if it is the target now, that attempt's swap committed.
    pub swapped: Option<u32>,
}

/// What `backups.restore()` asked for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Drop the target first instead of swapping a shadow in.
    #[serde(default)]
    pub in_place: bool,
}

impl Kind for Restore {
    const NAME: &'static str = "restore";

    fn decode(row: &Row) -> Result<Self> {
        let from = row.source.as_deref().context("restore without a backup")?;
        Ok(Restore {
            from: BackupRef::parse(from)?,
            target: row.target(),
            options: kind::options(row)?,
            swapped: row.swapped,
        })
    }

    fn run<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Completion>> {
        Box::pin(run(task, self))
    }
}

async fn run(task: &Task, restore: &Restore) -> Result<Completion> {
    // 1. An earlier attempt may have swapped its copy in already.
    if let Some(done) = destination::finished_earlier(task, &restore.target, restore.swapped).await? {
        return Ok(done);
    }
    // 2. The backup, into the target.
    load::load(task, &restore.from, &restore.target, restore.options.in_place).await
}
