//! A claimed transfer, decoded once into the job its kind makes of it. The
//! kinds are listed once, in `kinds!` below: the `Job` dispatcher and
//! `KINDS` (what this agent claims) are made from that list, and nothing
//! else matches on a kind's name.

use anyhow::{bail, Result};
use futures::future::BoxFuture;

use crate::ctx::Ctx;
use crate::store::layout::Keys;
use crate::transfer::kinds::{Kind, Row};
use crate::transfer::outcome::Completion;
use crate::transfer::task::Task;

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

/// The kinds this agent runs, `module::Type` each: one line per kind.
macro_rules! kinds {
    ($($module:ident :: $kind:ident),* $(,)?) => {
        /// A claimed transfer's job: one variant per kind.
        #[derive(Debug, Clone)]
        pub enum Job {
            $($kind(crate::transfer::kinds::$module::$kind)),*
        }

        /// The kinds this agent can run, as `_claim` takes them.
        pub const KINDS: &[&str] = &[$(<crate::transfer::kinds::$module::$kind as Kind>::NAME),*];

        impl Job {
            /// What the row asks for, or why it cannot be run.
            pub fn decode(row: &Row) -> Result<Job> {
                $(
                    if row.kind == <crate::transfer::kinds::$module::$kind as Kind>::NAME {
                        return Ok(Job::$kind(Kind::decode(row)?));
                    }
                )*
                bail!("this agent cannot run {} transfers", row.kind)
            }

            /// Its work.
            pub fn run<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Completion>> {
                match self {
                    $(Job::$kind(k) => k.run(task)),*
                }
            }

            /// The storage keys its attempt may write to.
            pub fn stores(&self, ctx: &Ctx, claimed: &Claimed) -> Option<Keys> {
                match self {
                    $(Job::$kind(k) => k.stores(ctx, &claimed.name, claimed.attempt)),*
                }
            }
        }
    };
}

kinds! {
    capture::Capture,
    restore::Restore,
    copy::Copy,
    verify::Verify,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::layout::Format;
    use crate::transfer::steps::fetch::BackupRef;
    use crate::transfer::steps::source::Source;

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
        assert_eq!(
            (c.format(), c.source, c.options.jobs),
            (Format::Directory, Source::Database("shop".into()), Some(4))
        );
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
        let Job::Verify(v) =
            Job::decode(&row("verify", Some("b007"), serde_json::json!({"admins_only": true}))).unwrap()
        else {
            panic!()
        };
        assert_eq!(v.backup, "b007");
        assert!(Job::decode(&row("vacuum", None, serde_json::json!({}))).is_err());
        assert!(Job::decode(&row("capture", None, serde_json::json!({"jobs": 0}))).is_err());
        // An option no kind knows is refused, never ignored.
        assert!(Job::decode(&row("restore", Some("b001"), serde_json::json!({"in_plaec": true}))).is_err());
        assert!(Job::decode(&row("restore", Some("b001"), serde_json::json!({"in_place": "yes"}))).is_err());
        let Job::Capture(c) = Job::decode(&row(
            "capture",
            None,
            serde_json::json!({"exclude_table_data": ["public.\"Log\"", "audit_*"], "exclude_schemas": ["tmp"]}),
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.options.exclude_table_data, c.options.exclude_schemas),
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

    #[test]
    fn kinds_are_listed_once() {
        assert_eq!(KINDS, ["capture", "restore", "copy", "verify"]);
    }
}
