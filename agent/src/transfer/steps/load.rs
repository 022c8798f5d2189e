//! Loading a backup into a target database (a restore's, or a
//! verification's scratch database): one of ours in custom format is
//! streamed into the target's shadow as it is fetched (`streamed`), unless
//! in place (an in-place restore must not drop the target before the whole
//! backup verified); anything else is fetched to staging and verified whole
//! first (`fetch`). Then pg_restore runs with `-j` (the agent's cores) into
//! the shadow (`apply`), which replaces the target only once it holds
//! everything (`destination`).

use anyhow::Result;

use crate::pg::conn;
use crate::store::backups;
use crate::store::layout::Format;
use crate::transfer::outcome::Completion;
use crate::transfer::progress::Level;
use crate::transfer::steps::apply::{apply, completion, jobs, read_archive, Only};
use crate::transfer::steps::destination::Destination;
use crate::transfer::steps::fetch::{self, BackupRef};
use crate::transfer::steps::streamed::{self, Streamed};
use crate::transfer::task::Task;

/// Load backup `from` into database `target` (replacing it), in place or
/// through a shadow.
pub async fn load(task: &Task, from: &BackupRef, target: &str, in_place: bool) -> Result<Completion> {
    let staging = task.staging()?;
    let ours = match from {
        _ if in_place => None,
        BackupRef::Id(id) => Some(backups::find(&conn::connect(task.ctx.cfg.control()?).await?, Some(id)).await?),
        BackupRef::Found(b) => Some((**b).clone()),
        BackupRef::Url(_) => None,
    };
    let (archive, format) = match ours {
        Some(b) => {
            task.progress.expect(b.stored_size.max(0) as u64);
            if b.format != Format::Custom {
                fetch::fetch_stored(task, &b, staging.path()).await?
            } else {
                match streamed::run(task, target, &b, staging.path()).await? {
                    Streamed::Restored(done) => return Ok(done),
                    Streamed::Staged(path) => (path, Format::Custom),
                }
            }
        }
        None => fetch::fetch(task, from, staging.path()).await?,
    };
    let (toc, tools) = read_archive(task, &archive, staging.path()).await?;
    let jobs = jobs();
    task.progress.say(
        Level::Info,
        format!("replacing database {target:?} with {} ({} format), {jobs} jobs", from.describe(), format.as_str()),
    );
    let dest = Destination::prepare(task, target, in_place).await?;
    let mut warnings =
        apply(task, tools, &dest.conn()?, &dest.target, &archive, &toc, staging.path(), Some(jobs), Only::All).await?;
    warnings += dest.finish(task).await?;
    Ok(completion(task, &format!("restored into {target}"), "read", warnings))
}
