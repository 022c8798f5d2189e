//! The kinds of transfer, one file each: its options (decoded once, at the
//! claim, from its row), its run as a list of named steps (shared steps
//! are in `transfer::steps`), and what it stores. Kinds never call each
//! other. A new kind is a file here and one line in `kinds!` below, which
//! makes the `Job` dispatcher and `KINDS` (what this agent claims) from
//! that list: nothing else matches on a kind's name. (In the extension, it
//! is one file of `sql/kinds/` and one line in `extension/src/lib.rs`.)

use anyhow::{bail, Result};
use futures::future::BoxFuture;

use crate::ctx::Ctx;
use crate::store::layout::Keys;
use crate::transfer::kind::{Kind, Row};
use crate::transfer::outcome::Completion;
use crate::transfer::task::Task;

/// The kinds this agent runs, `module::Type` each: one line per kind.
macro_rules! kinds {
    ($($module:ident :: $kind:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// A claimed transfer's job: one variant per kind.
        #[derive(Debug, Clone)]
        pub enum Job {
            $($kind($module::$kind)),*
        }

        /// The kinds this agent can run, as `_claim` takes them.
        pub const KINDS: &[&str] = &[$(<$module::$kind as Kind>::NAME),*];

        impl Job {
            /// What the row asks for, or why it cannot be run.
            pub fn decode(row: &Row) -> Result<Job> {
                $(
                    if row.kind == <$module::$kind as Kind>::NAME {
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

            /// The storage keys attempt `attempt` of transfer `name` may
            /// write to.
            pub fn stores(&self, ctx: &Ctx, name: &str, attempt: i32) -> Option<Keys> {
                match self {
                    $(Job::$kind(k) => k.stores(ctx, name, attempt)),*
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
    restore_tables::RestoreTables,
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
            stored_under: Some("7".into()),
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

    /// Each file of this folder is a kind this agent runs, under the name
    /// the file has, listed once; and the extension registers the same
    /// kinds (one file of `sql/kinds/` each, which `extension/src/lib.rs`
    /// installs).
    #[test]
    fn every_kind_is_listed_once_and_registered() {
        let files = |dir: &str, ext: &str| -> std::collections::BTreeSet<String> {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
                .filter(|stem| stem != "mod")
                .collect()
        };
        let listed: std::collections::BTreeSet<String> = KINDS.iter().map(|k| k.to_string()).collect();
        assert_eq!(listed.len(), KINDS.len(), "a kind listed twice: {KINDS:?}");
        assert_eq!(files("src/transfer/kinds", "rs"), listed, "a file of transfer/kinds/ not in kinds!, or renamed");
        assert_eq!(files("../sql/kinds", "sql"), listed, "the extension registers other kinds than the agent runs");
        // Each SQL file registers its kind, and the extension installs it.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let lib = std::fs::read_to_string(root.join("extension/src/lib.rs")).unwrap();
        for k in KINDS {
            let sql = std::fs::read_to_string(root.join(format!("sql/kinds/{k}.sql"))).unwrap();
            assert!(sql.contains(&format!("backups._register_kind('{k}',")), "sql/kinds/{k}.sql does not register {k}");
            assert!(
                lib.contains(&format!("extension_sql_file!(\"../../sql/kinds/{k}.sql\"")),
                "extension/src/lib.rs does not install sql/kinds/{k}.sql"
            );
        }
    }
}
