//! The roles a database's dump names, as `pg_dumpall --roles-only` would
//! write them: read at capture (kept in the manifest), and created in a
//! cluster that lacks them when a backup is restored there from storage
//! (`pgbackups restore --create`). A dump names a role when the role owns
//! one of its objects, or is granted on one (`pg_shdepend` of the
//! database), or owns, is granted on, or has settings in the database
//! itself; the roles those are members of come along, with memberships
//! among them. Passwords only when asked (`--keep-role-passwords`).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::pg::cluster::Cluster;
use crate::pg::conn::quote::{ident, literal};

/// One role, as a new cluster must create it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    pub superuser: bool,
    pub inherit: bool,
    pub create_role: bool,
    pub create_db: bool,
    pub login: bool,
    pub replication: bool,
    pub bypass_rls: bool,
    pub connection_limit: i32,
    pub valid_until: Option<String>,
    /// The password as stored (a SCRAM or md5 verifier), when kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// `ALTER ROLE ... SET` entries (`name=value`), in every database.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
    /// The roles it is a member of (of those kept), and whether with ADMIN
    /// OPTION.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_of: Vec<(String, bool)>,
}

/// The roles database `database` (its oid) names, and those they are
/// members of, in an order that creates groups before their members.
/// `extra`: roles named elsewhere (the database's own properties).
/// `passwords`: read pg_authid (a superuser only) for their verifiers.
pub async fn read(c: &tokio_postgres::Client, database: u32, extra: &[String], passwords: bool) -> Result<Vec<Role>> {
    // Never a superuser's: a restore does not make superusers.
    let password = if passwords { "CASE WHEN a.rolsuper THEN NULL ELSE a.rolpassword END" } else { "NULL::text" };
    let from = if passwords { "pg_catalog.pg_authid" } else { "pg_catalog.pg_roles" };
    let rows = c
        .query(
            &format!(
                "WITH RECURSIVE named AS (
                     SELECT s.refobjid AS role FROM pg_catalog.pg_shdepend s
                      WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
                        AND (s.dbid = $1 OR (s.dbid = 0 AND s.classid = 'pg_catalog.pg_database'::pg_catalog.regclass
                                             AND s.objid = $1))
                     UNION SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = ANY ($2)
                     UNION SELECT d.datdba FROM pg_catalog.pg_database d WHERE d.oid = $1
                 ), kept AS (
                     SELECT role FROM named
                     UNION SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN kept k ON m.member = k.role
                 )
                 SELECT a.rolname::text, a.rolsuper, a.rolinherit, a.rolcreaterole, a.rolcreatedb, a.rolcanlogin,
                        a.rolreplication, a.rolbypassrls, a.rolconnlimit, a.rolvaliduntil::text, {password},
                        (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s
                          WHERE s.setrole = a.oid AND s.setdatabase = 0),
                        ARRAY(SELECT g.rolname::text FROM pg_catalog.pg_auth_members m
                                JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                               WHERE m.member = a.oid AND m.roleid IN (SELECT role FROM kept) ORDER BY 1),
                        ARRAY(SELECT m.admin_option FROM pg_catalog.pg_auth_members m
                                JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                               WHERE m.member = a.oid AND m.roleid IN (SELECT role FROM kept) ORDER BY g.rolname)
                   FROM {from} a
                  WHERE a.oid IN (SELECT role FROM kept) AND a.rolname !~ '^pg_'
                  ORDER BY 1"
            ),
            &[&database, &extra],
        )
        .await
        .context("reading the roles the database names")?;
    let roles = rows
        .iter()
        .map(|r| {
            let groups: Vec<String> = r.get(12);
            let admin: Vec<bool> = r.get(13);
            Role {
                name: r.get(0),
                superuser: r.get(1),
                inherit: r.get(2),
                create_role: r.get(3),
                create_db: r.get(4),
                login: r.get(5),
                replication: r.get(6),
                bypass_rls: r.get(7),
                connection_limit: r.get(8),
                valid_until: r.get(9),
                password: r.get(10),
                settings: r.get::<_, Option<Vec<String>>>(11).unwrap_or_default(),
                member_of: groups.into_iter().zip(admin).collect(),
            }
        })
        .collect();
    Ok(roles)
}

impl Role {
    /// `CREATE ROLE` with its attributes (and its password, if kept).
    pub fn create_statement(&self) -> String {
        let flag = |on: bool, yes: &str, no: &str| if on { yes.to_string() } else { no.to_string() };
        let mut sql = format!(
            "CREATE ROLE {} WITH {} {} {} {} {} {} {} CONNECTION LIMIT {}",
            ident(&self.name),
            flag(self.superuser, "SUPERUSER", "NOSUPERUSER"),
            flag(self.inherit, "INHERIT", "NOINHERIT"),
            flag(self.create_role, "CREATEROLE", "NOCREATEROLE"),
            flag(self.create_db, "CREATEDB", "NOCREATEDB"),
            flag(self.login, "LOGIN", "NOLOGIN"),
            flag(self.replication, "REPLICATION", "NOREPLICATION"),
            flag(self.bypass_rls, "BYPASSRLS", "NOBYPASSRLS"),
            self.connection_limit,
        );
        if let Some(p) = &self.password {
            sql.push_str(&format!(" PASSWORD {}", literal(p)));
        }
        if let Some(v) = &self.valid_until {
            sql.push_str(&format!(" VALID UNTIL {}", literal(v)));
        }
        sql
    }

    /// Its `ALTER ROLE ... SET`s and memberships: run once every role
    /// exists.
    pub fn after_statements(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .settings
            .iter()
            .map(|s| crate::pg::cluster::database::set_statement(&format!("ALTER ROLE {}", ident(&self.name)), s))
            .collect();
        for (group, admin) in &self.member_of {
            out.push(format!(
                "GRANT {} TO {}{}",
                ident(group),
                ident(&self.name),
                if *admin { " WITH ADMIN OPTION" } else { "" }
            ));
        }
        out
    }
}

/// What `create_missing` did: the roles created, and what of the
/// manifest it would not do, for the person to do by hand.
#[derive(Debug, Default)]
pub struct Created {
    pub roles: Vec<String>,
    pub refused: Vec<String>,
}

/// Create those of `roles` this cluster lacks (a role it has is left as
/// it is), then their settings and memberships; with their recorded
/// password verifiers only when `passwords`. A manifest is whatever
/// storage holds, and this runs with the rights of whoever restores, so
/// it never creates a role with powers beyond a database's (SUPERUSER,
/// CREATEROLE, REPLICATION, BYPASSRLS: created without them, and said so),
/// grants membership only in roles it created itself, and sets no
/// setting that loads a library.
pub async fn create_missing(cluster: &Cluster, roles: &[Role], passwords: bool) -> Result<Created> {
    let c = cluster.client().await?;
    let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    let existing: Vec<String> = c
        .query("SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname = ANY ($1)", &[&names])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut done = Created::default();
    let missing: Vec<Role> = roles
        .iter()
        .filter(|r| !existing.contains(&r.name))
        .map(|r| {
            let mut tamed = r.clone();
            if r.superuser || r.create_role || r.replication || r.bypass_rls {
                done.refused.push(format!(
                    "{} was created without SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS: grant what it needs yourself",
                    r.name
                ));
                (tamed.superuser, tamed.create_role, tamed.replication, tamed.bypass_rls) = (false, false, false, false);
            }
            if !passwords {
                tamed.password = None;
            }
            tamed.settings.retain(|s| {
                let name = s.split_once('=').map_or(s.as_str(), |(n, _)| n).to_ascii_lowercase();
                let loads = name.ends_with("preload_libraries");
                if loads {
                    done.refused.push(format!("{}: not set: ALTER ROLE ... SET {s}", r.name));
                }
                !loads
            });
            tamed
        })
        .collect();
    for r in &missing {
        if r.name.starts_with("pg_") {
            bail!("the backup names role {:?}: a name reserved for PostgreSQL's own roles", r.name);
        }
        cluster.execute(&r.create_statement()).await.with_context(|| format!("creating role {}", r.name))?;
        done.roles.push(r.name.clone());
    }
    // Groups it may join: those created here (of the backup's, tamed). A
    // role this cluster had is its own: joining it is the person's call.
    for mut r in missing {
        r.member_of.retain(|(group, _)| {
            let ok = done.roles.contains(group);
            if !ok {
                done.refused
                    .push(format!("{} was not made a member of {group}: GRANT it yourself if it should be", r.name));
            }
            ok
        });
        for s in r.after_statements() {
            cluster.execute(&s).await.with_context(|| format!("role {}: {s}", r.name))?;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_is_created_as_pg_dumpall_would() {
        let r = Role {
            name: "app's".into(),
            superuser: false,
            inherit: true,
            create_role: false,
            create_db: true,
            login: true,
            replication: false,
            bypass_rls: false,
            connection_limit: 5,
            valid_until: None,
            password: None,
            settings: vec!["search_path=app, public".into()],
            member_of: vec![("readers".into(), false), ("Admins".into(), true)],
        };
        assert_eq!(
            r.create_statement(),
            "CREATE ROLE \"app's\" WITH NOSUPERUSER INHERIT NOCREATEROLE CREATEDB LOGIN NOREPLICATION NOBYPASSRLS \
             CONNECTION LIMIT 5"
        );
        assert_eq!(
            r.after_statements(),
            vec![
                "ALTER ROLE \"app's\" SET \"search_path\" TO 'app', 'public'".to_string(),
                "GRANT \"readers\" TO \"app's\"".into(),
                "GRANT \"Admins\" TO \"app's\" WITH ADMIN OPTION".into(),
            ]
        );
    }
}
