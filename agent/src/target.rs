//! The receiving end of restores and copies: replace the target database,
//! and run pg_restore into it with Heroku's flags.

use std::process::Stdio;

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::agent::Ctx;
use crate::capture::{human, Outcome};
use crate::db;
use crate::progress::{self, Progress};
use crate::queue::Reporter;

/// Drop and recreate `target` with its owner, encoding and locale, so that
/// it ends up holding exactly what is restored into it. Refuses the control
/// database. Connections to the target are terminated (WITH (FORCE)).
pub async fn recreate(ctx: &Ctx, target: &str) -> Result<()> {
    let c = db::connect(&ctx.cfg.database_url).await?;
    let control: String = c.query_one("SELECT current_database()", &[]).await?.get(0);
    if control == target {
        bail!("refusing to replace the control database {target:?}");
    }
    let row = c
        .query_opt(
            "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype
               FROM pg_database WHERE datname = $1",
            &[&target],
        )
        .await?
        .with_context(|| format!("target database {target:?} does not exist"))?;
    let (owner, encoding, collate, ctype): (String, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(target)))
        .await
        .with_context(|| format!("dropping {target}"))?;
    c.batch_execute(&format!(
        "CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        ident(target),
        ident(&owner),
        literal(&encoding),
        literal(&collate),
        literal(&ctype)
    ))
    .await
    .with_context(|| format!("creating {target}"))?;
    Ok(())
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `pg_restore --clean --if-exists --no-acl --no-owner --verbose [-j N]`
/// into `target`, reading `input` (a path) or stdin.
pub fn pg_restore(ctx: &Ctx, target: &str, input: Option<&std::path::Path>, jobs: Option<usize>) -> Result<Command> {
    let (conn, password) = db::libpq_target(&ctx.cfg.database_url, Some(target))?;
    let mut c = Command::new(ctx.cfg.pg_tool("pg_restore"));
    c.args(["--clean", "--if-exists", "--no-acl", "--no-owner", "--verbose"]);
    if let Some(j) = jobs.filter(|j| *j > 1) {
        c.arg(format!("--jobs={j}"));
    }
    c.arg("--dbname").arg(conn);
    if let Some(p) = input {
        c.arg(p);
    }
    if let Some(p) = password {
        c.env("PGPASSWORD", p);
    }
    // A restore that crashes is run again from the start, so its sessions
    // need not wait for WAL flushes; index builds get more memory.
    c.env("PGOPTIONS", "-c synchronous_commit=off -c maintenance_work_mem=256MB");
    c.env("PGAPPNAME", "pgbackups").stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    c.stdin(if input.is_some() { Stdio::null() } else { Stdio::piped() });
    Ok(c)
}

/// Wait for pg_restore, whose stderr goes to `lines` (and is kept, to read
/// its verdict). Errors it only ignored are warnings, as with Heroku.
pub async fn finish_restore(mut child: Child, lines: mpsc::UnboundedSender<String>) -> Result<i32> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = progress::follow(child.stderr.take().expect("piped stderr"), tx);
    let mut all = Vec::new();
    let collect = async {
        while let Some(l) = rx.recv().await {
            let _ = lines.send(l.clone());
            all.push(l);
        }
    };
    let (status, _) = tokio::join!(child.wait(), collect);
    let _ = reader.await;
    let status = status?;
    let text = all.join("\n");
    if status.success() {
        return Ok(0);
    }
    match progress::ignored_errors(&text) {
        Some(n) => Ok(n),
        None => {
            let tail: Vec<&str> = all.iter().rev().take(5).rev().map(String::as_str).collect();
            bail!("pg_restore failed ({status}): {}", tail.join("\n"))
        }
    }
}

/// Record how a restore or copy ended: `completed` with the warnings
/// pg_restore reported (Heroku's "Finished with N warnings"), or stopped.
/// `done(note, amount)` words the closing log line.
pub async fn conclude(
    rep: &Reporter,
    progress: &Progress,
    ended: Result<i32, Outcome>,
    done: impl FnOnce(&str, &str) -> String,
) -> Result<Outcome> {
    let warnings = match ended {
        Err(outcome) => return Ok(outcome),
        Ok(w) => w,
    };
    let processed = progress.processed.load(std::sync::atomic::Ordering::Relaxed);
    rep.completed(processed as i64, 0, "", warnings).await?;
    let note = if warnings > 0 { format!(" with {warnings} warnings") } else { String::new() };
    rep.log("info", &done(&note, &human(processed))).await;
    Ok(Outcome::Completed)
}
