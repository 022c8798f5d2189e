//! Copy: one database into another without going through storage, like
//! `heroku pg:copy`, but in parallel, the way pgcopydb does it:
//!
//! 1. the target is replaced; the source exports a snapshot that every step
//!    below reads, so the copy is consistent;
//! 2. the schema (pg_dump's pre-data section) is piped into pg_restore;
//! 3. the data: the larger tables stream `COPY TO` -> `COPY FROM` over N
//!    connection pairs at once (text format: binary COPY carries type OIDs,
//!    which differ between databases); everything else in the data section
//!    (small tables, sequence values, large objects, extension config
//!    tables) goes through pg_dump | pg_restore beside them;
//! 4. indexes, constraints and triggers (post-data) are built by
//!    `pg_restore -j N`, from a small directory dump in staging.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use crate::agent::Ctx;
use crate::capture::Outcome;
use crate::progress::{self, Progress};
use crate::queue::Reporter;
use crate::supervise::with_heartbeat;
use crate::{db, restore, target};

/// Tables smaller than this go through pg_dump with the rest of the data.
const PARALLEL_TABLE_MIN_BYTES: i64 = 1 << 20;

pub async fn run(ctx: Arc<Ctx>, rep: &Reporter, mut stop: watch::Receiver<bool>) -> Result<Outcome> {
    let t = &rep.transfer;
    let source = t.source.clone().context("copy without a source")?;
    let target_db = t.target.clone().unwrap_or_else(|| t.database.clone());
    // A named source from the configuration, or a database of this cluster.
    let source_url = match ctx.cfg.sources.get(&source) {
        Some(s) => s.url.clone(),
        None => db::with_dbname(&ctx.cfg.database_url, &source)?,
    };
    let target_url = db::with_dbname(&ctx.cfg.database_url, &target_db)?;
    let staging = ctx.cfg.staging_dir.join(format!("{}-{}", t.name, t.attempt));
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut progress = Progress::new();
    let copied = progress.processed.clone();
    let lines = progress.sender();

    let work = async {
        restore::prepare(&staging)?;
        // The snapshot lives as long as this connection's transaction.
        let snap_conn = db::connect(&source_url).await.context("connecting to the source database")?;
        snap_conn.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
        let snapshot: String = snap_conn.query_one("SELECT pg_export_snapshot()", &[]).await?.get(0);
        let tables = big_tables(&snap_conn).await?;
        let _ = lines.send(format!(
            "pgbackups: copying {source} into {target_db:?} from snapshot {snapshot}: {} tables by {jobs} parallel COPY streams, the rest through pg_dump",
            tables.len()
        ));
        target::recreate(&ctx, &target_db).await?;
        let dump = Dump { ctx: &ctx, source_url: &source_url, snapshot: &snapshot, lines: &lines };

        // Schema.
        dump.pipe(&target_db, &["--section=pre-data"], &copied).await.context("copying the schema")?;

        // Data: the big tables in parallel, the rest beside them.
        let exclude: Vec<String> = tables.iter().map(|(name, _)| format!("--exclude-table-data={name}")).collect();
        let mut rest_args = vec!["--section=data".to_string()];
        rest_args.extend(exclude);
        let rest_args: Vec<&str> = rest_args.iter().map(String::as_str).collect();
        // Biggest first.
        let queue = Arc::new(Mutex::new(tables.iter().map(|(n, _)| n.clone()).collect::<VecDeque<_>>()));
        let workers = (0..jobs.min(tables.len()).max(1)).map(|_| {
            copy_tables(&ctx, &source_url, &target_url, &snapshot, queue.clone(), copied.clone(), lines.clone())
        });
        let (rest, copies) =
            tokio::join!(dump.pipe(&target_db, &rest_args, &copied), futures::future::join_all(workers));
        rest.context("copying sequences, large objects and small tables")?;
        for c in copies {
            c?;
        }

        // Indexes, constraints, triggers: pg_restore -j from a directory dump.
        let post = staging.join("post-data");
        dump.to_dir(&post, &["--section=post-data"]).await.context("dumping indexes and constraints")?;
        let child =
            target::pg_restore(&ctx, &target_db, Some(&post), Some(jobs))?.spawn().context("starting pg_restore")?;
        let warnings = target::finish_restore(child, lines.clone()).await?;
        drop(snap_conn);
        Ok(warnings)
    };
    let result = with_heartbeat(rep, &mut progress, &mut stop, ctx.cfg.heartbeat_interval, work).await;
    let _ = std::fs::remove_dir_all(&staging);
    target::conclude(rep, &progress, result?, |note, streamed| {
        format!("copied {source} into {target_db}{note} ({streamed} streamed)")
    })
    .await
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
/// COPY FROM STDIN`: libpq moves the rows, the agent only counts bytes.
async fn copy_tables(
    ctx: &Ctx,
    source_url: &str,
    target_url: &str,
    snapshot: &str,
    queue: Arc<Mutex<VecDeque<String>>>,
    copied: Arc<AtomicU64>,
    lines: mpsc::UnboundedSender<String>,
) -> Result<()> {
    loop {
        let Some(table) = queue.lock().expect("queue").pop_front() else { break };
        let _ = lines.send(format!("pgbackups: copying table {table}"));
        let mut out = psql(
            ctx,
            source_url,
            &[
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                &format!("SET TRANSACTION SNAPSHOT '{}'", snapshot.replace('\'', "''")),
                &format!("COPY {table} TO STDOUT"),
                "COMMIT",
            ],
        )?;
        out.stdout(std::process::Stdio::piped());
        let mut inn = psql(ctx, target_url, &["SET synchronous_commit = off", &format!("COPY {table} FROM STDIN")])?;
        inn.stdin(std::process::Stdio::piped());
        let mut reader = out.spawn().context("starting psql")?;
        let mut writer = inn.spawn().context("starting psql")?;
        let errs = [
            progress::follow(reader.stderr.take().expect("piped"), lines.clone()),
            progress::follow(writer.stderr.take().expect("piped"), lines.clone()),
        ];
        let pumped = pump(reader.stdout.take().expect("piped"), writer.stdin.take().expect("piped"), &copied);
        let (pumped, r, w) = tokio::join!(pumped, reader.wait(), writer.wait());
        for e in errs {
            let _ = e.await;
        }
        let (r, w) = (r?, w?);
        if !r.success() || !w.success() {
            bail!("copying {table} failed (reading: {r}, writing: {w}); see the log");
        }
        pumped.with_context(|| format!("copying {table}"))?;
    }
    Ok(())
}

/// `psql -X -q -v ON_ERROR_STOP=1 -c ... -d conn`, output to the caller.
fn psql(ctx: &Ctx, url: &str, commands: &[&str]) -> Result<Command> {
    let (conn, password) = db::libpq_target(url, None)?;
    let mut c = Command::new(ctx.cfg.pg_tool("psql"));
    c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
    for cmd in commands {
        c.arg("-c").arg(cmd);
    }
    c.arg("-d").arg(conn).env("PGAPPNAME", "pgbackups");
    if let Some(p) = password {
        c.env("PGPASSWORD", p);
    }
    c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    c.kill_on_drop(true);
    Ok(c)
}

/// Move bytes from one tool to another in large chunks, counting them.
async fn pump(
    mut from: tokio::process::ChildStdout,
    mut into: tokio::process::ChildStdin,
    copied: &AtomicU64,
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
    ctx: &'a Ctx,
    source_url: &'a str,
    snapshot: &'a str,
    lines: &'a mpsc::UnboundedSender<String>,
}

impl Dump<'_> {
    fn command(&self, args: &[&str]) -> Result<Command> {
        let (conn, password) = db::libpq_target(self.source_url, None)?;
        let mut c = Command::new(self.ctx.cfg.pg_tool("pg_dump"));
        c.args(["--no-acl", "--no-owner", "--quote-all-identifiers", "--compress=0"])
            .arg(format!("--snapshot={}", self.snapshot))
            .args(args)
            .arg("--dbname")
            .arg(conn)
            .env("PGAPPNAME", "pgbackups")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(p) = password {
            c.env("PGPASSWORD", p);
        }
        Ok(c)
    }

    /// `pg_dump -Fc ARGS | pg_restore` into `target`, counting the bytes.
    async fn pipe(&self, target: &str, args: &[&str], copied: &Arc<AtomicU64>) -> Result<()> {
        let mut cmd = self.command(args)?;
        cmd.arg("--format=custom").stdout(std::process::Stdio::piped());
        let mut dump = cmd.spawn().context("starting pg_dump")?;
        let dump_err = progress::follow(dump.stderr.take().expect("piped"), self.lines.clone());
        let mut restore = target::pg_restore(self.ctx, target, None, None)?.spawn().context("starting pg_restore")?;
        let pumped = pump(dump.stdout.take().expect("piped"), restore.stdin.take().expect("piped"), copied);
        let (pumped, dumped, restored) =
            tokio::join!(pumped, dump.wait(), target::finish_restore(restore, self.lines.clone()));
        let _ = dump_err.await;
        let dumped = dumped?;
        if !dumped.success() {
            bail!("pg_dump failed ({dumped}); see the log");
        }
        pumped.context("piping pg_dump into pg_restore")?;
        let warnings = restored?;
        if warnings > 0 {
            bail!("pg_restore reported {warnings} errors");
        }
        Ok(())
    }

    /// `pg_dump -Fd ARGS -f dir`.
    async fn to_dir(&self, dir: &std::path::Path, args: &[&str]) -> Result<()> {
        let mut cmd = self.command(args)?;
        cmd.arg("--format=directory").arg("--file").arg(dir).stdout(std::process::Stdio::null());
        let mut child = cmd.spawn().context("starting pg_dump")?;
        let errs = progress::follow(child.stderr.take().expect("piped"), self.lines.clone());
        let st = child.wait().await?;
        let _ = errs.await;
        if !st.success() {
            bail!("pg_dump failed ({st}); see the log");
        }
        Ok(())
    }
}
