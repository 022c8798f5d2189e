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
//!
//! The COPY streams carry what pg_dump's COPY would, value for value:
//!
//! - every COPY names its columns, read from the source in the snapshot:
//!   the non-dropped, non-generated ones in attnum order, quoted. pg_dump
//!   may create the target's table with its columns in another order (an
//!   inheritance child whose parent gained a column after it was created
//!   gets the parent's columns first), and without the source's dropped
//!   columns; a bare `COPY t` would fail or swap values there. Generated
//!   columns are left for the target to compute, as pg_dump leaves them.
//! - both ends pin the session settings pg_dump pins, so that no `ALTER
//!   DATABASE/ROLE ... SET` on either side changes the text in between:
//!   client_encoding (the source database's encoding, which pg_dump writes
//!   by default: no conversion on the way out, one on the way in), DateStyle
//!   ISO (no days-first dates, no zone abbreviations), IntervalStyle postgres
//!   (sql_standard's single leading sign reads back differently) and
//!   extra_float_digits 3 (no rounding).
//! - a table larger than `--split-tables-larger-than` is read in parts by
//!   ctid ranges, as pgcopydb's option of that name does: each part is an
//!   item of its own for the streams, read in the same snapshot as the rest
//!   (`COPY (SELECT cols FROM ONLY t WHERE ctid >= '(a,0)' AND ctid <
//!   '(b,0)') TO STDOUT`, the last range open-ended) and written into the
//!   same target table. PostgreSQL 14 and later scan just the range (TID
//!   range scans); older servers scan the whole table for each part.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;
use crate::pg::cluster::size;
use crate::pg::cluster::target::{self, Target};
use crate::pg::conn::quote;
use crate::pg::conn::{self, Conn};
use crate::pg::formats::archive;
use crate::pg::formats::copy_text;
use crate::pg::tools::bins::{self, Tools};
use crate::pg::tools::tool::{Tool, ToolCommand};
use crate::transfer::kind::{self, Kind, Row};
use crate::transfer::outcome::Completion;
use crate::transfer::progress::Level;
use crate::transfer::progress::{human, Progress};
use crate::transfer::steps::apply;
use crate::transfer::steps::destination::{self, Destination};
use crate::transfer::steps::source::{self, Source};
use crate::transfer::task::Task;

/// Tables smaller than this go through pg_dump with the rest of the data.
const PARALLEL_TABLE_MIN_BYTES: i64 = 1 << 20;

/// A split table is read in at most this many parts: beyond that, more
/// parts only mean more processes and log lines for the same streams.
const MAX_PARTS: i64 = 256;

/// The tools each side runs: pg_dump and psql COPY TO on the source,
/// pg_restore and psql COPY FROM on the target.
#[derive(Clone, Copy)]
struct Sides<'a> {
    source: &'a Tools,
    target: &'a Tools,
}

/// A copy: its source, and the target it replaces.
#[derive(Debug, Clone)]
pub struct Copy {
    pub source: Source,
    pub target: String,
    pub options: Options,
    /// As `Restore::swapped`.
    pub swapped: Option<u32>,
}

/// What `backups.copy()` asked for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The source is a named source of the agent's configuration, not a
    /// database of this cluster.
    #[serde(default)]
    pub named_source: bool,
    /// Drop the target first instead of swapping a shadow in.
    #[serde(default)]
    pub in_place: bool,
}

impl Kind for Copy {
    const NAME: &'static str = "copy";

    fn decode(row: &Row) -> Result<Self> {
        let options: Options = kind::options(row)?;
        let source = row.source.clone().context("copy without a source")?;
        Ok(Copy {
            source: if options.named_source { Source::Named(source) } else { Source::Database(source) },
            target: row.target(),
            options,
            swapped: row.swapped,
        })
    }

    fn run<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Completion>> {
        Box::pin(run(task, self))
    }
}

async fn run(task: &Task, copy: &Copy) -> Result<Completion> {
    let cfg = &task.ctx.cfg;
    if let Some(done) = destination::finished_earlier(task, &copy.target, copy.swapped).await? {
        return Ok(done);
    }
    let source = copy.source.connection(cfg)?;
    let staging = task.staging()?;
    let jobs = apply::jobs();

    // 1. One snapshot for every step; it lives as long as this transaction.
    let snap_conn = conn::connect(&source.with_password()).await.context("connecting to the source database")?;
    snap_conn.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
    let snapshot: String = snap_conn.query_one("SELECT pg_catalog.pg_export_snapshot()", &[]).await?.get(0);
    let source_major = bins::server_major(&snap_conn).await?;
    let tables = big_tables(&snap_conn, source_major).await?;
    task.progress.expect(size::table_bytes(&snap_conn, true).await?);
    let encoding: String =
        snap_conn.query_one("SELECT pg_catalog.current_setting('server_encoding')", &[]).await?.get(0);
    // The source side's tools fit the source; the target side's fit the
    // target and read what the source side's pg_dump writes.
    let (source_tools, target_tools) =
        task.ctx.bins.for_copy(source_major, target::server_major(task.cluster().await?).await?)?;
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
    let parts = work_queue(&tables, cfg.split_tables_larger_than, jobs, &task.progress);
    let tools = Sides { source: source_tools, target: target_tools };
    let dump = Dump { cfg, tools, source: &source, snapshot: &snapshot, progress: &task.progress };

    // 2. Schema.
    let pre = staging.path().join("pre-data.dump");
    dump.to_file(&pre, &["--section=pre-data"]).await.context("dumping the schema")?;
    let toc = archive::read(tools.target, &pre, staging.path()).await?;
    target::check_extensions(task.cluster().await?, &toc.extensions).await?;
    let dest = Destination::prepare(task, &copy.target, copy.options.in_place).await?;
    let target = dest.target.clone();
    let target_conn = dest.conn()?;
    // (The dump holds the schema before the data alone: one pg_restore.)
    let warnings =
        apply::apply(task, tools.target, &target_conn, &target, &pre, &toc, staging.path(), None, apply::Only::PreData)
            .await?;
    if warnings > 0 {
        bail!("pg_restore reported {warnings} errors creating the schema");
    }

    // 3. Data: the big tables in parallel, biggest first; the rest beside them.
    let mut rest_args = vec!["--section=data".to_string()];
    rest_args.extend(tables.iter().map(|t| format!("--exclude-table-data={}", t.name)));
    let rest_args: Vec<&str> = rest_args.iter().map(String::as_str).collect();
    let settings = copy_text::session_settings(&encoding);
    let stream = Stream {
        tools,
        source: &source,
        target: &target_conn,
        owner: &target.owner,
        snapshot: &snapshot,
        settings: &settings,
        progress: &task.progress,
    };
    let n = jobs.min(parts.len()).max(1);
    let queue = Mutex::new(parts);
    let streams = (0..n).map(|_| stream.run(&queue));
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

    let done = format!("copied {} into {}", copy.source.label(), copy.target);
    Ok(apply::completion(task, &done, "streamed", warnings))
}

/// A table worth COPY streams of its own, as the snapshot shows it.
struct BigTable {
    /// Quoted `schema.table`.
    name: String,
    /// pg_table_size (TOAST included): what the order and splits go by.
    bytes: i64,
    /// Blocks of its heap, which ctid ranges divide.
    blocks: i64,
    /// What COPY names: quoted columns in attnum order, comma-separated;
    /// empty for a table without any.
    columns: String,
}

/// Ordinary tables worth a COPY stream of their own, biggest first.
/// Extension members (pg_dump treats their config tables specially) and
/// tiny tables are left to pg_dump.
async fn big_tables(c: &tokio_postgres::Client, major: u32) -> Result<Vec<BigTable>> {
    // Generated columns (12+) are computed by the target, never copied.
    let generated = if major >= 12 { "AND a.attgenerated = ''" } else { "" };
    let sql = format!(
        "SELECT format('%I.%I', n.nspname, c.relname), pg_table_size(c.oid),
                pg_relation_size(c.oid) / current_setting('block_size')::bigint,
                coalesce((SELECT string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum)
                            FROM pg_attribute a
                           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped {generated}), '')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND c.relpersistence <> 't'
            AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
            AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                               AND d.objid = c.oid AND d.deptype = 'e')
            AND pg_table_size(c.oid) >= $1
          ORDER BY 2 DESC"
    );
    let rows = c.query(&sql, &[&PARALLEL_TABLE_MIN_BYTES]).await?;
    Ok(rows.iter().map(|r| BigTable { name: r.get(0), bytes: r.get(1), blocks: r.get(2), columns: r.get(3) }).collect())
}

/// One item of the streams' queue: a whole table, or a range of its blocks.
struct Part {
    table: String,
    columns: String,
    /// Blocks `first..end` (`end` None: to the end, rows past the blocks
    /// counted included), as part `index` of `of`; None: the whole table.
    range: Option<Blocks>,
    /// Estimated: what the queue is ordered by.
    bytes: i64,
}

#[derive(Debug, PartialEq)]
struct Blocks {
    first: i64,
    end: Option<i64>,
    index: i64,
    of: i64,
}

impl Part {
    /// What the source's psql runs. A range is read through a query, the
    /// only COPY TO that takes a WHERE; `ONLY`, as `COPY t TO` reads no
    /// inheritance child's rows either.
    fn copy_to(&self) -> String {
        match &self.range {
            None => format!("COPY {}{} TO STDOUT", self.table, copy_text::column_list(&self.columns)),
            Some(b) => {
                format!("COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT", self.columns, self.table, b.condition())
            }
        }
    }

    /// What the target's psql runs.
    fn copy_from(&self) -> String {
        format!("COPY {}{} FROM STDIN", self.table, copy_text::column_list(&self.columns))
    }

    /// For the log: `schema.table`, and which part.
    fn describe(&self) -> String {
        match &self.range {
            None => self.table.clone(),
            Some(b) => format!("{} part {}/{} ({})", self.table, b.index + 1, b.of, b.describe()),
        }
    }
}

impl Blocks {
    fn condition(&self) -> String {
        let from = format!("ctid >= '({},0)'::tid", self.first);
        match self.end {
            Some(end) => format!("{from} AND ctid < '({end},0)'::tid"),
            None => from,
        }
    }

    fn describe(&self) -> String {
        match self.end {
            Some(end) => format!("blocks {} to {}", self.first, end - 1),
            None => format!("blocks {} to the end", self.first),
        }
    }
}

/// The streams' work: every big table, split ones as several parts, the
/// biggest items first so that no stream is left with a big one at the end.
fn work_queue(tables: &[BigTable], split_above: u64, jobs: usize, progress: &Progress) -> VecDeque<Part> {
    let mut parts = Vec::new();
    for t in tables {
        let n = split_count(t.bytes, t.blocks, split_above, jobs);
        if n > 1 {
            progress.say(
                Level::Info,
                format!("splitting {} ({}) into {n} parts by ctid ranges", t.name, human(t.bytes as u64)),
            );
        }
        parts.extend(ranges(t.blocks, n).into_iter().map(|range| Part {
            table: t.name.clone(),
            columns: t.columns.clone(),
            range,
            bytes: t.bytes / n,
        }));
    }
    // Stable: a table's parts stay in block order.
    parts.sort_by_key(|p| std::cmp::Reverse(p.bytes));
    parts.into()
}

/// How many parts a table is read in: one at or under the threshold (0:
/// never split); above it one per threshold's worth, at least one per
/// stream, at most [`MAX_PARTS`] and never more than its blocks.
fn split_count(bytes: i64, blocks: i64, split_above: u64, jobs: usize) -> i64 {
    let threshold = i64::try_from(split_above).unwrap_or(i64::MAX);
    if threshold == 0 || bytes <= threshold {
        return 1;
    }
    let by_size = (bytes - 1) / threshold + 1;
    by_size.max(jobs as i64).min(MAX_PARTS).min(blocks).max(1)
}

/// `n` ranges covering `blocks` blocks, the last one open-ended: rows the
/// snapshot sees in blocks past those counted are read too. One: the whole
/// table, read with `COPY t`.
fn ranges(blocks: i64, n: i64) -> Vec<Option<Blocks>> {
    if n <= 1 {
        return vec![None];
    }
    (0..n)
        .map(|k| {
            let end = (k + 1 < n).then(|| blocks * (k + 1) / n);
            Some(Blocks { first: blocks * k / n, end, index: k, of: n })
        })
        .collect()
}

/// What every COPY stream shares.
struct Stream<'a> {
    tools: Sides<'a>,
    source: &'a Conn,
    target: &'a Conn,
    /// The target's owner, whom COPY FROM runs as.
    owner: &'a str,
    snapshot: &'a str,
    settings: &'a [String],
    progress: &'a Progress,
}

impl Stream<'_> {
    /// One COPY stream: take parts off the queue until it is empty.
    async fn run(&self, queue: &Mutex<VecDeque<Part>>) -> Result<()> {
        loop {
            let Some(part) = queue.lock().expect("queue").pop_front() else { break };
            self.copy(&part).await?;
        }
        Ok(())
    }

    /// `psql COPY TO STDOUT` (in the exported snapshot) -> agent -> `psql
    /// COPY FROM STDIN` (as the owner): libpq moves the rows, the agent
    /// only counts bytes.
    async fn copy(&self, part: &Part) -> Result<()> {
        let what = part.describe();
        self.progress.say(Level::Info, format!("copying table {what}"));
        let mut read: Vec<String> = self.settings.to_vec();
        read.extend([
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY".into(),
            format!("SET TRANSACTION SNAPSHOT {}", quote::literal(self.snapshot)),
            "SET row_security = off".into(),
            part.copy_to(),
            "COMMIT".into(),
        ]);
        let mut write = vec![format!("SET ROLE {}", quote::ident(self.owner)), "SET synchronous_commit = off".into()];
        write.extend(self.settings.iter().cloned());
        write.push(part.copy_from());
        let mut out = psql(self.tools.source, self.source, &read);
        out.stdout_piped();
        let mut inn = psql(self.tools.target, self.target, &write);
        inn.stdin_piped();
        let mut reader = out.spawn(self.progress.tool_output())?;
        let mut writer = inn.spawn(self.progress.tool_output())?;
        let pumped = pump(reader.take_stdout(), writer.take_stdin(), self.progress.counter());
        let (pumped, r, w) = tokio::join!(pumped, reader.wait(), writer.wait());
        let (r, w) = (r?, w?);
        for (end, exit) in [("reading", &r), ("writing", &w)] {
            if !exit.success() {
                bail!("copying {what} failed {end} it: {}", exit.said());
            }
        }
        pumped.with_context(|| format!("copying {what}"))
    }
}

/// `psql -X -q -v ON_ERROR_STOP=1 -c ...`.
fn psql(tools: &Tools, conn: &Conn, commands: &[String]) -> ToolCommand {
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
    cfg: &'a Config,
    tools: Sides<'a>,
    source: &'a Conn,
    snapshot: &'a str,
    progress: &'a Progress,
}

impl Dump<'_> {
    fn command(&self, args: &[&str]) -> ToolCommand {
        let mut c = source::pg_dump(self.cfg, self.tools.source, self.source);
        c.arg(format!("--snapshot={}", self.snapshot)).args(args);
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: i64 = 1 << 20;

    #[test]
    fn tables_split_by_size_at_least_one_part_per_stream_within_their_blocks() {
        let t = (64 * MIB) as u64;
        assert_eq!(split_count(64 * MIB, 8192, t, 2), 1, "at the threshold: whole");
        assert_eq!(split_count(500 * MIB, 64_000, 0, 2), 1, "0: never split");
        assert_eq!(split_count(64 * MIB + 1, 8192, t, 4), 4, "just above: one part per stream");
        assert_eq!(split_count(640 * MIB, 80_000, t, 2), 10, "one per threshold's worth");
        assert_eq!(split_count(1 << 50, 1 << 30, t, 2), MAX_PARTS);
        assert_eq!(split_count(640 * MIB, 3, t, 2), 3, "no more parts than blocks (TOAST-heavy)");
        assert_eq!(split_count(640 * MIB, 0, t, 2), 1);
    }

    #[test]
    fn ranges_cover_every_block_once_and_the_last_is_open_ended() {
        assert_eq!(ranges(100, 1), [None]);
        let r: Vec<Blocks> = ranges(10, 3).into_iter().map(Option::unwrap).collect();
        assert_eq!(
            r,
            [
                Blocks { first: 0, end: Some(3), index: 0, of: 3 },
                Blocks { first: 3, end: Some(6), index: 1, of: 3 },
                Blocks { first: 6, end: None, index: 2, of: 3 },
            ]
        );
        assert_eq!(r[1].condition(), "ctid >= '(3,0)'::tid AND ctid < '(6,0)'::tid");
        assert_eq!(r[2].condition(), "ctid >= '(6,0)'::tid");
    }

    #[test]
    fn every_copy_names_its_columns_and_a_part_reads_only_the_table_itself() {
        let whole = Part { table: "s.\"T\"".into(), columns: "a, \"B c\"".into(), range: None, bytes: 0 };
        assert_eq!(whole.copy_to(), "COPY s.\"T\" (a, \"B c\") TO STDOUT");
        assert_eq!(whole.copy_from(), "COPY s.\"T\" (a, \"B c\") FROM STDIN");
        let part = Part { range: ranges(10, 2).pop().unwrap(), ..whole };
        assert_eq!(part.copy_to(), "COPY (SELECT a, \"B c\" FROM ONLY s.\"T\" WHERE ctid >= '(5,0)'::tid) TO STDOUT");
        assert_eq!(part.copy_from(), "COPY s.\"T\" (a, \"B c\") FROM STDIN");
        assert_eq!(part.describe(), "s.\"T\" part 2/2 (blocks 5 to the end)");
        // No columns: COPY takes no empty list, SELECT takes an empty one.
        let bare = Part { table: "t".into(), columns: String::new(), range: None, bytes: 0 };
        assert_eq!(bare.copy_from(), "COPY t FROM STDIN");
    }
}
