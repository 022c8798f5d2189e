//! A capture's steps, whichever its format: learning the source before
//! pg_dump runs, the custom-format dump (pg_dump's stdout compressed on all
//! cores, uploaded as one object and read for its contents as it passes;
//! the directory-format one is `parallel_dump`), and the manifest written
//! last, everything made durable before the capture completes.

use std::io::Read;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use sha2::Digest;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::pg::cluster::{database, roles, size};
use crate::pg::conn::{self, Conn};
use crate::pg::formats::contents::{self, Contents};
use crate::pg::tools::bins::{self, Tools};
use crate::pg::tools::tool::ToolCommand;
use crate::store::layout::{Format, Keys};
use crate::store::manifest::{FileEntry, Manifest, Receiving};
use crate::store::upload::{self, Pipe};
use crate::transfer::progress::Level;
use crate::transfer::task::Task;

/// What a capture learns of its source before pg_dump runs: its size, the tools that fit its server, the versions
/// involved (recorded with the backup), and the settings pg_dump's session
/// will have that shape its COPY text.
pub struct Inspected<'t> {
    pub size: i64,
    pub tools: &'t Tools,
    pub versions: serde_json::Value,
    pub settings: Vec<(String, String)>,
    /// What a new cluster needs to receive the database (the manifest's).
    pub receiving: Receiving,
}

/// The source's size, the tools that fit its server, the versions
/// involved, recorded with the backup, and the settings pg_dump's session
/// will have that shape its COPY text without pg_dump pinning them
/// (`contents::SETTINGS`: this session is the same login into the same
/// database, so it gets the same database and role settings).
pub async fn inspect<'t>(task: &'t Task, source: &Conn) -> Result<Inspected<'t>> {
    let src = conn::connect(&source.with_password()).await.context("connecting to the source database")?;
    let size: i64 =
        src.query_one("SELECT pg_catalog.pg_database_size(pg_catalog.current_database())", &[]).await?.get(0);
    let progress = task.progress.clone();
    size::table_bytes_later(source.with_password(), move |bytes| progress.expect(bytes));
    let server: String = src.query_one("SHOW server_version", &[]).await?.get(0);
    let major = bins::server_major(&src).await?;
    let tools = task.ctx.bins.for_capture(major)?;
    task.progress.say(Level::Info, format!("PostgreSQL {server}: {}", tools.used()));
    let versions =
        serde_json::json!({ "pg_dump": tools.version, "server": server, "agent": env!("CARGO_PKG_VERSION") });
    let mut settings = Vec::new();
    for name in contents::SETTINGS {
        let value: String = src.query_one("SELECT pg_catalog.current_setting($1)", &[&name]).await?.get(0);
        settings.push((name.to_string(), value));
    }
    let receiving = receiving(task, &src, major).await?;
    Ok(Inspected { size, tools, versions, settings, receiving })
}

/// The source database's own properties and the roles its dump names, as
/// a new cluster must create them (`store::manifest::Receiving`).
async fn receiving(task: &Task, src: &tokio_postgres::Client, major: u32) -> Result<Receiving> {
    let name: String = src.query_one("SELECT pg_catalog.current_database()::text", &[]).await?.get(0);
    let database =
        database::read(src, major, &name).await?.with_context(|| format!("database {name:?} is not in pg_database"))?;
    let passwords = task.ctx.cfg.keep_role_passwords;
    let roles = roles::read(src, database.oid, &database.roles(), passwords).await;
    let roles =
        if passwords { roles.context("--keep-role-passwords needs a superuser to read pg_authid")? } else { roles? };
    Ok(Receiving { roles, database })
}

/// What the capture read, for its log.
pub fn describe(c: &Contents) -> String {
    let rows: u64 = c.tables.iter().map(|t| t.rows).sum();
    format!(
        "read the data of {} tables, {rows} rows, to its end: every table's rows counted and digested",
        c.tables.len()
    )
}

/// `pg_dump -Fc`, its stdout compressed on all cores into one upload, and
/// read as it passes for its contents. The first to fail stops the others:
/// a storage error ends the upload, the compressor's next send fails, and
/// pg_dump gets a broken pipe.
pub async fn custom(task: &Task, mut cmd: ToolCommand, keys: &Keys) -> Result<(Vec<FileEntry>, Contents)> {
    let cfg = &task.ctx.cfg;
    let storage = &task.ctx.storage;
    task.progress.say(
        Level::Info,
        format!("custom format, compressed by the agent with zstd level {} on all cores", cfg.compression_level),
    );
    let key = keys.dump();
    cmd.arg("--format=custom").stdout_piped();
    let mut dump = cmd.spawn(task.progress.tool_output())?;
    let (seen, archive) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let archive = futures::stream::unfold(archive, |mut rx| async { rx.recv().await.map(|b| (b, rx)) });
    let reader = task.tracker.spawn(contents::read_custom(StreamReader::new(Box::pin(archive))));
    let stdout = Tee { inner: SyncIoBridge::new(dump.take_stdout()), seen: Some(seen) };
    let pipe = Pipe::start(&task.tracker, storage.store.clone(), key.clone());
    let (tx, counter, level, seal) =
        (pipe.tx.clone(), task.progress.counter(), cfg.compression_level, cfg.encrypt_to.clone());
    let compressor =
        task.tracker.spawn_blocking(move || upload::compress(stdout, tx, level, upload::all_cores(), &seal, &counter));
    let exit = dump.wait().await?;
    let compressed = compressor.await.context("the compressor panicked")?;
    // The compressor is gone, and its end of the channel with it.
    let contents = reader.await.context("the archive reader panicked")?;
    let upload_died = pipe.is_finished();
    let stored = pipe.finish(exit.success() && compressed.is_ok() && contents.is_ok()).await;
    if upload_died {
        // A storage error: the others only saw their pipes close.
        return Err(stored.err().unwrap_or_else(|| anyhow!("the upload stopped early")));
    }
    exit.check()?;
    let compressed = compressed?;
    let size = compressed.size;
    let mut contents = contents.context("the archive pg_dump wrote is not sound")?;
    // Where each table's data is stored: read alone by restore_tables().
    contents.place(&compressed.frames);
    let stored = stored?;
    let file = FileEntry {
        path: storage.relative(&key),
        name: "backup.dump".into(),
        size,
        stored_size: stored.size,
        sha256: stored.sha256,
    };
    Ok((vec![file], contents))
}

/// pg_dump's stdout, a copy of every piece also sent to the archive's
/// reader. Should the reader stop (it found the archive unsound), the
/// copies stop and the capture fails with its error.
struct Tee<R> {
    inner: R,
    seen: Option<mpsc::Sender<std::io::Result<Bytes>>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            if let Some(seen) = &self.seen {
                if seen.blocking_send(Ok(Bytes::copy_from_slice(&buf[..n]))).is_err() {
                    self.seen = None;
                }
            }
        }
        Ok(n)
    }
}

/// Write the manifest (encrypted like the rest), then make every object of
/// the backup durable. Returns the checksum the backup is recorded with:
/// that of the stored bytes.
pub async fn store_manifest(task: &Task, keys: &Keys, manifest: &Manifest) -> Result<String> {
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
