//! Copy: one database into another without going through storage, like
//! `heroku pg:copy`, but in parallel, the way pgcopydb does it:
//!
//! 1. the source exports a snapshot that every step below reads, so the
//!    copy is consistent;
//! 2. the schema (pg_dump's pre-data section) is dumped to staging and
//!    applied into the target's shadow (as in a restore: extensions created
//!    by the agent, the rest as the target's owner);
//! 3. the data: the larger tables stream `COPY TO` -> `COPY FROM` over N
//!    connection pairs at once (text format: binary COPY carries type OIDs,
//!    which differ between databases); everything else in the data section
//!    (small tables, sequence values, large objects, extension config
//!    tables) goes through pg_dump | pg_restore beside them;
//! 4. indexes, constraints and triggers (post-data) are built by
//!    `pg_restore -j N`, from a small directory dump in staging;
//! 5. the shadow gets the target's settings and grants and is swapped in
//!    (`destination.rs`): until then the target is untouched.
//!
//! Everything written runs as the target's owner (`pg_restore --role`,
//! `SET ROLE` before COPY FROM). Everything read runs with row_security
//! off, as pg_dump does: where a policy would hide rows from the agent's
//! role, the copy fails instead of copying fewer rows.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pg::archive;
use crate::pg::bins::{self, Tools};
use crate::pg::conn::{self, Conn};
use crate::pg::quote;
use crate::pg::target::{self, Target};
use crate::pg::tool::{Tool, ToolCommand};
use crate::transfer::capture;
use crate::transfer::destination::Destination;
use crate::transfer::job::{Completion, Copy};
use crate::transfer::progress::{human, Progress};
use crate::transfer::report::Level;
use crate::transfer::restore;
use crate::transfer::task::Task;

/// Tables smaller than this go through pg_dump with the rest of the data.
const PARALLEL_TABLE_MIN_BYTES: i64 = 1 << 20;

/// The tools each side runs: pg_dump and psql COPY TO on the source,
/// pg_restore and psql COPY FROM on the target.
#[derive(Clone, Copy)]
struct Sides<'a> {
    source: &'a Tools,
    target: &'a Tools,
}

pub async fn run(task: &Task, copy: &Copy) -> Result<Completion> {
    let cfg = &task.ctx.cfg;
    let source = capture::connection(cfg, &copy.source)?;
    let staging = task.staging()?;
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    // 1. One snapshot for every step; it lives as long as this transaction.
    let snap_conn = conn::connect(&source.with_password()).await.context("connecting to the source database")?;
    snap_conn.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
    let snapshot: String = snap_conn.query_one("SELECT pg_catalog.pg_export_snapshot()", &[]).await?.get(0);
    let tables = big_tables(&snap_conn).await?;
    // The source side's tools fit the source; the target side's fit the
    // target and read what the source side's pg_dump writes.
    let source_major = bins::server_major(&snap_conn).await?;
    let (source_tools, target_tools) = task.ctx.bins.for_copy(source_major, target::server_major(cfg).await?)?;
    task.progress.say(Level::Info, format!("source: {}", source_tools.used()));
    task.progress.say(Level::Info, format!("target: {}", target_tools.used()));
    task.progress.say(
        Level::Info,
        format!(
            "copying {} into {:?} from snapshot {snapshot}: {} tables by {jobs} parallel COPY streams, the rest through pg_dump",
            copy.source.label(),
            copy.target,
            tables.len()
        ),
    );
    let tools = Sides { source: source_tools, target: target_tools };
    let dump = Dump { tools, source: &source, snapshot: &snapshot, progress: &task.progress };

    // 2. Schema.
    let pre = staging.path().join("pre-data.dump");
    dump.to_file(&pre, &["--section=pre-data"]).await.context("dumping the schema")?;
    let toc = archive::read(tools.target, &pre, staging.path()).await?;
    target::check_extensions(cfg, &toc.extensions).await?;
    let dest = Destination::prepare(task, &copy.target, copy.in_place).await?;
    let target = dest.target.clone();
    let target_conn = dest.conn()?;
    let warnings = restore::apply(task, tools.target, &target_conn, &target, &pre, &toc, staging.path(), None).await?;
    if warnings > 0 {
        bail!("pg_restore reported {warnings} errors creating the schema");
    }

    // 3. Data: the big tables in parallel, biggest first; the rest beside them.
    let mut rest_args = vec!["--section=data".to_string()];
    rest_args.extend(tables.iter().map(|(name, _)| format!("--exclude-table-data={name}")));
    let rest_args: Vec<&str> = rest_args.iter().map(String::as_str).collect();
    let queue = Arc::new(Mutex::new(tables.iter().map(|(n, _)| n.clone()).collect::<VecDeque<_>>()));
    let streams = (0..jobs.min(tables.len()).max(1))
        .map(|_| copy_tables(tools, &source, (&target_conn, &target.owner), &snapshot, queue.clone(), &task.progress));
    let (rest, copies) =
        tokio::join!(dump.pipe((&target_conn, &target), &rest_args), futures::future::join_all(streams));
    rest.context("copying sequences, large objects and small tables")?;
    for c in copies {
        c?;
    }

    // 4. Indexes, constraints, triggers: pg_restore -j from a directory dump.
    let post = staging.path().join("post-data");
    dump.to_dir(&post, &["--section=post-data"]).await.context("dumping indexes and constraints")?;
    let mut cmd = target::pg_restore(tools.target, &target_conn, &target, Some(jobs), None)?;
    cmd.arg(&post);
    let mut warnings = target::restore_warnings(&cmd.spawn(task.progress.tool_output())?.wait().await?)?;
    drop(snap_conn);
    warnings += dest.finish(task).await?;

    let processed = task.progress.processed();
    let note = if warnings > 0 { format!(" with {warnings} warnings") } else { String::new() };
    task.progress.say(
        Level::Info,
        format!("copied {} into {}{note} ({} streamed)", copy.source.label(), copy.target, human(processed)),
    );
    Ok(Completion::Applied { processed, warnings })
}

/// Ordinary tables worth a COPY stream of their own, biggest first, as
/// quoted `schema.table`. Extension members (pg_dump treats their config
/// tables specially) and tiny tables are left to pg_dump.
async fn big_tables(c: &tokio_postgres::Client) -> Result<Vec<(String, i64)>> {
    let rows = c
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname), pg_table_size(c.oid)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence <> 't'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
                AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                   AND d.objid = c.oid AND d.deptype = 'e')
                AND pg_table_size(c.oid) >= $1
              ORDER BY 2 DESC",
            &[&PARALLEL_TABLE_MIN_BYTES],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// One COPY stream: take tables off the queue until it is empty. Each table
/// goes `psql COPY TO STDOUT` (in the exported snapshot) -> agent -> `psql
/// COPY FROM STDIN` (as `owner`): libpq moves the rows, the agent only
/// counts bytes.
async fn copy_tables(
    tools: Sides<'_>,
    source: &Conn,
    (target, owner): (&Conn, &str),
    snapshot: &str,
    queue: Arc<Mutex<VecDeque<String>>>,
    progress: &Progress,
) -> Result<()> {
    loop {
        let Some(table) = queue.lock().expect("queue").pop_front() else { break };
        progress.say(Level::Info, format!("copying table {table}"));
        let mut out = psql(
            tools.source,
            source,
            &[
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                &format!("SET TRANSACTION SNAPSHOT '{}'", snapshot.replace('\'', "''")),
                "SET row_security = off",
                &format!("COPY {table} TO STDOUT"),
                "COMMIT",
            ],
        );
        out.stdout_piped();
        let mut inn = psql(
            tools.target,
            target,
            &[
                &format!("SET ROLE {}", quote::ident(owner)),
                "SET synchronous_commit = off",
                &format!("COPY {table} FROM STDIN"),
            ],
        );
        inn.stdin_piped();
        let mut reader = out.spawn(progress.tool_output())?;
        let mut writer = inn.spawn(progress.tool_output())?;
        let pumped = pump(reader.take_stdout(), writer.take_stdin(), progress.counter());
        let (pumped, r, w) = tokio::join!(pumped, reader.wait(), writer.wait());
        let (r, w) = (r?, w?);
        for (end, exit) in [("reading", &r), ("writing", &w)] {
            if !exit.success() {
                bail!("copying {table} failed {end} it: {}", exit.said());
            }
        }
        pumped.with_context(|| format!("copying {table}"))?;
    }
    Ok(())
}

/// `psql -X -q -v ON_ERROR_STOP=1 -c ...`.
fn psql(tools: &Tools, conn: &Conn, commands: &[&str]) -> ToolCommand {
    let mut c = ToolCommand::new(tools, Tool::Psql, conn);
    c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
    // As in the agent's own sessions: the database's search_path is its
    // owner's to set, and must not reach what runs here.
    c.arg("-c").arg("SET search_path = pg_catalog, pg_temp");
    for cmd in commands {
        c.arg("-c").arg(cmd);
    }
    c
}

/// Move bytes from one tool to another in large chunks, counting them.
async fn pump(
    mut from: tokio::process::ChildStdout,
    mut into: tokio::process::ChildStdin,
    copied: Arc<AtomicU64>,
) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        into.write_all(&buf[..n]).await?;
        copied.fetch_add(n as u64, Ordering::Relaxed);
    }
    into.shutdown().await?;
    Ok(())
}

/// pg_dump of the source at the exported snapshot.
struct Dump<'a> {
    tools: Sides<'a>,
    source: &'a Conn,
    snapshot: &'a str,
    progress: &'a Progress,
}

impl Dump<'_> {
    fn command(&self, args: &[&str]) -> ToolCommand {
        let mut c = ToolCommand::new(self.tools.source, Tool::PgDump, self.source);
        c.args(["--no-acl", "--no-owner", "--quote-all-identifiers", "--compress=0"])
            .arg(format!("--snapshot={}", self.snapshot))
            .args(args);
        c
    }

    /// `pg_dump -Fc ARGS | pg_restore` into `target`, counting the bytes.
    async fn pipe(&self, (conn, target): (&Conn, &Target), args: &[&str]) -> Result<()> {
        let mut cmd = self.command(args);
        cmd.arg("--format=custom").stdout_piped();
        let mut dump = cmd.spawn(self.progress.tool_output())?;
        let mut restore_cmd = target::pg_restore(self.tools.target, conn, target, None, None)?;
        restore_cmd.stdin_piped();
        let mut restore = restore_cmd.spawn(self.progress.tool_output())?;
        let pumped = pump(dump.take_stdout(), restore.take_stdin(), self.progress.counter());
        let (pumped, dumped, restored) = tokio::join!(pumped, dump.wait(), restore.wait());
        dumped?.check()?;
        pumped.context("piping pg_dump into pg_restore")?;
        let warnings = target::restore_warnings(&restored?)?;
        if warnings > 0 {
            bail!("pg_restore reported {warnings} errors");
        }
        Ok(())
    }

    /// `pg_dump -Fc ARGS -f file`.
    async fn to_file(&self, file: &std::path::Path, args: &[&str]) -> Result<()> {
        let mut cmd = self.command(args);
        cmd.arg("--format=custom").arg("--file").arg(file);
        cmd.spawn(self.progress.tool_output())?.wait().await?.check()
    }

    /// `pg_dump -Fd ARGS -f dir`.
    async fn to_dir(&self, dir: &std::path::Path, args: &[&str]) -> Result<()> {
        let mut cmd = self.command(args);
        cmd.arg("--format=directory").arg("--file").arg(dir);
        cmd.spawn(self.progress.tool_output())?.wait().await?.check()
    }
}
