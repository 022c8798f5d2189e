//! A claimed transfer, decoded once into what it asks for (`Job`), and what
//! a finished one reports (`Completion`). Nothing past this file matches on
//! kind or format strings.

use anyhow::{anyhow, bail, Context, Result};
use pgbackups_core::pattern;

use crate::pg::contents::Contents;
use crate::store::layout::Format;

/// A transfer this agent claimed: attempt `attempt` of `name`, and what it
/// asks for, or why this agent cannot tell (the supervisor fails it so).
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub name: String,
    pub attempt: i32,
    /// How long without a heartbeat before the worker requeues it.
    pub lease: std::time::Duration,
    /// Its row's kind and database, as the table has them (for metrics and
    /// webhooks, also when the job cannot be decoded).
    pub kind: String,
    pub database: String,
    pub job: std::result::Result<Job, String>,
}

#[derive(Debug, Clone)]
pub enum Job {
    Capture(Capture),
    Restore(Restore),
    Copy(Copy),
    Verify(Verify),
}

/// Where data is read from: a database of the control cluster, or a named
/// source of the agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Database(String),
    Named(String),
}

impl Source {
    /// The name backups of it are stored under.
    pub fn label(&self) -> &str {
        match self {
            Source::Database(d) | Source::Named(d) => d,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Capture {
    pub source: Source,
    /// `None`: one custom-format stream; `Some(n)`: a directory-format dump with n jobs.
    pub jobs: Option<u32>,
    /// Dump with this role's rights (`pg_dump --role`): the database's
    /// owner, for a capture a backups_user queued, so that the backup holds
    /// no more than its owner may read.
    pub role: Option<String>,
    /// pg_dump patterns (`core::pattern`, checked when decoded): tables
    /// whose data is left out (`--exclude-table-data`), and schemas left
    /// out whole (`--exclude-schema`). See `selective`.
    pub exclude_table_data: Vec<String>,
    pub exclude_schemas: Vec<String>,
}

impl Capture {
    pub fn format(&self) -> Format {
        if self.jobs.is_some() {
            Format::Directory
        } else {
            Format::Custom
        }
    }
}

/// Which backup a restore reads.
#[derive(Debug, Clone)]
pub enum BackupRef {
    /// One of ours, by name.
    Id(String),
    /// Any http(s) URL serving a pg_dump archive.
    Url(url::Url),
}

#[derive(Debug, Clone)]
pub struct Restore {
    pub from: BackupRef,
    pub target: String,
    /// Drop the target first instead of swapping a shadow in.
    pub in_place: bool,
    /// The database an earlier attempt swapped in for the target (or was
    /// about to): if it is the target now, that attempt's swap committed.
    pub swapped: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Copy {
    pub source: Source,
    pub target: String,
    pub in_place: bool,
    /// As `Restore::swapped`.
    pub swapped: Option<u32>,
}

/// Prove a stored backup: restore it into a scratch database and compare.
#[derive(Debug, Clone)]
pub struct Verify {
    /// The backup's name.
    pub backup: String,
}

/// A claimed row of the transfers table, as the claim returns it.
pub struct Row {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub database: String,
    pub source: Option<String>,
    pub target: Option<String>,
    pub options: serde_json::Value,
    pub attempt: i32,
    /// `_record_swap`'s database, from an earlier attempt.
    pub swapped: Option<u32>,
}

impl Row {
    /// The `in_place` option of a restore or copy.
    fn in_place(&self) -> Result<bool> {
        match self.options.get("in_place") {
            None | Some(serde_json::Value::Null) => Ok(false),
            Some(v) => v.as_bool().context("invalid in_place option"),
        }
    }

    /// A capture's `exclude_table_data` or `exclude_schemas` option: a list
    /// of pg_dump patterns, each of which must parse (so that nothing but a
    /// pattern ever reaches pg_dump's argument).
    fn patterns(&self, key: &str, kind: pattern::Kind) -> Result<Vec<String>> {
        let list = match self.options.get(key) {
            None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
            Some(v) => v.as_array().with_context(|| format!("invalid {key} option: not a list"))?,
        };
        list.iter()
            .map(|p| {
                let p = p.as_str().with_context(|| format!("invalid {key} option: {p} is not a string"))?;
                pattern::regexes(p, kind).map_err(|e| anyhow!("invalid {key} option: {e}"))?;
                Ok(p.to_string())
            })
            .collect()
    }
}

impl Job {
    /// What the row asks for, or why it cannot be run.
    pub fn decode(row: &Row) -> Result<Job> {
        Ok(match row.kind.as_str() {
            "capture" => Job::Capture(Capture {
                source: match &row.source {
                    Some(name) => Source::Named(name.clone()),
                    None => Source::Database(row.database.clone()),
                },
                jobs: match row.options.get("jobs") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(j) => Some(
                        j.as_u64().filter(|j| (1..=64).contains(j)).map(|j| j as u32).context("invalid jobs option")?,
                    ),
                },
                role: match row.options.get("role") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(r) => Some(r.as_str().context("invalid role option")?.to_string()),
                },
                exclude_table_data: row.patterns("exclude_table_data", pattern::Kind::Table)?,
                exclude_schemas: row.patterns("exclude_schemas", pattern::Kind::Schema)?,
            }),
            "restore" => {
                let from = row.source.as_deref().context("restore without a backup")?;
                Job::Restore(Restore {
                    from: if ["http://", "https://"]
                        .iter()
                        .any(|p| from.get(..p.len()).is_some_and(|s| s.eq_ignore_ascii_case(p)))
                    {
                        BackupRef::Url(url::Url::parse(from).context("invalid backup URL")?)
                    } else {
                        BackupRef::Id(from.to_string())
                    },
                    target: row.target.clone().unwrap_or_else(|| row.database.clone()),
                    in_place: row.in_place()?,
                    swapped: row.swapped,
                })
            }
            "copy" => {
                let source = row.source.clone().context("copy without a source")?;
                let named = row.options.get("named_source").and_then(|v| v.as_bool()).unwrap_or(false);
                Job::Copy(Copy {
                    source: if named { Source::Named(source) } else { Source::Database(source) },
                    target: row.target.clone().unwrap_or_else(|| row.database.clone()),
                    in_place: row.in_place()?,
                    swapped: row.swapped,
                })
            }
            "verify" => Job::Verify(Verify { backup: row.source.clone().context("verify without a backup")? }),
            other => bail!("this agent cannot run {other} transfers"),
        })
    }
}

/// What a transfer that finished its work reports.
#[derive(Debug, Clone)]
pub enum Completion {
    /// A capture: stored, with its checksum recorded.
    Backup { processed: u64, stored: u64, checksum: String, contents: Option<Contents> },
    /// A restore or a copy: `warnings` errors pg_restore ignored.
    Applied { processed: u64, warnings: i32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, source: Option<&str>, options: serde_json::Value) -> Row {
        Row {
            id: 1,
            name: "x001".into(),
            kind: kind.into(),
            database: "shop".into(),
            source: source.map(str::to_string),
            target: Some("staging".into()),
            options,
            attempt: 1,
            swapped: None,
        }
    }

    #[test]
    fn rows_decode_into_jobs() {
        let Job::Capture(c) = Job::decode(&row("capture", None, serde_json::json!({"jobs": 4}))).unwrap() else {
            panic!()
        };
        assert_eq!((c.format(), c.source, c.jobs), (Format::Directory, Source::Database("shop".into()), Some(4)));
        let Job::Capture(c) = Job::decode(&row("capture", Some("replica"), serde_json::json!({}))).unwrap() else {
            panic!()
        };
        assert_eq!((c.source.label(), c.format()), ("replica", Format::Custom));
        for url in ["https://x.example/b.dump", "HTTP://x.example/b.dump"] {
            let Job::Restore(r) = Job::decode(&row("restore", Some(url), serde_json::json!({}))).unwrap() else {
                panic!()
            };
            assert!(matches!(r.from, BackupRef::Url(_)), "{url}");
        }
        let Job::Copy(c) =
            Job::decode(&row("copy", Some("replica"), serde_json::json!({"named_source": true}))).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.source, Source::Named("replica".into()));
        assert!(Job::decode(&row("verify", None, serde_json::json!({}))).is_err());
        let Job::Verify(v) = Job::decode(&row("verify", Some("b007"), serde_json::json!({}))).unwrap() else {
            panic!()
        };
        assert_eq!(v.backup, "b007");
        assert!(Job::decode(&row("vacuum", None, serde_json::json!({}))).is_err());
        assert!(Job::decode(&row("capture", None, serde_json::json!({"jobs": 0}))).is_err());
        let Job::Capture(c) = Job::decode(&row(
            "capture",
            None,
            serde_json::json!({"exclude_table_data": ["public.\"Log\"", "audit_*"], "exclude_schemas": ["tmp"]}),
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.exclude_table_data, c.exclude_schemas),
            (vec!["public.\"Log\"".into(), "audit_*".into()], vec!["tmp".into()])
        );
        // Nothing that could be read as another pg_dump option gets through.
        for bad in [
            serde_json::json!({"exclude_table_data": ["--format=plain"]}),
            serde_json::json!({"exclude_schemas": ["a.b"]}),
            serde_json::json!({"exclude_schemas": "tmp"}),
            serde_json::json!({"exclude_table_data": [1]}),
            serde_json::json!({"exclude_table_data": ["a\nb"]}),
        ] {
            assert!(Job::decode(&row("capture", None, bad.clone())).is_err(), "{bad}");
        }
    }
}
