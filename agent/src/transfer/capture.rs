//! Capture: the real pg_dump with Heroku's flags, compressed by the agent
//! and streamed into storage.
//!
//! - default: `pg_dump -Fc -Z0`, its stdout compressed with zstd on all
//!   cores and uploaded as one object: no local copy.
//! - `jobs => N`: `pg_dump -Fd -j N -Z0` into staging, each file compressed
//!   and uploaded while pg_dump writes it (see `parallel`).
//!
//! Either way a manifest describes the stored files, everything is made
//! durable, and only then does the work return its `Completion`; the
//! supervisor records it, and removes this attempt's objects otherwise.

use anyhow::{anyhow, Context, Result};
use sha2::Digest;
use tokio_util::io::SyncIoBridge;

use crate::config::Config;
use crate::pg::bins::{self, Tools};
use crate::pg::conn::{self, Conn};
use crate::pg::tool::{Tool, ToolCommand};
use crate::store::layout::{Format, Keys};
use crate::store::manifest::{FileEntry, Manifest};
use crate::store::upload::{self, Pipe};
use crate::transfer::job::{Capture, Completion, Source};
use crate::transfer::parallel;
use crate::transfer::progress::{human, Facts};
use crate::transfer::report::Level;
use crate::transfer::task::Task;

pub async fn run(task: &Task, capture: &Capture) -> Result<Completion> {
    let cfg = &task.ctx.cfg;
    let storage = &task.ctx.storage;
    let source = connection(cfg, &capture.source)?;
    let (source_size, tools, versions) = inspect(task, &source).await?;
    let keys = storage.keys(capture.source.label(), &task.name, task.attempt).sealed(!cfg.encrypt_to.is_empty());
    let format = capture.format();
    task.progress.started(Facts {
        source_size: Some(source_size),
        format: Some(format.as_str()),
        object_key: Some(storage.relative(&keys.object(format))),
        tool_versions: versions.clone(),
        encrypted_to: cfg.encrypt_to.names(),
    });
    if !cfg.encrypt_to.is_empty() {
        task.progress.say(Level::Info, format!("encrypted with age to {}", cfg.encrypt_to.names().join(", ")));
    }
    if let Some(role) = &capture.role {
        task.progress.say(Level::Info, format!("dumping with the rights of the database's owner, {role}"));
    }
    let dump = || {
        let mut c = pg_dump(cfg, tools, &source);
        if let Some(role) = &capture.role {
            c.arg(format!("--role={role}"));
        }
        c
    };
    let files = match capture.jobs {
        None => vec![dump_custom(task, dump(), &keys).await?],
        Some(jobs) => parallel::dump(task, dump(), jobs, &keys).await?,
    };
    let manifest = Manifest::new(&task.name, capture.source.label(), format, source_size, &versions, files);
    let checksum = store_manifest(task, &keys, &manifest).await?;
    let (processed, stored) = manifest.sizes();
    task.progress.say(
        Level::Info,
        format!("completed: {} processed, {} stored, sha256 {checksum}", human(processed), human(stored)),
    );
    Ok(Completion::Backup { processed, stored, checksum })
}

/// The source to dump: a named source from the configuration, or a
/// database of the control cluster.
pub fn connection(cfg: &Config, source: &Source) -> Result<Conn> {
    match source {
        Source::Named(name) => {
            let s = cfg.sources.get(name).ok_or_else(|| {
                anyhow!(
                    "unknown source {name:?}: define it in the agent configuration as [sources.{name}] url = \"postgres://...\" \
                     (or PGBACKUPS_SOURCE_{}=postgres://...)",
                    name.to_ascii_uppercase()
                )
            })?;
            Conn::new(&s.url, None)
        }
        Source::Database(db) => Conn::new(&cfg.data_url, Some(db)),
    }
}

/// The source's size, the tools that fit its server, and the versions
/// involved, recorded with the backup.
async fn inspect<'t>(task: &'t Task, source: &Conn) -> Result<(i64, &'t Tools, serde_json::Value)> {
    let src = conn::connect(&source.with_password()).await.context("connecting to the source database")?;
    let size: i64 =
        src.query_one("SELECT pg_catalog.pg_database_size(pg_catalog.current_database())", &[]).await?.get(0);
    let server: String = src.query_one("SHOW server_version", &[]).await?.get(0);
    let major = bins::server_major(&src).await?;
    let tools = task.ctx.bins.for_capture(major)?;
    task.progress.say(Level::Info, format!("PostgreSQL {server}: {}", tools.used()));
    let versions =
        serde_json::json!({ "pg_dump": tools.version, "server": server, "agent": env!("CARGO_PKG_VERSION") });
    Ok((size, tools, versions))
}

/// pg_dump with Heroku's flags plus ours, for either format.
pub fn pg_dump(cfg: &Config, tools: &Tools, source: &Conn) -> ToolCommand {
    let mut c = ToolCommand::new(tools, Tool::PgDump, source);
    c.args(["--no-acl", "--no-owner", "--quote-all-identifiers", "--verbose", "--compress=0"]);
    for s in &cfg.exclude_schema {
        c.arg(format!("--exclude-schema={s}"));
    }
    if let Some(t) = &cfg.lock_wait_timeout {
        c.arg(format!("--lock-wait-timeout={t}"));
    }
    c
}

/// `pg_dump -Fc`, its stdout compressed on all cores into one upload. The
/// first of the three to fail stops the others: a storage error ends the
/// upload, the compressor's next send fails, and pg_dump gets a broken pipe.
async fn dump_custom(task: &Task, mut cmd: ToolCommand, keys: &Keys) -> Result<FileEntry> {
    let cfg = &task.ctx.cfg;
    let storage = &task.ctx.storage;
    task.progress.say(
        Level::Info,
        format!("custom format, compressed by the agent with zstd level {} on all cores", cfg.compression_level),
    );
    let key = keys.dump();
    cmd.arg("--format=custom").stdout_piped();
    let mut dump = cmd.spawn(task.progress.tool_output())?;
    let stdout = SyncIoBridge::new(dump.take_stdout());
    let pipe = Pipe::start(&task.tracker, storage.store.clone(), key.clone());
    let (tx, counter, level, seal) =
        (pipe.tx.clone(), task.progress.counter(), cfg.compression_level, cfg.encrypt_to.clone());
    let compressor =
        task.tracker.spawn_blocking(move || upload::compress(stdout, tx, level, upload::all_cores(), &seal, &counter));
    let exit = dump.wait().await?;
    let compressed = compressor.await.context("the compressor panicked")?;
    let upload_died = pipe.is_finished();
    let stored = pipe.finish(exit.success() && compressed.is_ok()).await;
    if upload_died {
        // A storage error: the others only saw their pipes close.
        return Err(stored.err().unwrap_or_else(|| anyhow!("the upload stopped early")));
    }
    exit.check()?;
    let size = compressed?;
    let stored = stored?;
    Ok(FileEntry {
        path: storage.relative(&key),
        name: "backup.dump".into(),
        size,
        stored_size: stored.size,
        sha256: stored.sha256,
    })
}

/// Write the manifest (encrypted like the rest), then make every object of
/// the backup durable. Returns the checksum the backup is recorded with:
/// that of the stored bytes.
async fn store_manifest(task: &Task, keys: &Keys, manifest: &Manifest) -> Result<String> {
    let storage = &task.ctx.storage;
    let (bytes, checksum) = manifest.to_bytes()?;
    let bytes = task.ctx.cfg.encrypt_to.seal_bytes(bytes)?;
    let checksum = match manifest.format {
        Format::Directory => hex::encode(sha2::Sha256::digest(&bytes)),
        Format::Custom => checksum,
    };
    storage.store.put(&keys.manifest(), bytes.into()).await.context("writing the manifest")?;
    let mut written = vec![keys.manifest()];
    for f in &manifest.files {
        written.push(match manifest.format {
            Format::Custom => keys.dump(),
            Format::Directory => keys.dir_file(&f.name)?,
        });
    }
    storage.sync(&written).await.context("making the backup durable")?;
    Ok(checksum)
}
