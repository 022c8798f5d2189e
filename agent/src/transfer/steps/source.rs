//! Where data is read from, for the kinds that read a database (capture,
//! copy): the source (a database of the control cluster, or a named source
//! of the agent's configuration), the connection to it, and pg_dump with
//! Heroku's flags, written once.

use anyhow::{anyhow, Result};

use crate::config::Config;
use crate::pg::conn::Conn;
use crate::pg::tools::bins::Tools;
use crate::pg::tools::tool::{Tool, ToolCommand};

/// Where data is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Database(String),
    Named(String),
}

impl Source {
    /// A row's source: the named source it names, else its database.
    pub fn of(named: Option<&str>, database: &str) -> Source {
        match named {
            Some(name) => Source::Named(name.to_string()),
            None => Source::Database(database.to_string()),
        }
    }

    /// The name backups of it are stored under.
    pub fn label(&self) -> &str {
        match self {
            Source::Database(d) | Source::Named(d) => d,
        }
    }

    /// The connection to it: a named source's URL from the configuration,
    /// or the data role's into the control cluster's database.
    pub fn connection(&self, cfg: &Config) -> Result<Conn> {
        match self {
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
}

/// pg_dump of `source` with Heroku's flags (`--no-acl --no-owner
/// --quote-all-identifiers`), uncompressed (the agent compresses), waiting
/// at most `--lock-wait-timeout` for a table's lock.
pub fn pg_dump(cfg: &Config, tools: &Tools, source: &Conn) -> ToolCommand {
    let mut c = ToolCommand::new(tools, Tool::PgDump, source);
    c.args(["--no-acl", "--no-owner", "--quote-all-identifiers", "--compress=0"]);
    if let Some(t) = &cfg.lock_wait_timeout {
        c.arg(format!("--lock-wait-timeout={t}"));
    }
    c
}
