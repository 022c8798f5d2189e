//! Copy: stream one database into another without going through storage,
//! like `heroku pg:copy`: pg_dump -Fc piped through the agent (which counts
//! the bytes) into pg_restore, after the target is replaced.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::watch;

use crate::agent::Ctx;
use crate::capture::{human, Outcome};
use crate::progress::{self, Progress};
use crate::queue::Reporter;
use crate::supervise::with_heartbeat;
use crate::{db, target};

pub async fn run(ctx: Arc<Ctx>, rep: &Reporter, mut stop: watch::Receiver<bool>) -> Result<Outcome> {
    let t = &rep.transfer;
    let source = t.source.clone().context("copy without a source")?;
    let target_db = t.target.clone().unwrap_or_else(|| t.database.clone());
    // A named source from the configuration, or a database of this cluster.
    let source_url = match ctx.cfg.sources.get(&source) {
        Some(s) => s.url.clone(),
        None => db::with_dbname(&ctx.cfg.database_url, &source)?,
    };
    let (conn, password) = db::libpq_target(&source_url, None)?;
    let mut progress = Progress::new();
    let copied = progress.processed.clone();
    let lines = progress.sender();

    let work = async {
        // Check the source answers before the target is dropped.
        db::connect(&source_url).await.context("connecting to the source database")?;
        let _ = lines.send(format!("pgbackups: replacing database {target_db:?} with a copy of {source}"));
        target::recreate(&ctx, &target_db).await?;
        let mut dump = Command::new(ctx.cfg.pg_tool("pg_dump"));
        dump.args([
            "--format=custom",
            "--compress=0",
            "--no-acl",
            "--no-owner",
            "--quote-all-identifiers",
            "--verbose",
        ])
        .arg("--dbname")
        .arg(&conn)
        .env("PGAPPNAME", "pgbackups")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
        if let Some(p) = &password {
            dump.env("PGPASSWORD", p);
        }
        let mut dump = dump.spawn().context("starting pg_dump")?;
        let dump_err = progress::follow(dump.stderr.take().expect("piped"), lines.clone());
        let mut restore = target::pg_restore(&ctx, &target_db, None, None)?.spawn().context("starting pg_restore")?;
        let mut from = dump.stdout.take().expect("piped");
        let mut into = restore.stdin.take().expect("piped");
        let pump = async {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = from.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                into.write_all(&buf[..n]).await?;
                copied.fetch_add(n as u64, Ordering::Relaxed);
            }
            into.shutdown().await?;
            drop(into);
            anyhow::Ok(())
        };
        let (pumped, dumped, restored) =
            tokio::join!(pump, dump.wait(), target::finish_restore(restore, lines.clone()));
        let _ = dump_err.await;
        let dumped = dumped?;
        if !dumped.success() {
            bail!("pg_dump failed ({dumped}); see the log");
        }
        pumped.context("piping pg_dump into pg_restore")?;
        restored
    };
    match with_heartbeat(rep, &mut progress, &mut stop, ctx.cfg.heartbeat_interval, work).await? {
        Err(outcome) => Ok(outcome),
        Ok(warnings) => {
            let processed = progress.processed.load(Ordering::Relaxed) as i64;
            rep.completed(processed, 0, "", warnings).await?;
            let note = if warnings > 0 { format!(" with {warnings} warnings") } else { String::new() };
            rep.log("info", &format!("copied {source} into {target_db}{note} ({} streamed)", human(processed as u64)))
                .await;
            Ok(Outcome::Completed)
        }
    }
}
