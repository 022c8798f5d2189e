//! The shell face, with Heroku's `pg:backups` verbs, one file per verb
//! (or per family). With a control database (`--database-url`) the verbs
//! call the SQL functions, as a person in psql would (`control`); with
//! storage alone, `list`, `info`, `download` and `restore` read the
//! manifests (`store::catalog`), for the day the cluster is gone. A
//! transfer that fails makes the command exit non-zero with its error.

pub mod adopt;
pub mod control;
pub mod download;
pub mod output;
pub mod restore;
pub mod stored;

use clap::{Args, Subcommand};

use crate::config::{ConfigFile, Given, StoreConfig, StoreOptions};
use crate::store::catalog::Filter;

/// What every verb takes: where the control database and storage are,
/// and how to print.
#[derive(Debug, Clone, Args)]
pub struct Common {
    #[command(flatten)]
    pub file: ConfigFile,
    #[command(flatten)]
    pub store: StoreOptions,
    /// Print JSON (an array of objects, or one object) instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Common {
    pub fn load(&self, given: Given) -> anyhow::Result<StoreConfig> {
        StoreConfig::load(&self.file, &self.store, given)
    }
}

/// Which backups in storage, when there is no control database.
#[derive(Debug, Clone, Default, Args)]
pub struct Which {
    /// Only backups of this database (storage alone).
    #[arg(long)]
    pub database: Option<String>,
    /// Only backups of this cluster: its name (--cluster-name) or system
    /// identifier (storage alone).
    #[arg(long)]
    pub cluster: Option<String>,
}

impl Which {
    pub fn filter(&self) -> Filter {
        Filter { database: self.database.clone(), cluster: self.cluster.clone() }
    }
}

/// `pgbackups <verb>`.
// Parsed once at start-up: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Queue a backup of a database (default: the control database's) and
    /// print its id; --wait follows it to its end.
    Capture {
        /// The database (default: the one --database-url names).
        database: Option<String>,
        /// Dump with this many jobs (a directory-format backup).
        #[arg(long)]
        jobs: Option<i32>,
        /// Follow it with a progress bar; exit non-zero unless it completes.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Backups, restores and copies: from the control database, or with
    /// storage alone every backup storage holds.
    List {
        /// At most this many rows (with a control database; default 100).
        #[arg(long)]
        limit: Option<i32>,
        /// Rows older than this one: the last id of the previous page.
        #[arg(long)]
        before: Option<String>,
        #[command(flatten)]
        which: Which,
        #[command(flatten)]
        common: Common,
    },
    /// Everything about one transfer (default: the latest backup).
    Info {
        /// b001, a003, r002...; with storage alone, a backup id or `latest`.
        id: Option<String>,
        #[command(flatten)]
        which: Which,
        #[command(flatten)]
        common: Common,
    },
    /// A signed download link for a backup (default: the latest).
    Url {
        id: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Download a backup as a file pg_restore accepts (default: the latest, to latest.dump).
    Download {
        /// The backup (b001, a003...); default the latest completed one.
        id: Option<String>,
        /// Where to write it (default latest.dump, or latest.dump.1 if taken).
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
        #[command(flatten)]
        which: Which,
        #[command(flatten)]
        common: Common,
    },
    /// Replace a database with a backup. With a control database: queue
    /// `backups.restore()`. With storage alone: restore into --to yourself.
    Restore(restore::RestoreArgs),
    /// Restore tables of a backup beside the live ones: into schema
    /// restored_<backup> (or --into-schema) of the backup's database (or
    /// --database), with their rows and indexes; nothing live is touched.
    RestoreTables {
        /// The backup (b001, a003...).
        backup: String,
        /// pg_dump-style patterns: public.orders, 'billing.*', '"Odd Name"'.
        #[arg(required = true)]
        tables: Vec<String>,
        #[arg(long)]
        into_schema: Option<String>,
        #[arg(long)]
        database: Option<String>,
        /// Follow it; exit non-zero unless it completes.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Replace database TARGET with a copy of SOURCE.
    Copy {
        source: String,
        target: String,
        /// The target's name again: it is replaced.
        #[arg(long)]
        confirm: String,
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Cancel a pending or running transfer (default: the latest).
    Cancel {
        id: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Delete a backup (and, soon after, its objects).
    Delete {
        id: String,
        /// The id again.
        #[arg(long)]
        confirm: String,
        #[command(flatten)]
        common: Common,
    },
    /// Schedule daily or weekly backups of a database ("daily 07:00",
    /// "weekly sunday 03:00 Europe/Paris"...).
    Schedule {
        /// When (default "daily 02:00").
        at: Option<String>,
        /// The database (default: the one --database-url names).
        #[arg(long)]
        database: Option<String>,
        /// Run a verification after each scheduled backup.
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        common: Common,
    },
    /// The schedules.
    Schedules {
        #[command(flatten)]
        common: Common,
    },
    /// Stop scheduling backups of a database.
    Unschedule {
        database: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Restore a backup (default: the latest) into a scratch database and
    /// check every table against what the capture read.
    Verify {
        id: Option<String>,
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Bring backups of this cluster found in storage into the catalog
    /// (after a rebuild: --cluster NAME).
    Adopt {
        /// Adopt the backups of this cluster name or system identifier
        /// instead of this cluster's.
        #[arg(long)]
        cluster: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

impl Verb {
    pub async fn run(self, given: Given<'_>) -> anyhow::Result<()> {
        match self {
            Verb::Capture { database, jobs, wait, common } => {
                control::capture(&common.load(given)?, database, jobs, wait, common.json).await
            }
            Verb::List { limit, before, which, common } => {
                let cfg = common.load(given)?;
                match cfg.database_url.is_some() {
                    true => {
                        let sql = format!(
                            "SELECT * FROM backups.list({}, {})",
                            limit.unwrap_or(100),
                            before.as_deref().map(crate::pg::conn::quote::literal).unwrap_or_else(|| "NULL".into())
                        );
                        control::table(&cfg, &sql, common.json).await
                    }
                    false => stored::list(&cfg, &which.filter(), common.json).await,
                }
            }
            Verb::Info { id, which, common } => {
                let cfg = common.load(given)?;
                match cfg.database_url.is_some() {
                    true => control::info(&cfg, id, common.json).await,
                    false => stored::info(&cfg, id.as_deref().unwrap_or("latest"), &which.filter(), common.json).await,
                }
            }
            Verb::Url { id, common } => control::url(&common.load(given)?, id, common.json).await,
            Verb::Download { id, output, which, common } => {
                download::run(common.load(given)?, id, output, which.filter()).await
            }
            Verb::Restore(args) => restore::run(args, given).await,
            Verb::RestoreTables { backup, tables, into_schema, database, wait, common } => {
                let call = control::Call::new("restore_tables")
                    .arg(&backup)
                    .array(&tables)
                    .named("into_schema", into_schema.as_deref())
                    .named("database", database.as_deref());
                control::queue(&common.load(given)?, call, wait, common.json).await
            }
            Verb::Copy { source, target, confirm, wait, common } => {
                let call = control::Call::new("copy").arg(&source).arg(&target).arg(&confirm);
                control::queue(&common.load(given)?, call, wait, common.json).await
            }
            Verb::Cancel { id, common } => {
                control::scalar(&common.load(given)?, control::Call::new("cancel").opt(id.as_deref()), common.json)
                    .await
            }
            Verb::Delete { id, confirm, common } => {
                if !confirm.trim().eq_ignore_ascii_case(id.trim()) {
                    anyhow::bail!("--confirm {confirm} does not match {id}: nothing deleted");
                }
                control::scalar(&common.load(given)?, control::Call::new("delete").arg(&id), common.json).await
            }
            Verb::Schedule { at, database, verify, common } => {
                let mut call = control::Call::new("schedule").named("at", at.as_deref());
                call = call.named("database", database.as_deref());
                if verify {
                    call = call.named("verify", Some("true"));
                }
                control::call(&common.load(given)?, call).await?;
                control::table(&common.load(given)?, "SELECT * FROM backups.schedules()", common.json).await
            }
            Verb::Schedules { common } => {
                control::table(&common.load(given)?, "SELECT * FROM backups.schedules()", common.json).await
            }
            Verb::Unschedule { database, common } => {
                let call = control::Call::new("unschedule").opt(database.as_deref());
                control::scalar(&common.load(given)?, call, common.json).await
            }
            Verb::Verify { id, wait, common } => {
                control::queue(&common.load(given)?, control::Call::new("verify").opt(id.as_deref()), wait, common.json)
                    .await
            }
            Verb::Adopt { cluster, common } => adopt::run(&common.load(given)?, cluster, common.json).await,
        }
    }
}
