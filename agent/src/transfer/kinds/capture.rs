//! Capture: the real pg_dump with Heroku's flags, compressed by the agent
//! and streamed into storage.
//!
//! - default: `pg_dump -Fc -Z0`, its stdout compressed with zstd on all
//!   cores and uploaded as one object: no local copy (`steps::dump`).
//! - `jobs => N`: `pg_dump -Fd -j N -Z0` into staging, each file compressed
//!   and uploaded while pg_dump writes it (`steps::parallel_dump`).
//!
//! Either way a manifest describes the stored files, everything is made
//! durable, and only then does the work return its `Completion`; the
//! supervisor records it, and removes this attempt's objects otherwise.

use anyhow::{bail, Context, Result};
use futures::future::BoxFuture;
use pgbackups_core::pattern;
use serde::Deserialize;

use crate::ctx::Ctx;
use crate::pg::conn;
use crate::store::layout::{Format, Keys, Place};
use crate::store::manifest::{About, ClusterId, Manifest, Receiving};
use crate::transfer::kind::{self, Kind, Row};
use crate::transfer::outcome::Completion;
use crate::transfer::progress::Level;
use crate::transfer::progress::{human, Facts};
use crate::transfer::steps::selective;
use crate::transfer::steps::source::{self, Source};
use crate::transfer::steps::{dump, parallel_dump};
use crate::transfer::task::Task;

/// A capture: what it reads, and how.
#[derive(Debug, Clone)]
pub struct Capture {
    pub source: Source,
    pub options: Options,
    /// The cluster folder it is stored under (`layout::Place`).
    pub stored_under: Option<String>,
}

/// What `backups.capture()` asked for (its row's `options`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// `None`: one custom-format stream; `Some(n)`: a directory-format dump
    /// with n jobs.
    pub jobs: Option<u32>,
    /// Dump with this role's rights (`pg_dump --role`): the database's
    /// owner, for a capture a backups_user queued, so that the backup holds
    /// no more than its owner may read.
    pub role: Option<String>,
    /// pg_dump patterns (`core::pattern`, checked when decoded): tables
    /// whose data is left out (`--exclude-table-data`), and schemas left
    /// out whole (`--exclude-schema`). See `steps::selective`.
    #[serde(default)]
    pub exclude_table_data: Vec<String>,
    #[serde(default)]
    pub exclude_schemas: Vec<String>,
}

impl Capture {
    pub fn format(&self) -> Format {
        if self.options.jobs.is_some() {
            Format::Directory
        } else {
            Format::Custom
        }
    }

    fn keys(&self, ctx: &Ctx, name: &str, attempt: i32) -> Keys {
        let place = Place::new(self.stored_under.as_deref(), self.source.label(), name);
        ctx.storage.keys(&place, attempt).sealed(!ctx.cfg.encrypt_to.is_empty())
    }
}

impl Kind for Capture {
    const NAME: &'static str = "capture";

    fn decode(row: &Row) -> Result<Self> {
        let options: Options = kind::options(row)?;
        if options.jobs.is_some_and(|j| !(1..=64).contains(&j)) {
            bail!("invalid jobs option: not between 1 and 64");
        }
        for (list, kind) in
            [(&options.exclude_table_data, pattern::Kind::Table), (&options.exclude_schemas, pattern::Kind::Schema)]
        {
            for p in list {
                pattern::regexes(p, kind).map_err(|e| anyhow::anyhow!("invalid exclude pattern: {e}"))?;
            }
        }
        Ok(Capture {
            source: Source::of(row.source.as_deref(), &row.database),
            options,
            stored_under: row.stored_under.clone(),
        })
    }

    fn run<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Completion>> {
        Box::pin(run(task, self))
    }

    fn stores(&self, ctx: &Ctx, name: &str, attempt: i32) -> Option<Keys> {
        Some(self.keys(ctx, name, attempt))
    }
}

async fn run(task: &Task, capture: &Capture) -> Result<Completion> {
    let cfg = &task.ctx.cfg;
    let storage = &task.ctx.storage;
    let format = capture.format();

    // 1. The source: its size, its server's tools, the settings that shape
    //    its COPY text.
    let source = capture.source.connection(cfg)?;
    let seen = dump::inspect(task, &source).await?;
    let keys = capture.keys(&task.ctx, &task.name, task.attempt);
    task.progress.started(Facts {
        source_size: Some(seen.size),
        format: Some(format.as_str()),
        object_key: Some(storage.relative(&keys.object(format))),
        tool_versions: seen.versions.clone(),
        encrypted_to: cfg.encrypt_to.names(),
    });
    if !cfg.encrypt_to.is_empty() {
        task.progress.say(Level::Info, format!("encrypted with age to {}", cfg.encrypt_to.names().join(", ")));
    }
    if let Some(role) = &capture.options.role {
        task.progress.say(Level::Info, format!("dumping with the rights of the database's owner, {role}"));
    }

    // 2. What it leaves out matches something.
    let (data, schemas) = (&capture.options.exclude_table_data, &capture.options.exclude_schemas);
    selective::check(&source, capture.options.role.as_deref(), data, schemas).await?;

    // 3. The dump, stored as it is written.
    let mut cmd = source::pg_dump(cfg, seen.tools, &source);
    cmd.arg("--verbose");
    // pg_dump pins DateStyle and float digits, not the time zone: pinned
    // here, so that a timestamptz reads back as the same text when verify
    // tallies a restored copy (same instants, whatever the zone).
    cmd.env("PGTZ", "UTC");
    for s in &cfg.exclude_schema {
        cmd.arg(format!("--exclude-schema={s}"));
    }
    if let Some(role) = &capture.options.role {
        cmd.arg(format!("--role={role}"));
    }
    cmd.args(selective::args(data, schemas));
    let (files, mut contents) = match capture.options.jobs {
        None => dump::custom(task, cmd, &keys).await?,
        Some(jobs) => parallel_dump::dump(task, cmd, jobs, &keys).await?,
    };
    contents.settings = seen.settings;
    task.progress.say(Level::Info, dump::describe(&contents));

    // 4. The manifest, last (the catalog's row, the cluster, what a new
    //    cluster needs, the files); everything durable.
    let about = about(task, seen.size, seen.versions, seen.receiving).await?;
    let manifest = Manifest::new(&task.name, capture.source.label(), format, files, Some(contents.clone()), about);
    let checksum = dump::store_manifest(task, &keys, &manifest).await?;
    let (processed, stored) = manifest.sizes();
    task.progress.say(
        Level::Info,
        format!("completed: {} processed, {} stored, sha256 {checksum}", human(processed), human(stored)),
    );
    Ok(Completion::Backup { processed, stored, checksum, contents: Some(contents) })
}

/// What the manifest says beside the files: the catalog's row, as the
/// control database has it now, and which cluster's catalog that is, so
/// that storage alone describes the backup once this cluster is gone.
async fn about(task: &Task, source_size: i64, tool_versions: serde_json::Value, receiving: Receiving) -> Result<About> {
    let cfg = &task.ctx.cfg;
    let control = conn::connect_with_retry(cfg.control()?, std::time::Duration::from_secs(30))
        .await
        .context("reading the backup's row for its manifest")?;
    let row = control
        .query_one("SELECT backups._manifest_facts($1), backups._system_identifier()", &[&task.id])
        .await
        .context("reading the backup's row for its manifest")?;
    let catalog: Option<serde_json::Value> = row.get(0);
    Ok(About {
        source_size,
        tool_versions,
        catalog: catalog.context("the backup's row is gone")?,
        cluster: ClusterId { system_identifier: row.get(1), name: cfg.cluster_name.clone() },
        encrypted_to: cfg.encrypt_to.names(),
        receiving,
    })
}
