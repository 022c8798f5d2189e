//! What a database is besides its contents, and what a restore or copy
//! must give its replacement so that only the contents change: owner,
//! encoding, locale (and its provider), tablespace, the settings of
//! `ALTER DATABASE ... SET` and `ALTER ROLE ... IN DATABASE ... SET`, the
//! grants (`REVOKE CONNECT ...`), the connection limit and the comment.
//! A pg_dump archive holds none of these (pg_dump writes them only with
//! `--create`), and dropping the database loses them all.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::pg::conn::quote::{ident, literal};

/// A database's own properties, read from the catalogs (and kept in a
/// backup's manifest, for a restore into a cluster that lacks it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Properties {
    pub oid: u32,
    pub owner: String,
    encoding: String,
    collate: String,
    ctype: String,
    /// `c` (libc), `i` (ICU) or `b` (builtin); None before PostgreSQL 15.
    provider: Option<String>,
    /// The ICU or builtin locale.
    locale: Option<String>,
    /// ICU tailoring rules (PostgreSQL 16 and later).
    icu_rules: Option<String>,
    pub tablespace: String,
    connection_limit: i32,
    /// `name=value` entries of `ALTER DATABASE ... SET`.
    settings: Vec<String>,
    /// `ALTER ROLE role IN DATABASE ... SET` entries, per role.
    role_settings: Vec<(String, Vec<String>)>,
    /// None: the default privileges (PUBLIC may connect and make
    /// temporary tables). Otherwise every grant, PUBLIC's with no grantee.
    grants: Option<Vec<Grant>>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Grant {
    grantee: Option<String>,
    privilege: String,
    grantable: bool,
}

/// The properties of database `name`, or None if it does not exist.
pub async fn read(c: &tokio_postgres::Client, major: u32, name: &str) -> Result<Option<Properties>> {
    // The locale provider arrived in 15, ICU rules in 16, and 17 renamed
    // the ICU locale's column when it added the builtin provider.
    let (provider, locale, rules) = match major {
        ..=14 => ("NULL::text", "NULL::text", "NULL::text"),
        15 => ("d.datlocprovider::text", "d.daticulocale", "NULL::text"),
        16 => ("d.datlocprovider::text", "d.daticulocale", "d.daticurules"),
        _ => ("d.datlocprovider::text", "d.datlocale", "d.daticurules"),
    };
    let Some(row) = c
        .query_opt(
            &format!(
                "SELECT d.oid, pg_catalog.pg_get_userbyid(d.datdba), pg_catalog.pg_encoding_to_char(d.encoding),
                        d.datcollate::text, d.datctype::text, {provider}, {locale}::text, {rules}::text,
                        t.spcname::text, d.datconnlimit, d.datacl IS NULL,
                        pg_catalog.shobj_description(d.oid, 'pg_database')
                   FROM pg_catalog.pg_database d JOIN pg_catalog.pg_tablespace t ON t.oid = d.dattablespace
                  WHERE d.datname = $1"
            ),
            &[&name],
        )
        .await
        .with_context(|| format!("reading the properties of database {name:?}"))?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let settings = c
        .query(
            "SELECT coalesce(r.rolname::text, ''), s.setconfig FROM pg_catalog.pg_db_role_setting s
               LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
              WHERE s.setdatabase = $1 ORDER BY 1",
            &[&oid],
        )
        .await?;
    let mut database_settings = Vec::new();
    let mut role_settings = Vec::new();
    for s in settings {
        let (role, config): (String, Vec<String>) = (s.get(0), s.get(1));
        if role.is_empty() {
            database_settings = config;
        } else {
            role_settings.push((role, config));
        }
    }
    let default_grants: bool = row.get(10);
    let grants = if default_grants {
        None
    } else {
        Some(
            c.query(
                "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
                        a.privilege_type, a.is_grantable
                   FROM pg_catalog.pg_database d, pg_catalog.aclexplode(d.datacl) a
                  WHERE d.oid = $1 ORDER BY 1, 2",
                &[&oid],
            )
            .await?
            .iter()
            .map(|g| Grant { grantee: g.get(0), privilege: g.get(1), grantable: g.get(2) })
            .collect(),
        )
    };
    Ok(Some(Properties {
        oid,
        owner: row.get(1),
        encoding: row.get(2),
        collate: row.get(3),
        ctype: row.get(4),
        provider: row.get(5),
        locale: row.get(6),
        icu_rules: row.get(7),
        tablespace: row.get(8),
        connection_limit: row.get(9),
        settings: database_settings,
        role_settings,
        grants,
        comment: row.get(11),
    }))
}

impl Properties {
    /// The roles these properties name (owner, grantees, per-role
    /// settings): a cluster receiving the database needs them.
    pub fn roles(&self) -> Vec<String> {
        let mut out = vec![self.owner.clone()];
        out.extend(self.grants.iter().flatten().filter_map(|g| g.grantee.clone()));
        out.extend(self.role_settings.iter().map(|(r, _)| r.clone()));
        out.sort();
        out.dedup();
        out
    }

    /// Properties read back from a manifest (whatever storage holds) are
    /// only statements' parts: a grant's privilege is one of a database's,
    /// never text to run.
    pub fn check(&self) -> Result<()> {
        for g in self.grants.iter().flatten() {
            if !["CONNECT", "CREATE", "TEMPORARY", "TEMP"].contains(&g.privilege.as_str()) {
                anyhow::bail!("{:?} is not a privilege on a database", g.privilege);
            }
        }
        Ok(())
    }

    /// Forget the per-role settings of roles not in `roles` (those a
    /// restore did not create: their settings are the cluster's own).
    pub fn keep_role_settings_of(&mut self, roles: &[String]) -> Vec<String> {
        let (kept, dropped): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.role_settings).into_iter().partition(|(r, _)| roles.contains(r));
        self.role_settings = kept;
        dropped.into_iter().map(|(r, _)| r).collect()
    }

    /// Forget the database settings named in `names`; those forgotten.
    pub fn drop_settings(&mut self, names: &[String]) -> Vec<String> {
        let (dropped, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.settings).into_iter().partition(|s| {
            let name = s.split_once('=').map_or(s.as_str(), |(n, _)| n);
            names.iter().any(|n| n.eq_ignore_ascii_case(name))
        });
        self.settings = kept;
        dropped
    }

    /// A plain database owned by `owner`, for tests.
    #[cfg(test)]
    pub fn example(owner: &str) -> Properties {
        Properties {
            oid: 16384,
            owner: owner.into(),
            encoding: "UTF8".into(),
            collate: "C".into(),
            ctype: "C".into(),
            provider: Some("c".into()),
            locale: None,
            icu_rules: None,
            tablespace: "pg_default".into(),
            connection_limit: -1,
            settings: vec!["work_mem=8MB".into()],
            role_settings: vec![],
            grants: None,
            comment: None,
        }
    }

    /// `CREATE DATABASE name` with this one's owner, encoding, locale and
    /// tablespace, empty (from template0).
    pub fn create_statement(&self, name: &str) -> String {
        let mut sql = format!(
            "CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            ident(name),
            ident(&self.owner),
            literal(&self.encoding),
            literal(&self.collate),
            literal(&self.ctype)
        );
        match (self.provider.as_deref(), &self.locale) {
            (Some("i"), Some(l)) => sql.push_str(&format!(" LOCALE_PROVIDER icu ICU_LOCALE {}", literal(l))),
            (Some("b"), Some(l)) => sql.push_str(&format!(" LOCALE_PROVIDER builtin BUILTIN_LOCALE {}", literal(l))),
            (Some(_), _) => sql.push_str(" LOCALE_PROVIDER libc"),
            (None, _) => {}
        }
        if let Some(r) = &self.icu_rules {
            sql.push_str(&format!(" ICU_RULES {}", literal(r)));
        }
        if self.tablespace != "pg_default" {
            sql.push_str(&format!(" TABLESPACE {}", ident(&self.tablespace)));
        }
        sql
    }

    /// The statements that give database `name` this one's grants and
    /// connection limit. Run once the archive is applied: a revoked CONNECT
    /// would stop the restore itself. Until then the database is closed to
    /// PUBLIC (`pg/shadow.rs`), so the default grants are given back too.
    pub fn access_statements(&self, name: &str) -> Vec<String> {
        let db = ident(name);
        let mut out = Vec::new();
        match &self.grants {
            None => out.push(format!("GRANT CONNECT, TEMPORARY ON DATABASE {db} TO PUBLIC")),
            Some(grants) => {
                out.push(format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC, {}", ident(&self.owner)));
                for g in grants {
                    out.push(format!(
                        "GRANT {} ON DATABASE {db} TO {}{}",
                        g.privilege,
                        g.grantee.as_deref().map(ident).unwrap_or_else(|| "PUBLIC".into()),
                        if g.grantable { " WITH GRANT OPTION" } else { "" }
                    ));
                }
            }
        }
        // (-2 marks a database left invalid by an interrupted drop.)
        if self.connection_limit >= 0 {
            out.push(format!("ALTER DATABASE {db} CONNECTION LIMIT {}", self.connection_limit));
        }
        out
    }

    /// `ALTER DATABASE name SET ...` and `ALTER ROLE r IN DATABASE name SET
    /// ...` for every setting: applied last, since a setting such as
    /// `default_transaction_read_only` would stop the restore itself.
    pub fn setting_statements(&self, name: &str) -> Vec<String> {
        let db = ident(name);
        let mut out: Vec<String> =
            self.settings.iter().map(|s| set_statement(&format!("ALTER DATABASE {db}"), s)).collect();
        for (role, config) in &self.role_settings {
            let prefix = format!("ALTER ROLE {} IN DATABASE {db}", ident(role));
            out.extend(config.iter().map(|s| set_statement(&prefix, s)));
        }
        out
    }

    /// `COMMENT ON DATABASE name IS ...` (or NULL).
    pub fn comment_statement(&self, name: &str) -> String {
        format!(
            "COMMENT ON DATABASE {} IS {}",
            ident(name),
            self.comment.as_deref().map(literal).unwrap_or_else(|| "NULL".into())
        )
    }
}

/// Settings whose value is a list of names, each quoted on its own (as
/// pg_dump's `variable_is_guc_list_quote`): quoting the whole list as one
/// literal would make it a single name.
const LIST_SETTINGS: &[&str] = &[
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// `PREFIX SET name TO value` for a stored `name=value`, as pg_dump's
/// `makeAlterConfigCommand` writes it.
pub fn set_statement(prefix: &str, entry: &str) -> String {
    let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
    let value = if LIST_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
        let items = split_list(value);
        if items.is_empty() {
            "''".to_string()
        } else {
            items.iter().map(|i| literal(i)).collect::<Vec<_>>().join(", ")
        }
    } else {
        literal(value)
    };
    format!("{prefix} SET {} TO {value}", ident(name))
}

/// A stored list setting's names: comma-separated, each bare or in double
/// quotes (with `""` for a quote), as PostgreSQL's `SplitGUCList` reads it.
fn split_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                    } else {
                        break;
                    }
                }
                item.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                item.push(c);
                chars.next();
            }
        }
        out.push(item);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_from_a_manifest_is_a_privilege_or_refused() {
        let mut p = Properties::example("alice");
        p.grants = Some(vec![Grant { grantee: None, privilege: "CONNECT".into(), grantable: false }]);
        p.check().unwrap();
        p.grants = Some(vec![Grant {
            grantee: None,
            privilege: "CONNECT ON DATABASE d TO PUBLIC; ALTER ROLE x SUPERUSER; --".into(),
            grantable: false,
        }]);
        assert!(p.check().is_err());
    }

    #[test]
    fn list_settings_are_quoted_name_by_name() {
        assert_eq!(split_list(r#""$user", public, "B ""c""",x"#), vec!["$user", "public", "B \"c\"", "x"]);
        assert_eq!(
            set_statement("ALTER DATABASE \"d\"", r#"search_path="$user", public"#),
            r#"ALTER DATABASE "d" SET "search_path" TO '$user', 'public'"#
        );
        assert_eq!(
            set_statement("ALTER DATABASE \"d\"", "search_path="),
            r#"ALTER DATABASE "d" SET "search_path" TO ''"#
        );
        assert_eq!(
            set_statement("ALTER DATABASE \"d\"", "app.note=it's a=b"),
            r#"ALTER DATABASE "d" SET "app.note" TO 'it''s a=b'"#
        );
    }
}
