//! `pgbackups restore`. With a control database: `backups.restore()`
//! queued (`--wait` follows it). With storage alone (`--to URL`): the
//! backup found by its manifest, restored by this process with the agent's
//! own steps (`transfer::steps::load`), so with the same guarantees as one
//! queued from SQL: every byte checked, applied as the target's owner, into
//! a shadow swapped in only once everything is in. Into a cluster that
//! lacks the database and its roles, `--create` creates them first, from
//! what the manifest recorded (no passwords, unless the capture kept them:
//! it says which to set). Ctrl-C stops it and leaves the target untouched.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio_util::task::TaskTracker;

use crate::cli::{control, Common, Which};
use crate::config::{Config, Given};
use crate::ctx::Ctx;
use crate::pg::cluster::teardown::Teardown;
use crate::pg::cluster::{applier, roles, target, Cluster};
use crate::pg::conn::{self, Conn};
use crate::pg::tools::bins::Bins;
use crate::staging::StagingArea;
use crate::store::catalog;
use crate::store::storage::Storage;
use crate::telemetry::Telemetry;
use crate::transfer::progress::{self, Journal, Level};
use crate::transfer::steps::fetch::BackupRef;
use crate::transfer::steps::load;
use crate::transfer::task::Task;
use crate::webhook::Hooks;

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The backup: its id (b001, a003...) or `latest` (storage alone), or
    /// an https URL (with a control database).
    pub backup: String,
    /// The database to replace (with a control database).
    pub target: Option<String>,
    /// The target database's name again: it is replaced.
    #[arg(long)]
    pub confirm: String,
    /// Follow the queued restore to its end (with a control database).
    #[arg(long)]
    pub wait: bool,
    /// Storage alone: restore into this database yourself
    /// (postgres://user@host:port/db; the user needs CREATEDB and
    /// CREATEROLE, or superuser).
    #[arg(long)]
    pub to: Option<String>,
    /// Storage alone: create the roles the backup needs and the database,
    /// with its recorded owner, locale, settings and grants, where the
    /// cluster lacks them.
    #[arg(long)]
    pub create: bool,
    /// With --create: give the roles the password verifiers their capture
    /// kept (--keep-role-passwords). Trust the storage first: whoever can
    /// write it chooses them.
    #[arg(long)]
    pub role_passwords: bool,
    #[command(flatten)]
    pub which: Which,
    #[command(flatten)]
    pub common: Common,
}

pub async fn run(args: RestoreArgs, given: Given<'_>) -> Result<()> {
    let cfg = args.common.load(given)?;
    let Some(to) = args.to.clone() else {
        if cfg.database_url.is_none() {
            bail!("with storage alone, say where to restore: --to postgres://user@host/db --confirm db");
        }
        let target =
            args.target.context("name the database to replace: pgbackups restore BACKUP TARGET --confirm TARGET")?;
        let call = control::Call::new("restore").arg(&args.backup).arg(&target).arg(&args.confirm);
        return control::queue(&cfg, call, args.wait, args.common.json).await;
    };
    standalone(&args, &to, given).await
}

/// The restore from storage alone, run here.
async fn standalone(args: &RestoreArgs, to: &str, given: Given<'_>) -> Result<()> {
    let target = conn::dbname(to)?.context("--to names no database: postgres://user@host/db")?;
    if args.confirm != target {
        bail!("--confirm {:?} does not match the target database {target:?}: nothing restored", args.confirm);
    }
    if args.target.as_deref().is_some_and(|t| t != target) {
        bail!("the target database is the one --to names ({target:?})");
    }
    // The agent's settings (tools, staging), reaching the target's cluster
    // over its maintenance database, and no control database.
    let data_url = Conn::new(to, Some("postgres"))?.with_password();
    let mut cfg = Config::standalone(&args.common.file, &args.common.store, given, data_url)?;
    cfg.agent_id = format!("restore-{}", std::process::id());
    let storage = Storage::open(&cfg.store)?;
    let found = catalog::list(&storage).await?;
    // `latest` is the target's own latest backup unless told otherwise.
    let mut filter = args.which.filter();
    if args.backup == "latest" && filter.database.is_none() {
        filter.database = Some(target.clone());
    }
    let found = catalog::pick(&found, &args.backup, &filter)?;
    let stored = found.stored(&storage)?;
    let manifest = found.readable()?;
    // Every object is there before anything is created.
    found.check_objects(&storage).await?;
    eprintln!("restoring {} (database {}, {}) into {target}", found.id(), found.database(), manifest.created_at);

    let scratch = tempfile::Builder::new()
        .prefix("pgbackups-restore-")
        .tempdir_in(&cfg.staging_dir)
        .or_else(|_| tempfile::Builder::new().prefix("pgbackups-restore-").tempdir())?;
    let bins = Bins::discover(&cfg.pg_bin_dir).await?;
    let staging = StagingArea::claim(scratch.path(), &cfg.agent_id);
    let telemetry = Telemetry::new(&cfg.agent_id);
    let (hooks, _) = Hooks::new(&[]);
    let ctx = Arc::new(Ctx { cfg, storage, staging, bins, telemetry, hooks });

    // 1. What the cluster lacks, created (--create).
    let cluster = Cluster::open(&ctx.cfg).await.context("connecting to the cluster --to names")?;
    let exists = cluster
        .client()
        .await?
        .query_opt("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1", &[&target])
        .await?
        .is_some();
    let receiving = manifest.receiving.as_ref();
    let mut created_database = false;
    if args.create {
        let r = receiving.with_context(|| {
            format!("{} was taken before backups recorded their roles and database: create them by hand", found.id())
        })?;
        let done = roles::create_missing(&cluster, &r.roles, args.role_passwords).await?;
        for why in &done.refused {
            eprintln!("warning: {why}");
        }
        let created = done.roles;
        if !created.is_empty() {
            eprintln!("created roles: {}", created.join(", "));
            let bare: Vec<&str> = r
                .roles
                .iter()
                .filter(|x| x.login && (x.password.is_none() || !args.role_passwords) && created.contains(&x.name))
                .map(|x| x.name.as_str())
                .collect();
            if !bare.is_empty() {
                eprintln!(
                    "these can log in but have no password yet: set one with ALTER ROLE ... PASSWORD: {}",
                    bare.join(", ")
                );
            }
        }
        if !exists {
            for w in target::receive(&cluster, &r.database, &target, &created).await? {
                eprintln!("warning: {w}");
            }
            created_database = true;
            eprintln!("created database {target} (owner {})", r.database.owner);
        }
    } else if !exists {
        bail!("database {target:?} does not exist there: pass --create to create it (and the roles it needs)");
    }

    // 2. The restore, as an agent runs it, printing its log.
    let (progress, journal) = progress::channel();
    let tracker = TaskTracker::new();
    let task = Task {
        ctx: ctx.clone(),
        id: 0,
        // Its shadow and login are named after it: unique to this run.
        name: format!("shell{}", hex::encode(applier::random_bytes::<8>()?)),
        attempt: 1,
        progress,
        tracker: tracker.clone(),
        teardown: Teardown::new(&tracker),
        committing: Arc::new(AtomicBool::new(false)),
        cluster: cluster.into(),
    };
    let committing = task.committing.clone();
    let from = BackupRef::Found(Box::new(stored));
    let target_name = target.clone();
    let mut work = tokio::spawn(async move { load::load(&task, &from, &target_name, false).await });
    let printer = tokio::spawn(print(journal));
    let result = loop {
        tokio::select! {
            done = &mut work => break done.context("the restore panicked")?,
            _ = tokio::signal::ctrl_c() => {
                if committing.load(Ordering::SeqCst) {
                    eprintln!("swapping in: letting it finish");
                    continue;
                }
                work.abort();
                let _ = (&mut work).await;
                break Err(anyhow::anyhow!("interrupted: {target} was not replaced"));
            }
        }
    };
    // What it leaves to drop (its shadow, its login), dropped before exit.
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(120), tracker.wait()).await.is_err() {
        eprintln!("warning: cleaning up took too long; a later restore into {target} drops what is left");
    }
    printer.abort();
    let _ = printer.await;
    if result.is_err() && created_database {
        // Still empty: what --create made for it goes, but the roles.
        match target::drop_received(&Cluster::open(&ctx.cfg).await?, &target).await {
            Ok(()) => eprintln!("dropped database {target}, which --create made for this restore (its roles stay)"),
            Err(e) => eprintln!("warning: could not drop {target}, which --create made: {e:#}"),
        }
    }
    let done = result?;
    let warnings = match done {
        crate::transfer::outcome::Completion::Applied { warnings, .. } => warnings,
        _ => 0,
    };
    eprintln!("{} restored into {target}{}", found.id(), if warnings > 0 { " with warnings (above)" } else { "" });
    Ok(())
}

/// The restore's log lines, to standard error, as they come: the agent's
/// steps, and what the tools warn of (not each item pg_restore makes).
async fn print(mut journal: Journal) {
    loop {
        for (level, line) in journal.drain() {
            let tool = line.starts_with("pg_restore: ") || line.starts_with("psql:");
            match level {
                Level::Debug => {}
                Level::Info if tool => {}
                Level::Info => eprintln!("{line}"),
                other => eprintln!("{}: {line}", other.as_str()),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
