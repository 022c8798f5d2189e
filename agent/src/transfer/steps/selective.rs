//! Selective capture: the `--exclude-table-data` and `--exclude-schema`
//! arguments a capture asked for, and the check, against the source's
//! catalog just before pg_dump runs, that each pattern matches something:
//! pg_dump ignores an exclude pattern that matches nothing (--strict-names
//! does not apply to them), which would quietly dump what was meant to be
//! left out.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use pgbackups_core::pattern::{self, Kind};
use tokio_postgres::{Client, Config as PgConfig};

use crate::pg::conn::{quote, tls};
use crate::pg::conn::{Conn, APPLICATION_NAME};

/// pg_dump's arguments for the capture's patterns: each pattern one argv
/// element, after `=`, so that it can never be read as another option.
pub fn args(table_data: &[String], schemas: &[String]) -> Vec<String> {
    let data = table_data.iter().map(|p| format!("--exclude-table-data={p}"));
    let schemas = schemas.iter().map(|p| format!("--exclude-schema={p}"));
    data.chain(schemas).collect()
}

/// Tables, views, sequences, materialized views, foreign and partitioned
/// tables whose name matches `$1` (and whose schema matches `$2`, or, for an
/// unqualified pattern, which are visible on the search_path): what pg_dump
/// matches a table pattern against. Every name is qualified: the session
/// keeps the database's own search_path, as pg_dump's does.
const TABLES: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
   WHERE c.relkind OPERATOR(pg_catalog.=) ANY (ARRAY['r', 'S', 'v', 'm', 'f', 'p']::pg_catalog.\"char\"[])
     AND c.relname OPERATOR(pg_catalog.~) ($1::pg_catalog.text COLLATE pg_catalog.\"default\")
     AND CASE WHEN $2::pg_catalog.text IS NULL THEN pg_catalog.pg_table_is_visible(c.oid)
              ELSE n.nspname OPERATOR(pg_catalog.~) ($2::pg_catalog.text COLLATE pg_catalog.\"default\") END)";

/// The tables pg_dump would still dump the rows of although a table
/// pattern matched their parent: partitions and inheritance children (at
/// any depth) of a relation matched by one of the patterns (`$1` names, `$2`
/// schemas, as in `TABLES`), that no pattern matches themselves and that no
/// schema pattern (`$3`) leaves out. pg_dump's --exclude-table-data leaves
/// out the rows of the matched relation only, and a partitioned table has
/// none of its own. Only plain tables are named: they hold the rows (a
/// foreign partition's are not dumped). Qualified throughout, as `TABLES`.
const CHILDREN: &str = "WITH RECURSIVE p(name, schema) AS (
    SELECT * FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[]))),
  matched AS (SELECT c.oid FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace, p
   WHERE c.relkind OPERATOR(pg_catalog.=) ANY (ARRAY['r', 'S', 'v', 'm', 'f', 'p']::pg_catalog.\"char\"[])
     AND c.relname OPERATOR(pg_catalog.~) (p.name COLLATE pg_catalog.\"default\")
     AND CASE WHEN p.schema IS NULL THEN pg_catalog.pg_table_is_visible(c.oid)
              ELSE n.nspname OPERATOR(pg_catalog.~) (p.schema COLLATE pg_catalog.\"default\") END),
  d(oid) AS (SELECT i.inhrelid FROM pg_catalog.pg_inherits i
              WHERE i.inhparent OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT oid FROM matched))
             UNION
             SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN d ON i.inhparent OPERATOR(pg_catalog.=) d.oid)
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
  FROM d JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.oid
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
 WHERE c.relkind OPERATOR(pg_catalog.=) 'r'::pg_catalog.\"char\"
   AND NOT d.oid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT oid FROM matched))
   AND NOT n.nspname OPERATOR(pg_catalog.~) ANY ($3::pg_catalog.text[])
 ORDER BY 1";

const SCHEMAS: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n
   WHERE n.nspname OPERATOR(pg_catalog.~) ($1::pg_catalog.text COLLATE pg_catalog.\"default\"))";

/// Fail, naming them, if any of the capture's patterns matches nothing in
/// `source`, looked up as pg_dump will: same login, same role (`--role`),
/// the database's default search_path for unqualified table names.
pub async fn check(source: &Conn, role: Option<&str>, table_data: &[String], schema_patterns: &[String]) -> Result<()> {
    if table_data.is_empty() && schema_patterns.is_empty() {
        return Ok(());
    }
    let client =
        session_like_pg_dump(source).await.context("connecting to the source to check the exclude patterns")?;
    if let Some(role) = role {
        client.batch_execute(&format!("SET ROLE {}", quote::ident(role))).await?;
    }
    // Patterns are a tenant's regular expressions: none may hold the
    // session (and the capture) for long.
    client.batch_execute("SET statement_timeout = '60s'").await?;
    let mut missing = Vec::new();
    let (mut names, mut schemas, mut left_out) = (Vec::new(), Vec::<Option<String>>::new(), Vec::new());
    for (key, kind, list) in
        [("exclude_table_data", Kind::Table, table_data), ("exclude_schemas", Kind::Schema, schema_patterns)]
    {
        for p in list {
            let r = pattern::regexes(p, kind).map_err(|e| anyhow!("invalid {key} option: {e}"))?;
            let found: bool = match kind {
                Kind::Table => client.query_one(TABLES, &[&r.name, &r.schema]).await?.get(0),
                Kind::Schema => client.query_one(SCHEMAS, &[&r.name]).await?.get(0),
            };
            if !found {
                missing.push(format!("{key} {}", quote::literal(p)));
            }
            match kind {
                Kind::Table => {
                    names.push(r.name);
                    schemas.push(r.schema);
                }
                Kind::Schema => left_out.push(r.name),
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "nothing in the source database matches {}: pg_dump would ignore {} and dump what was meant to be left out. \
             Unqualified table names are looked up on the database's search_path, as pg_dump does; write \
             schema.table to be sure. {}",
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" },
            pattern::SYNTAX
        );
    }
    if !names.is_empty() {
        let children: Vec<String> =
            client.query(CHILDREN, &[&names, &schemas, &left_out]).await?.iter().map(|r| r.get(0)).collect();
        if !children.is_empty() {
            let shown: Vec<&str> = children.iter().take(20).map(String::as_str).collect();
            bail!(
                "exclude_table_data matches tables whose partitions or inheritance children it does not match: \
                 pg_dump would still dump the rows of {}{}. Name them too (a wildcard such as parent_* may cover \
                 them), or write the pattern so that it matches them.",
                shown.join(", "),
                if children.len() > shown.len() {
                    format!(" and {} more", children.len() - shown.len())
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(())
}

/// A session as pg_dump opens it: the same connection string, and none of
/// the agent's pinned settings, so that its search_path is the one pg_dump
/// resolves unqualified table patterns with.
async fn session_like_pg_dump(source: &Conn) -> Result<Client> {
    let url = source.with_password();
    let (settings, rest) = tls::split(&url)?;
    let mut cfg: PgConfig = rest.parse().context("invalid connection string")?;
    if cfg.get_application_name().is_none() {
        cfg.application_name(APPLICATION_NAME);
    }
    let (client, connection) = tokio::time::timeout(Duration::from_secs(15), tls::connect(&cfg, &settings))
        .await
        .map_err(|_| anyhow!("no answer within 15 s"))??;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("connection closed: {e}");
        }
    });
    Ok(client)
}
