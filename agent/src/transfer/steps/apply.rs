//! Applying an archive to a target as its owner, shared by restores
//! (staged or streamed) and copies: its table of contents read and its
//! extensions checked, then the schemas, the extensions (created by the
//! agent) and the rest, in whole or in the parts a streamed restore applies
//! around its data.

use std::collections::HashSet;
use std::path::Path as FsPath;

use anyhow::{Context, Result};

use crate::pg::cluster::target::{self, Target};
use crate::pg::conn::Conn;
use crate::pg::formats::archive::{self, Part, Toc};
use crate::pg::tools::bins::Tools;
use crate::transfer::outcome::Completion;
use crate::transfer::progress::human;
use crate::transfer::progress::Level;
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
    let cluster = task.cluster().await?;
    let tools = task.ctx.bins.for_restore(target::server_major(cluster).await?, archive_major)?;
    task.progress.say(Level::Info, tools.used());
    target::check_extensions(cluster, &toc.extensions).await?;
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
        target::create_extensions(task.cluster().await?, target, &toc.extensions).await?;
    }
    let rest = Part::Rest { without_schemas: with_extensions };
    // Data that does not load fails the transfer on every path (the target
    // is not touched): pg_restore would otherwise count a COPY that failed
    // as one more error it ignored, leave the table empty, and the shadow
    // would be swapped in "with warnings". So the data section runs apart,
    // with --exit-on-error; the schema before it and the indexes and
    // constraints after it keep pg_restore's warnings.
    let none = HashSet::new();
    let (pre, data, post) = match only {
        Only::All => (true, Some(&none), true),
        Only::PreData => (true, None, false),
        Only::AfterData { loaded } => (false, Some(loaded), true),
    };
    let run = Sections { task, tools, conn, target, archive, toc, scratch, rest };
    if pre {
        warnings += run.section("pre-data", None, None).await?;
    }
    if let Some(loaded) = data {
        warnings += run.section("data", jobs, Some(loaded)).await?;
    }
    if post {
        warnings += run.section("post-data", jobs, None).await?;
    }
    Ok(warnings)
}

/// What each section's pg_restore of one `apply` runs with.
struct Sections<'a> {
    task: &'a Task,
    tools: &'a Tools,
    conn: &'a Conn,
    target: &'a Target,
    archive: &'a FsPath,
    toc: &'a Toc,
    scratch: &'a FsPath,
    /// The entries applied, by type.
    rest: Part,
}

impl Sections<'_> {
    /// One section by pg_restore: `data` (without the entries `loaded`
    /// apart, stopping at its first error), or the others (their errors
    /// counted as warnings).
    async fn section(&self, name: &str, jobs: Option<usize>, loaded: Option<&HashSet<i32>>) -> Result<i32> {
        let list = self.scratch.join(format!("{name}.list"));
        self.toc.write_list_except(&list, self.rest, loaded.unwrap_or(&HashSet::new()))?;
        let mut cmd = target::pg_restore(self.tools, self.conn, self.target, jobs, Some(&list))?;
        cmd.arg(format!("--section={name}"));
        if loaded.is_some() {
            cmd.arg("--exit-on-error");
        }
        cmd.arg(self.archive);
        let exit = cmd.spawn(self.task.progress.tool_output())?.wait().await?;
        if loaded.is_some() {
            exit.check().context("the data did not load")?;
            return Ok(0);
        }
        target::restore_warnings(&exit)
    }
}
