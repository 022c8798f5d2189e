//! Verify: prove a stored backup restores, and holds what its capture read.
//! Its manifest says, table by table, the rows and digest of the COPY text
//! the capture saw (`pg/contents.rs`); the backup is restored into a scratch
//! database like any restore (checksums, a shadow, a throwaway login),
//! where the archive runs with the rights of a role made for it alone
//! (`pg/scratch.rs`); every table is read back with pg_dump's settings and
//! tallied the same way; each difference is reported; and the scratch
//! database is dropped, whatever happened.

use anyhow::{bail, Context, Result};
use futures::future::BoxFuture;
use futures::TryStreamExt;
use serde::Deserialize;

use crate::pg::cluster::scratch::Scratch;
use crate::pg::conn::quote::ident;
use crate::pg::conn::{self, Conn};
use crate::pg::formats::contents::{Contents, Table, Tally, ALGORITHM, SETTINGS};
use crate::pg::formats::copy_text;
use crate::store::backups;
use crate::transfer::kind::{self, Kind, Row};
use crate::transfer::outcome::Completion;
use crate::transfer::progress::Level;
use crate::transfer::steps::fetch::BackupRef;
use crate::transfer::steps::load;
use crate::transfer::task::Task;

/// Prove a stored backup: restore it into a scratch database and compare.
#[derive(Debug, Clone)]
pub struct Verify {
    /// The backup's name.
    pub backup: String,
}

/// What `backups.verify()` recorded (`admins_only`: whom its log is for,
/// the extension's concern, not the agent's).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Options {
    #[serde(default)]
    admins_only: bool,
}

impl Kind for Verify {
    const NAME: &'static str = "verify";

    fn decode(row: &Row) -> Result<Self> {
        let _: Options = kind::options(row)?;
        Ok(Verify { backup: row.source.clone().context("verify without a backup")? })
    }

    fn run<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Completion>> {
        Box::pin(run(task, self))
    }
}

async fn run(task: &Task, verify: &Verify) -> Result<Completion> {
    let cfg = &task.ctx.cfg;
    let control = conn::connect(cfg.control()?).await?;
    let backup = backups::find(&control, Some(&verify.backup)).await?;
    let manifest = backups::manifest(&task.ctx.storage, &backup).await?;
    drop(control);

    let scratch = Scratch::create(task.cluster().await?, &task.name, task.attempt, &task.teardown).await?;
    task.progress.say(Level::Info, format!("restoring {} into the scratch database {}", backup.name, scratch.name));
    let restored = load::load(task, &BackupRef::Id(backup.name.clone()), &scratch.name, false)
        .await
        .with_context(|| format!("{} does not restore", backup.name))?;
    task.past_commit();
    let (processed, warnings) = match restored {
        Completion::Applied { processed, warnings } => (processed, warnings),
        Completion::Backup { .. } => bail!("a restore reported a backup"),
    };

    let Some(contents) = &manifest.contents else {
        task.progress.say(
            Level::Info,
            format!(
                "{} restored cleanly; it was captured before pg_backups recorded contents, so there is nothing to \
                 compare it with",
                backup.name
            ),
        );
        return Ok(Completion::Applied { processed, warnings });
    };
    if contents.algorithm != ALGORITHM {
        bail!("{} records its contents as {:?}, which this agent does not compute", backup.name, contents.algorithm);
    }
    // A custom-format backup's checksum covers its dump, not its manifest:
    // what the manifest says must also be what the capture recorded.
    let disagreements = backup.contents.as_ref().map(|r| disagreements(contents, r)).unwrap_or_default();
    let differences = compare(task, &scratch, contents).await?;
    drop(scratch);
    let rows: u64 = contents.tables.iter().map(|t| t.rows).sum();
    if differences.is_empty() && disagreements.is_empty() {
        task.progress.say(
            Level::Info,
            format!(
                "verified: {} restores, and its {} tables hold the {rows} rows its capture read, digests equal",
                backup.name,
                contents.tables.len()
            ),
        );
        return Ok(Completion::Applied { processed, warnings });
    }
    for d in differences.iter().chain(&disagreements) {
        task.progress.say(Level::Error, d.clone());
    }
    let mut why = Vec::new();
    if !differences.is_empty() {
        why.push(format!(
            "{} of its {} tables differ from what its capture read ({})",
            differences.len(),
            contents.tables.len(),
            differences.join("; ")
        ));
    }
    if !disagreements.is_empty() {
        why.push(format!(
            "its manifest.json disagrees with what the control database recorded at capture ({})",
            disagreements.join("; ")
        ));
    }
    bail!("{} is not verified: {}", backup.name, why.join("; and "))
}

/// Where the manifest's tables and those the control database recorded
/// differ, one line each.
fn disagreements(manifest: &Contents, recorded: &serde_json::Value) -> Vec<String> {
    let key = |s: &str, t: &str, r: u64, b: u64, d: &str| format!("{s}.{t}: {r} rows, {b} bytes, digest {d}");
    let mut ours: Vec<String> =
        manifest.tables.iter().map(|t| key(&t.schema, &t.table, t.rows, t.bytes, &t.digest)).collect();
    let mut theirs: Vec<String> = recorded
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    key(
                        e["schema"].as_str().unwrap_or_default(),
                        e["table"].as_str().unwrap_or_default(),
                        e["rows"].as_u64().unwrap_or_default(),
                        e["bytes"].as_u64().unwrap_or_default(),
                        e["digest"].as_str().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    ours.sort();
    theirs.sort();
    let mut out: Vec<String> =
        ours.iter().filter(|o| !theirs.contains(o)).map(|o| format!("manifest.json: {o}")).collect();
    out.extend(theirs.iter().filter(|t| !ours.contains(t)).map(|t| format!("recorded at capture: {t}")));
    out
}

/// Every table of `contents` read back from the scratch database and
/// tallied; what differs, one line each.
async fn compare(task: &Task, scratch: &Scratch, contents: &Contents) -> Result<Vec<String>> {
    let cfg = &task.ctx.cfg;
    let c = conn::connect(&Conn::new(&cfg.data_url, Some(&scratch.name))?.with_password()).await?;
    // pg_dump's settings (and the capture's TimeZone, pinned to UTC), so
    // that every value reads back as the same text.
    let mut session = copy_text::session_settings(contents.encoding.as_deref().unwrap_or("UTF8"));
    session.extend(["SET TimeZone = 'UTC'".into(), "SET row_security = off".into()]);
    c.batch_execute(&session.join("; ")).await.context("setting up the scratch database's session")?;
    // What pg_dump leaves to the database's and role's settings, as the
    // capture's session had it (hex, PostgreSQL's default, for bytea when
    // not recorded).
    // Only those: the manifest is read from storage.
    let mut settings: Vec<(String, String)> =
        contents.settings.iter().filter(|(k, _)| SETTINGS.contains(&k.as_str())).cloned().collect();
    if !settings.iter().any(|(k, _)| k == "bytea_output") {
        settings.push(("bytea_output".into(), "hex".into()));
    }
    for (name, value) in &settings {
        c.query("SELECT pg_catalog.set_config($1, $2, false)", &[name, value])
            .await
            .with_context(|| format!("setting {name} to {value:?}, as the capture had it"))?;
    }
    let mut differences = Vec::new();
    for t in &contents.tables {
        let label = format!("{}.{}", t.schema, t.table);
        let Some(columns) = &t.columns else {
            differences.push(format!("{label}: its columns are not recorded, so it cannot be read back"));
            continue;
        };
        match tally(&c, t, columns).await {
            Ok((rows, bytes, digest)) if rows == t.rows && digest == t.digest && bytes == t.bytes => {}
            Ok((rows, bytes, digest)) => differences.push(format!(
                "{label}: expected {} rows ({} bytes, digest {}), found {rows} rows ({bytes} bytes, digest {digest})",
                t.rows, t.bytes, t.digest
            )),
            Err(e) => differences.push(format!("{label}: expected {} rows, could not read it back: {e:#}", t.rows)),
        }
    }
    Ok(differences)
}

/// One table's rows, bytes and digest, as COPY gives them.
async fn tally(c: &tokio_postgres::Client, t: &Table, columns: &[String]) -> Result<(u64, u64, String)> {
    let list = columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
    let stmt = format!("COPY {}.{}{} TO STDOUT", ident(&t.schema), ident(&t.table), copy_text::column_list(&list));
    let stream = c.copy_out(stmt.as_str()).await?;
    futures::pin_mut!(stream);
    let mut tally = Tally::default();
    while let Some(piece) = stream.try_next().await? {
        tally.feed(&piece);
    }
    Ok(tally.finish())
}
