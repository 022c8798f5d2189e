//! Agent settings: command-line flags, `PGBACKUPS_*` environment variables
//! and an optional TOML file (flags and environment win over the file).
//! Connection secrets live here, never in the control database's tables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;

/// The storage used when none is configured.
pub const DEFAULT_STORAGE: &str = "file:///var/lib/pgbackups";

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "PGBACKUPS_CONFIG")]
    pub config: Option<PathBuf>,
    /// The control database, where the extension lives (postgres://...).
    #[arg(long, env = "PGBACKUPS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where backups go: file:///path or s3://bucket/prefix.
    #[arg(long, env = "PGBACKUPS_STORAGE")]
    pub storage: Option<String>,
    /// How many transfers this agent runs at once.
    #[arg(long, env = "PGBACKUPS_MAX_CONCURRENT")]
    pub max_concurrent: Option<usize>,
    /// This agent's name in the queue (default: hostname-pid).
    #[arg(long, env = "PGBACKUPS_AGENT_ID")]
    pub agent_id: Option<String>,
    /// Local directory for parallel dumps' files in flight.
    #[arg(long, env = "PGBACKUPS_STAGING_DIR")]
    pub staging_dir: Option<PathBuf>,
    /// Directory holding pg_dump, pg_restore and psql (default: PATH).
    #[arg(long, env = "PGBACKUPS_PG_BIN_DIR")]
    pub pg_bin_dir: Option<PathBuf>,
    /// zstd compression level (1-19).
    #[arg(long, env = "PGBACKUPS_COMPRESSION_LEVEL")]
    pub compression_level: Option<i32>,
    /// Schemas pg_dump leaves out (repeatable).
    #[arg(long = "exclude-schema", env = "PGBACKUPS_EXCLUDE_SCHEMA", value_delimiter = ',')]
    pub exclude_schema: Vec<String>,
    /// Seconds to let running transfers finish on SIGTERM before handing them back.
    #[arg(long, env = "PGBACKUPS_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<u64>,
    /// Seconds between polls of the queue (NOTIFY wakes the agent sooner).
    #[arg(long, env = "PGBACKUPS_POLL_INTERVAL")]
    pub poll_interval: Option<f64>,
    /// How long storage requests are retried before a transfer fails, in seconds.
    #[arg(long, env = "PGBACKUPS_STORAGE_RETRY_TIMEOUT")]
    pub storage_retry_timeout: Option<u64>,
    /// Give up a capture when pg_dump waits longer than this for a table lock (e.g. 30s).
    #[arg(long, env = "PGBACKUPS_LOCK_WAIT_TIMEOUT")]
    pub lock_wait_timeout: Option<String>,
    /// Serve signed download links on this address (e.g. 127.0.0.1:8432).
    #[arg(long, env = "PGBACKUPS_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// The secret links are signed with: the same as backups.link_secret.
    #[arg(long, env = "PGBACKUPS_LINK_SECRET", hide_env_values = true)]
    pub link_secret: Option<String>,
}

/// The TOML file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    storage: Option<String>,
    max_concurrent: Option<usize>,
    agent_id: Option<String>,
    staging_dir: Option<PathBuf>,
    pg_bin_dir: Option<PathBuf>,
    compression_level: Option<i32>,
    #[serde(default)]
    exclude_schema: Vec<String>,
    shutdown_grace: Option<u64>,
    poll_interval: Option<f64>,
    storage_retry_timeout: Option<u64>,
    listen: Option<std::net::SocketAddr>,
    link_secret: Option<String>,
    lock_wait_timeout: Option<String>,
    #[serde(default)]
    sources: BTreeMap<String, SourceConfig>,
    /// Extra object_store options for S3 and friends (endpoint, region, keys).
    #[serde(default)]
    storage_options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Connection URL of the named source (a replica, a fork, another server).
    pub url: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub storage: String,
    pub storage_options: BTreeMap<String, String>,
    pub max_concurrent: usize,
    pub agent_id: String,
    pub staging_dir: PathBuf,
    pub pg_bin_dir: Option<PathBuf>,
    pub compression_level: i32,
    pub exclude_schema: Vec<String>,
    pub shutdown_grace: Duration,
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    pub storage_retry_timeout: Duration,
    pub listen: Option<std::net::SocketAddr>,
    pub link_secret: Option<String>,
    pub lock_wait_timeout: Option<String>,
    pub sources: BTreeMap<String, SourceConfig>,
}

impl Config {
    pub fn load(args: &AgentArgs) -> Result<Self> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let database_url = args.database_url.clone().or(file.database_url).context(
            "no control database: pass --database-url or set PGBACKUPS_DATABASE_URL (postgres://user@host/postgres)",
        )?;
        let compression_level = args.compression_level.or(file.compression_level).unwrap_or(3);
        if !(1..=19).contains(&compression_level) {
            bail!("compression level must be between 1 and 19, not {compression_level}");
        }
        let max_concurrent = args.max_concurrent.or(file.max_concurrent).unwrap_or(2);
        if max_concurrent == 0 {
            bail!("--max-concurrent must be at least 1");
        }
        if args.listen.or(file.listen).is_some() && args.link_secret.is_none() && file.link_secret.is_none() {
            bail!("--listen needs --link-secret (PGBACKUPS_LINK_SECRET): the same secret as backups.link_secret");
        }
        let mut sources = file.sources;
        // PGBACKUPS_SOURCE_<NAME>=url defines a named source too.
        for (k, v) in std::env::vars() {
            if let Some(name) = k.strip_prefix("PGBACKUPS_SOURCE_") {
                sources.insert(name.to_ascii_lowercase(), SourceConfig { url: v });
            }
        }
        Ok(Config {
            database_url,
            storage: args.storage.clone().or(file.storage).unwrap_or_else(|| DEFAULT_STORAGE.into()),
            storage_options: file.storage_options,
            max_concurrent,
            agent_id: args.agent_id.clone().or(file.agent_id).unwrap_or_else(default_agent_id),
            staging_dir: args
                .staging_dir
                .clone()
                .or(file.staging_dir)
                .unwrap_or_else(|| PathBuf::from("/var/tmp/pgbackups")),
            pg_bin_dir: args.pg_bin_dir.clone().or(file.pg_bin_dir),
            compression_level,
            exclude_schema: if args.exclude_schema.is_empty() {
                file.exclude_schema
            } else {
                args.exclude_schema.clone()
            },
            shutdown_grace: Duration::from_secs(args.shutdown_grace.or(file.shutdown_grace).unwrap_or(30)),
            poll_interval: Duration::from_secs_f64(args.poll_interval.or(file.poll_interval).unwrap_or(2.0).max(0.1)),
            heartbeat_interval: Duration::from_secs(1),
            storage_retry_timeout: Duration::from_secs(
                args.storage_retry_timeout.or(file.storage_retry_timeout).unwrap_or(120),
            ),
            listen: args.listen.or(file.listen),
            lock_wait_timeout: args.lock_wait_timeout.clone().or(file.lock_wait_timeout),
            link_secret: args.link_secret.clone().or(file.link_secret).filter(|s| !s.is_empty()),
            sources,
        })
    }

    /// Path of a PostgreSQL client program (pg_dump, pg_restore, psql).
    pub fn pg_tool(&self, name: &str) -> PathBuf {
        match &self.pg_bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn default_agent_id() -> String {
    format!("{}-{}", gethostname::gethostname().to_string_lossy(), std::process::id())
}
