//! Applying an archive to a target as its owner, shared by restores
//! (staged or streamed) and copies: its table of contents read and its
//! extensions checked, then the schemas, the extensions (created by the
//! agent) and the rest, in whole or in the parts a streamed restore applies
//! around its data.

use std::collections::HashSet;
use std::path::Path as FsPath;

use anyhow::{Context, Result};

use crate::pg::archive::{self, Part, Toc};
use crate::pg::bins::Tools;
use crate::pg::conn::Conn;
use crate::pg::target::{self, Target};
use crate::transfer::job::Completion;
use crate::transfer::progress::human;
use crate::transfer::report::Level;
use crate::transfer::task::Task;

/// How many connections a restore or copy applies with: one per core.
pub fn jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// How a restore or copy that finished its work ends: the last line of its
/// log, "DONE[ with N warnings] (SIZE HOW)", and its completion.
pub fn completion(task: &Task, done: &str, how: &str, warnings: i32) -> Completion {
    let processed = task.progress.processed();
    let note = if warnings > 0 { format!(" with {warnings} warnings") } else { String::new() };
    task.progress.say(Level::Info, format!("{done}{note} ({} {how})", human(processed)));
    Completion::Applied { processed, warnings }
}

/// An archive's table of contents, read by the newest pg_restore (which
/// reads any archive the others can, and says which pg_dump wrote it), the
/// tools that fit it and the target's server, and its extensions checked.
pub async fn read_archive<'a>(task: &'a Task, archive: &FsPath, scratch: &FsPath) -> Result<(Toc, &'a Tools)> {
    let newest = task.ctx.bins.newest();
    let toc = archive::read(newest, archive, scratch).await.with_context(|| {
        format!(
            "pg_restore {} cannot read the backup; a newer pg_restore may be needed: add its bin directory with \
             --pg-bin-dir",
            newest.describe()
        )
    })?;
    let archive_major =
        toc.dumped_by().with_context(|| format!("no pg_dump version in the list of {}", archive.display()))?;
    let tools = task.ctx.bins.for_restore(target::server_major(&task.ctx.cfg).await?, archive_major)?;
    task.progress.say(Level::Info, tools.used());
    target::check_extensions(&task.ctx.cfg, &toc.extensions).await?;
    Ok((toc, tools))
}

/// Which part of an archive `apply` applies.
#[derive(Debug, Clone, Copy)]
pub enum Only<'a> {
    /// All of it.
    All,
    /// The schema before the data: the data is loaded apart.
    PreData,
    /// The rest, once the data of the entries `loaded` is in.
    AfterData { loaded: &'a HashSet<i32> },
}

/// Apply `archive` (or `only` a part of it) to `target` as its owner, over
/// `conn` (the transfer's applier): the schemas, then the extensions
/// (created by the agent), then everything else with `jobs`. pg_restore's
/// warnings.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    task: &Task,
    tools: &Tools,
    conn: &Conn,
    target: &Target,
    archive: &FsPath,
    toc: &Toc,
    scratch: &FsPath,
    jobs: Option<usize>,
    only: Only<'_>,
) -> Result<i32> {
    let cfg = &task.ctx.cfg;
    let mut warnings = 0;
    let with_extensions = !toc.extensions.is_empty();
    if !matches!(only, Only::AfterData { .. }) {
        task.progress.say(Level::Info, format!("applying the archive as the database's owner, {}", target.owner));
    }
    if with_extensions && !matches!(only, Only::AfterData { .. }) {
        let list = scratch.join("schemas.list");
        toc.write_list(&list, Part::Schemas)?;
        let mut cmd = target::pg_restore(tools, conn, target, None, Some(&list))?;
        cmd.arg(archive);
        warnings += target::restore_warnings(&cmd.spawn(task.progress.tool_output())?.wait().await?)?;
        target::create_extensions(cfg, target, &toc.extensions).await?;
    }
    let list = scratch.join("rest.list");
    let rest = Part::Rest { without_schemas: with_extensions };
    let mut cmd = match only {
        Only::All => {
            toc.write_list(&list, rest)?;
            target::pg_restore(tools, conn, target, jobs, Some(&list))?
        }
        Only::PreData => {
            toc.write_list(&list, rest)?;
            let mut c = target::pg_restore(tools, conn, target, None, Some(&list))?;
            c.arg("--section=pre-data");
            c
        }
        Only::AfterData { loaded } => {
            toc.write_list_except(&list, rest, loaded)?;
            let mut c = target::pg_restore(tools, conn, target, jobs, Some(&list))?;
            c.args(["--section=data", "--section=post-data"]);
            c
        }
    };
    cmd.arg(archive);
    warnings += target::restore_warnings(&cmd.spawn(task.progress.tool_output())?.wait().await?)?;
    Ok(warnings)
}
