//! What an archive asks of its target before the rest of it is applied as
//! the target's owner: the extensions it names. Extensions are
//! server-installed code that may need a superuser, so the agent creates
//! them itself, from names it parsed, never from SQL text the archive
//! carries. Everything else is applied as the owner from listings
//! (`pg_restore --use-list`) chosen by entry type, never by name: first the
//! schemas (the extensions go into them), then the rest without the
//! extensions and their comments.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::pg::tools::bins::{self, Tools};
use crate::pg::tools::tool::{Tool, ToolCommand};

/// `CREATE EXTENSION name WITH SCHEMA schema`, as the archive asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub name: String,
    pub schema: String,
}

/// An archive's table of contents (`pg_restore --list`), and its extensions.
#[derive(Debug)]
pub struct Toc {
    lines: Vec<String>,
    pub extensions: Vec<Extension>,
}

/// Read the archive's listing; reading it also proves pg_restore can.
pub async fn read(tools: &Tools, archive: &Path, scratch: &Path) -> Result<Toc> {
    let listing = ToolCommand::offline(tools, Tool::PgRestore)
        .arg("--list")
        .arg(archive)
        .read_all()
        .await
        .context("reading the archive's table of contents")?;
    let lines: Vec<String> = String::from_utf8_lossy(&listing).lines().map(str::to_string).collect();
    let wanted: Vec<&String> = lines.iter().filter(|l| entry(l) == Some("EXTENSION")).collect();
    if wanted.is_empty() {
        return Ok(Toc { lines, extensions: Vec::new() });
    }
    // The statements of those entries alone, as SQL text to parse.
    let only = scratch.join("extensions.list");
    std::fs::write(&only, wanted.iter().map(|l| format!("{l}\n")).collect::<String>())?;
    let sql = ToolCommand::offline(tools, Tool::PgRestore)
        .arg("--use-list")
        .arg(&only)
        .args(["--file", "-"])
        .arg(archive)
        .read_all()
        .await
        .context("reading the archive's extensions")?;
    let _ = std::fs::remove_file(&only);
    let extensions = parse_extensions(&String::from_utf8_lossy(&sql))?;
    if extensions.len() != wanted.len() {
        bail!(
            "the archive has {} extension entries but {} plain CREATE EXTENSION statements: refusing to restore it",
            wanted.len(),
            extensions.len()
        );
    }
    Ok(Toc { lines, extensions })
}

/// Which entries a listing keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Only the schemas: applied before the extensions are created.
    Schemas,
    /// All but the extensions (created by the agent) and their comments (the
    /// extension owner's to set); without the schemas too when they were
    /// applied first.
    Rest { without_schemas: bool },
}

impl Toc {
    /// The major of the pg_dump that wrote the archive, as its listing says.
    pub fn dumped_by(&self) -> Option<u32> {
        bins::dumped_by(&self.lines)
    }

    /// The listing for `pg_restore --use-list` of `part`.
    pub fn write_list(&self, path: &Path, part: Part) -> Result<()> {
        self.write_list_except(path, part, &HashSet::new())
    }

    /// The listing of `part` without the entries `except` (whose data was
    /// loaded apart).
    pub fn write_list_except(&self, path: &Path, part: Part, except: &HashSet<i32>) -> Result<()> {
        let mut out = String::new();
        for l in &self.lines {
            let skip = match (entry(l), part) {
                (None, _) => false,
                (Some(e), Part::Schemas) => !e.starts_with("SCHEMA - "),
                (Some("EXTENSION"), Part::Rest { .. }) => true,
                (Some(e), Part::Rest { without_schemas }) => {
                    e.starts_with("COMMENT - EXTENSION ") || (without_schemas && e.starts_with("SCHEMA - "))
                }
            } || id(l).is_some_and(|i| except.contains(&i));
            if skip {
                out.push(';');
            }
            out.push_str(l);
            out.push('\n');
        }
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
    }

    /// The listing of exactly the entries `ids`, in that order (the order
    /// their data blocks come in).
    pub fn write_ids(&self, path: &Path, ids: &[i32]) -> Result<()> {
        let by_id: HashMap<i32, &String> = self.lines.iter().filter_map(|l| Some((id(l)?, l))).collect();
        let mut out = String::new();
        for i in ids {
            let line = by_id.get(i).with_context(|| format!("entry {i} is not in the archive's listing"))?;
            out.push_str(line);
            out.push('\n');
        }
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
    }
}

/// A listing line's entry id.
fn id(line: &str) -> Option<i32> {
    line.split_once("; ")?.0.parse().ok()
}

/// A listing line's "DESC NAMESPACE TAG OWNER" part (`EXTENSION` alone for
/// an extension), or None for comments.
fn entry(line: &str) -> Option<&str> {
    let (id, rest) = line.split_once("; ")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // "<catalog oid> <object oid> DESC ..."
    let mut parts = rest.splitn(3, ' ');
    let (_, _, desc) = (parts.next()?, parts.next()?, parts.next()?);
    if desc.starts_with("EXTENSION - ") {
        return Some("EXTENSION");
    }
    Some(desc)
}

/// Every `CREATE EXTENSION IF NOT EXISTS x WITH SCHEMA s;` in `sql`.
/// Anything else that starts like one is refused.
fn parse_extensions(sql: &str) -> Result<Vec<Extension>> {
    let mut found = Vec::new();
    for line in sql.lines().filter(|l| l.starts_with("CREATE EXTENSION")) {
        let parsed = (|| {
            let rest = line.strip_prefix("CREATE EXTENSION IF NOT EXISTS ")?;
            let (name, rest) = ident(rest)?;
            let rest = rest.strip_prefix(" WITH SCHEMA ")?;
            let (schema, rest) = ident(rest)?;
            (rest == ";").then_some(Extension { name, schema })
        })();
        match parsed {
            Some(e) => found.push(e),
            None => bail!("unexpected extension statement in the archive: {line:?}"),
        }
    }
    Ok(found)
}

/// An SQL identifier at the start of `s`, bare or double-quoted, and the rest.
fn ident(s: &str) -> Option<(String, &str)> {
    if let Some(q) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = q.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if q[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                } else {
                    return (!name.is_empty()).then(|| (name, &q[i + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        return None;
    }
    let end =
        s.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')).unwrap_or(s.len());
    let name = &s[..end];
    (!name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit() || c == '$'))
        .then(|| (name.to_string(), &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_statements_are_parsed_strictly() {
        let sql = "SET statement_timeout = 0;\n--\n-- Name: hstore; Type: EXTENSION\n--\n\n\
                   CREATE EXTENSION IF NOT EXISTS hstore WITH SCHEMA public;\n\
                   CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\" WITH SCHEMA \"my \"\"ext\"\" s\";\n";
        assert_eq!(
            parse_extensions(sql).unwrap(),
            vec![
                Extension { name: "hstore".into(), schema: "public".into() },
                Extension { name: "uuid-ossp".into(), schema: "my \"ext\" s".into() },
            ]
        );
        for evil in [
            "CREATE EXTENSION IF NOT EXISTS x WITH SCHEMA public; ALTER ROLE me SUPERUSER;",
            "CREATE EXTENSION x WITH SCHEMA public;",
            "CREATE EXTENSION IF NOT EXISTS x WITH SCHEMA \"public;",
        ] {
            assert!(parse_extensions(evil).is_err(), "{evil}");
        }
    }

    #[test]
    fn listings_are_chosen_by_entry_type_never_by_name() {
        let toc = Toc {
            lines: vec![
                ";".into(),
                "; Archive created at 2026-11-22".into(),
                "5; 2615 16390 SCHEMA - ext postgres".into(),
                "2; 3079 16391 EXTENSION - hstore ".into(),
                "3470; 0 0 COMMENT - EXTENSION hstore ".into(),
                "6; 2615 16392 SCHEMA - ext foo postgres".into(),
                "215; 1259 16386 TABLE ext foo important alice".into(),
                "216; 1259 16387 TABLE public EXTENSION - x alice".into(),
            ],
            extensions: vec![Extension { name: "hstore".into(), schema: "ext".into() }],
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let kept = |part| {
            toc.write_list(&p, part).unwrap();
            let text = std::fs::read_to_string(&p).unwrap();
            text.lines().filter(|l| !l.starts_with(';')).map(str::to_string).collect::<Vec<_>>()
        };
        assert_eq!(
            kept(Part::Schemas),
            vec!["5; 2615 16390 SCHEMA - ext postgres", "6; 2615 16392 SCHEMA - ext foo postgres"]
        );
        assert_eq!(
            kept(Part::Rest { without_schemas: true }),
            vec!["215; 1259 16386 TABLE ext foo important alice", "216; 1259 16387 TABLE public EXTENSION - x alice"]
        );
        assert_eq!(kept(Part::Rest { without_schemas: false }).len(), 4);
    }
}
