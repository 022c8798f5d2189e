//! Restore tables: some tables of a backup recreated beside the live ones,
//! in a schema of their own, with their rows, defaults, CHECK and NOT NULL
//! constraints and indexes (not their foreign keys, triggers or policies:
//! `pg/formats/relocate.rs`). Everything happens in one transaction of the
//! throwaway login that acts as the database's owner (`pg/cluster/applier.rs`),
//! committed only once every byte loaded was proven: a failure, a cancel or
//! a killed agent leaves no schema and no table behind, and nothing that
//! existed is touched. It reads only what it needs: the head and the
//! chosen tables' frames of a custom-format backup (`store/ranges.rs`),
//! the TOC and the chosen tables' files of a parallel one; a backup taken
//! before positions were recorded is read whole, as it streams.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::SinkExt;
use serde::Deserialize;
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_postgres::Client;

use crate::pg::cluster::applier::Applier;
use crate::pg::cluster::beside::Beside;
use crate::pg::cluster::target;
use crate::pg::conn::quote::ident;
use crate::pg::conn::{self};
use crate::pg::formats::contents::Position;
use crate::pg::formats::custom::{self, Head, BLK_DATA};
use crate::pg::formats::relocate;
use crate::store::backups::{self, Stored};
use crate::store::layout::Format;
use crate::store::ranges::Archive;
use crate::store::verify;
use crate::transfer::kind::{self, Kind, Row};
use crate::transfer::outcome::Completion;
use crate::transfer::progress::{human, Level};
use crate::transfer::steps::{apply, destination};
use crate::transfer::task::Task;

#[derive(Debug, Clone)]
pub struct RestoreTables {
    pub backup: String,
    pub database: String,
    pub options: Options,
}

/// What `backups.restore_tables()` asked for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// pg_dump-style patterns.
    pub tables: Vec<String>,
    pub into_schema: String,
}

impl Kind for RestoreTables {
    const NAME: &'static str = "restore_tables";

    fn decode(row: &Row) -> Result<Self> {
        Ok(RestoreTables {
            backup: row.source.clone().context("a table restore without a backup")?,
            database: row.target(),
            options: kind::options(row)?,
        })
    }

    fn run<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Completion>> {
        Box::pin(run(task, self))
    }
}

async fn run(task: &Task, job: &RestoreTables) -> Result<Completion> {
    // 1. The backup, as the control database recorded it.
    let control = conn::connect(task.ctx.cfg.control()?).await?;
    let b = backups::find(&control, Some(&job.backup)).await?;
    drop(control);

    // 2. The throwaway login that acts as the database's owner.
    let cluster = task.cluster().await?;
    let target = target::find(cluster, &job.database).await?;
    destination::warn_if_privileged(task, &target);
    let applier = Applier::create(cluster, &target, &task.name, task.attempt, &task.teardown).await?;
    let db = conn::connect(&applier.conn()?.with_password()).await.context("connecting as the owner's login")?;

    // An earlier attempt may have committed, and been stopped before it
    // said so: its schema says who made it.
    let into = &job.options.into_schema;
    let mark = format!("Tables of {} restored by {}", b.name, task.name);
    if task.attempt > 1 && Beside::made_by(&db, into, &mark).await? {
        task.progress
            .say(Level::Info, format!("an earlier attempt committed schema {}: nothing to do again", ident(into)));
        return Ok(apply::completion(task, &format!("restored into {} by an earlier attempt", ident(into)), "read", 0));
    }

    // 3. The archive's head, and the tables the patterns match in it.
    let mut source = Source::open(task, &b).await?;
    let head = source.head(task, &b).await?;
    let chosen = choose(&db, &head, &job.options.tables, &b.name).await?;
    let plan = relocate::plan(&head.entries, &chosen, into)?;
    task.progress.say(
        Level::Info,
        format!(
            "restoring {} from {} into schema {} of {}, as {}: {}",
            plural(plan.tables.len(), "table"),
            b.name,
            ident(into),
            ident(&job.database),
            target.owner,
            plan.tables.join(", ")
        ),
    );
    let mut not = "their foreign keys, triggers, rules and policies are not recreated".to_string();
    if !plan.left_out.is_empty() {
        not.push_str(&format!(" (left out: {})", plan.left_out.join(", ")));
    }
    task.progress.say(Level::Info, not);

    // 4. One transaction: the schema, the tables, their data, the rest.
    let encoding = head.encoding.as_deref().unwrap_or("UTF8");
    let mark = format!("{mark} ({}: {})", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"), plan.tables.join(", "));
    let tx = Beside::begin(db, &target.owner, encoding, into, &job.database, &mark).await?;
    for sql in &plan.before {
        tx.run(sql).await?;
    }
    let mut rows = 0u64;
    for load in &plan.data {
        rows += source.load(task, &b, &head, &tx, load).await.with_context(|| format!("loading {}", load.label))?;
    }
    source.finish(&b).await?;
    for sql in &plan.after {
        tx.run(sql).await?;
    }
    let fetched = source.fetched();
    task.progress.say(
        Level::Info,
        format!(
            "read {} ({fetched} bytes) of the {} stored ({}), every byte proven against what the capture recorded",
            human(fetched),
            human(b.stored_size.max(0) as u64),
            source.how()
        ),
    );
    task.commit_point();
    tx.commit().await?;
    // Committed: what follows cannot fail the restore.
    if let Err(e) = applier.close().await {
        task.progress.say(Level::Warning, format!("dropping the login that restored the tables: {e:#}"));
    }
    task.progress.say(Level::Info, format!("{} rows restored into schema {}", rows, ident(into)));
    Ok(apply::completion(
        task,
        &format!("restored {} into {}", plural(plan.tables.len(), "table"), ident(into)),
        "read",
        0,
    ))
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The TABLE entries `patterns` match, with the server's regular
/// expressions, as pg_dump builds them. An unqualified pattern matches in
/// any schema, as pg_restore -t does, but only in one: one that matches
/// tables of several schemas (public.orders, and restored_b001.orders from
/// an earlier table restore) is refused, to be qualified. A pattern that
/// matches nothing is an error.
async fn choose(db: &Client, head: &Head, patterns: &[String], backup: &str) -> Result<HashSet<i32>> {
    let tables: Vec<&custom::Entry> = head.entries.iter().filter(|e| e.desc == "TABLE").collect();
    let schemas: Vec<&str> = tables.iter().map(|e| e.namespace.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|e| e.tag.as_str()).collect();
    let mut chosen = HashSet::new();
    let mut nothing = Vec::new();
    for p in patterns {
        let r = pgbackups_core::pattern::regexes(p, pgbackups_core::pattern::Kind::Table)
            .map_err(|e| anyhow::anyhow!("invalid tables pattern {p}: {e}"))?;
        let rows = db
            .query(
                "SELECT i::int4 - 1 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(s, n, i) \
                  WHERE t.n ~ ($3::text COLLATE pg_catalog.\"default\") \
                    AND ($4::text IS NULL OR t.s ~ ($4::text COLLATE pg_catalog.\"default\"))",
                &[&schemas, &names, &r.name, &r.schema],
            )
            .await
            .with_context(|| format!("matching pattern {p}"))?;
        let found: Vec<&custom::Entry> = rows.iter().map(|row| tables[row.get::<_, i32>(0) as usize]).collect();
        let mut in_schemas: Vec<&str> = found.iter().map(|e| e.namespace.as_str()).collect();
        in_schemas.sort();
        in_schemas.dedup();
        if r.schema.is_none() && in_schemas.len() > 1 {
            let some: Vec<&str> = found.iter().take(5).map(|e| e.label.as_str()).collect();
            bail!(
                "pattern {p} matches tables of {} schemas of {backup} ({}): nothing was restored. Qualify it with \
                 its schema (public.{p}, or *.{p} for all of them)",
                in_schemas.len(),
                some.join(", ")
            );
        }
        if found.is_empty() {
            nothing.push(p.as_str());
        }
        chosen.extend(found.iter().map(|e| e.id));
    }
    if !nothing.is_empty() {
        bail!(
            "{} {} no table of {backup}: nothing was restored. SELECT * FROM backups.contents('{backup}'); lists \
             its tables",
            nothing.join(", "),
            if nothing.len() == 1 { "matches" } else { "match" }
        );
    }
    Ok(chosen)
}

/// Where the data comes from.
enum Source {
    /// A custom-format backup with positions: the head and each table's
    /// frames, read alone.
    Ranges { archive: Archive, positions: HashMap<(String, String), Position> },
    /// A custom-format backup without: the whole stream, tables loaded as
    /// they pass, the rest skipped, the whole checksum checked at the end.
    Stream {
        reader: Option<custom::Reader<Box<dyn AsyncRead + Unpin + Send>>>,
        fetched: std::sync::Arc<std::sync::atomic::AtomicU64>,
        /// The head's SHA-256: recorded, or read from the whole backup proven.
        head_sha256: String,
    },
    /// A parallel backup: its files, each proven by the manifest.
    Files { files: HashMap<String, String>, fetched: std::sync::Arc<std::sync::atomic::AtomicU64> },
}

impl Source {
    async fn open(task: &Task, b: &Stored) -> Result<Source> {
        let storage = &task.ctx.storage;
        let keys = b.keys(storage);
        if b.format == Format::Directory {
            let m = backups::manifest(storage, b).await?;
            let files = m.files.iter().map(|f| (f.name.clone(), f.sha256.clone())).collect();
            return Ok(Source::Files { files, fetched: std::sync::Arc::default() });
        }
        let positions: HashMap<(String, String), Position> = b
            .contents
            .as_ref()
            .and_then(|c| serde_json::from_value::<Vec<RecordedTable>>(c.clone()).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| Some(((t.schema, t.table), t.position?)))
            .collect();
        if !positions.is_empty() && b.head_sha256.is_some() {
            let archive = Archive::open(storage, &keys.dump(), &b.encrypted_to).await?;
            return Ok(Source::Ranges { archive, positions });
        }
        task.progress.say(
            Level::Info,
            format!("{} was captured before table positions were recorded: reading it whole, as it streams", b.name),
        );
        let fetched: std::sync::Arc<std::sync::atomic::AtomicU64> = std::sync::Arc::default();
        let open = || async {
            let object = verify::open(storage, &keys.dump(), &b.checksum, Some(fetched.clone())).await?;
            let plain: Box<dyn AsyncRead + Unpin + Send> =
                Box::new(verify::decompressed(object, &b.encrypted_to).await?);
            anyhow::Ok(custom::Reader::new(plain))
        };
        // Older still, its head's checksum was not recorded either: read it
        // whole once, proven by its checksum, before any of its SQL runs;
        // then the head read again must be the one proven.
        let head_sha256 = match &b.head_sha256 {
            Some(h) => h.clone(),
            None => {
                task.progress
                    .say(Level::Info, format!("{} has no recorded head checksum: verifying it whole first", b.name));
                let mut r = open().await?;
                let head = r
                    .head()
                    .await?
                    .with_context(|| format!("{} is an archive version this agent does not read", b.name))?;
                while let Some((kind, _)) = r.block().await.with_context(|| format!("reading {} to its end", b.name))? {
                    r.skip_block(kind).await?;
                }
                head.sha256()
            }
        };
        Ok(Source::Stream { reader: Some(open().await?), fetched, head_sha256 })
    }

    fn how(&self) -> &'static str {
        match self {
            Source::Ranges { .. } => "its head and the tables' frames",
            Source::Stream { .. } => "all of it: a backup without table positions",
            Source::Files { .. } => "its table of contents and the tables' files",
        }
    }

    fn fetched(&self) -> u64 {
        match self {
            Source::Ranges { archive, .. } => archive.fetched.load(Ordering::Relaxed),
            Source::Stream { fetched, .. } | Source::Files { fetched, .. } => fetched.load(Ordering::Relaxed),
        }
    }

    /// The head, proven by the SHA-256 its capture recorded (when it did).
    async fn head(&mut self, task: &Task, b: &Stored) -> Result<Head> {
        let storage = &task.ctx.storage;
        let head = match self {
            Source::Ranges { archive, .. } => {
                let mut r = custom::Reader::new(archive.read(0, None, 0, None));
                r.head().await?
            }
            Source::Stream { reader, .. } => reader.as_mut().expect("a reader").head().await?,
            Source::Files { files, fetched } => {
                let sha = files.get("toc.dat").context("the manifest lists no toc.dat")?;
                let key = b.keys(storage).dir_file("toc.dat")?;
                let object = verify::open(storage, &key, sha, Some(fetched.clone())).await?;
                let mut toc = Vec::new();
                verify::decompressed(object, &b.encrypted_to).await?.read_to_end(&mut toc).await?;
                custom::Reader::directory(&toc[..]).head().await?
            }
        };
        let head = head.with_context(|| format!("{} is an archive version this agent does not read", b.name))?;
        let proven = match self {
            Source::Stream { head_sha256, .. } => Some(&*head_sha256),
            Source::Ranges { .. } => b.head_sha256.as_ref(),
            Source::Files { .. } => None,
        };
        if let Some(recorded) = proven {
            if &head.sha256() != recorded {
                bail!(
                    "checksum mismatch for {}: the head of its archive has sha256 {}, its capture recorded {recorded}; \
                     the backup is corrupt or was replaced in storage: nothing of it was applied",
                    b.name,
                    head.sha256()
                );
            }
        }
        if !head.uncompressed {
            bail!("{} holds data compressed inside the archive, which a table restore does not read", b.name);
        }
        Ok(head)
    }

    /// One table's data into its COPY; its rows.
    async fn load(&mut self, task: &Task, b: &Stored, head: &Head, tx: &Beside, load: &relocate::Load) -> Result<u64> {
        let entry = head.entries.iter().find(|e| e.id == load.id).context("an entry the plan names")?;
        let sink = tx.copy_in(&load.copy).await?;
        futures::pin_mut!(sink);
        let storage = &task.ctx.storage;
        match self {
            Source::Ranges { archive, positions } => {
                let p = positions
                    .get(&(entry.namespace.clone(), entry.tag.clone()))
                    .with_context(|| format!("{} has no recorded position for {}", b.name, load.label))?;
                let range = archive.read(p.from, Some(p.to), p.at - p.frame_at, Some(p.len));
                let mut r = custom::Reader::blocks_of(range, head, p.at);
                match r.block().await? {
                    Some((BLK_DATA, id)) if id == entry.id => {}
                    _ => bail!(
                        "the stored data of {} is not where its capture recorded it: the backup is corrupt",
                        load.label
                    ),
                }
                let sha = chunks_into(&mut r, sink.as_mut(), task).await?;
                if hex::encode(sha) != p.sha256 {
                    bail!(
                        "checksum mismatch for the data of {} in {}: the backup is corrupt or was replaced in storage",
                        load.label,
                        b.name
                    );
                }
            }
            Source::Stream { reader, .. } => {
                let r = reader.as_mut().expect("a reader");
                loop {
                    let (kind, id) = r
                        .block()
                        .await?
                        .with_context(|| format!("{} ends without the data of {}", b.name, load.label))?;
                    if id == entry.id && kind == BLK_DATA {
                        chunks_into(r, sink.as_mut(), task).await?;
                        break;
                    }
                    r.skip_block(kind).await?;
                }
            }
            Source::Files { files, fetched } => {
                let file = entry.filename.as_deref().with_context(|| format!("no data file for {}", load.label))?;
                let name = file.to_string();
                let sha = files.get(&name).with_context(|| format!("the manifest lists no {name}"))?;
                let key = b.keys(storage).dir_file(&name)?;
                let object = verify::open(storage, &key, sha, Some(fetched.clone())).await?;
                let mut plain = verify::decompressed(object, &b.encrypted_to).await?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = plain.read(&mut buf).await.with_context(|| format!("reading {key}"))?;
                    if n == 0 {
                        break;
                    }
                    task.progress.counter().fetch_add(n as u64, Ordering::Relaxed);
                    sink.as_mut().send(Bytes::copy_from_slice(&buf[..n])).await?;
                }
            }
        }
        sink.finish().await.map_err(|e| tx.worded(e))
    }

    /// After the data: a whole stream is read to its end, where its
    /// checksum is checked.
    async fn finish(&mut self, b: &Stored) -> Result<()> {
        if let Source::Stream { reader, .. } = self {
            let mut r = reader.take().expect("a reader");
            // To the verifying reader's end, where a checksum mismatch is
            // an error.
            while let Some((kind, _)) = r.block().await.with_context(|| format!("reading {} to its end", b.name))? {
                r.skip_block(kind).await?;
            }
        }
        Ok(())
    }
}

/// A table's entry in the control database's contents.
#[derive(Deserialize)]
struct RecordedTable {
    schema: String,
    table: String,
    #[serde(default)]
    position: Option<Position>,
}

/// A data block's chunks into a COPY; the SHA-256 of what went in.
async fn chunks_into<R: AsyncRead + Unpin>(
    r: &mut custom::Reader<R>,
    mut sink: std::pin::Pin<&mut tokio_postgres::CopyInSink<Bytes>>,
    task: &Task,
) -> Result<[u8; 32]> {
    let mut sha = sha2::Sha256::new();
    let mut buf = Vec::with_capacity(custom::SLICE);
    while let Some(mut n) = r.chunk_len().await? {
        while n > 0 {
            buf.clear();
            n -= r.slice(n, &mut buf).await?;
            sha.update(&buf);
            task.progress.counter().fetch_add(buf.len() as u64, Ordering::Relaxed);
            sink.send(Bytes::copy_from_slice(&buf)).await?;
        }
    }
    Ok(sha.finalize().into())
}
