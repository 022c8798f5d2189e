//! The receiving end of restores and copies: replace the target database,
//! create the extensions an archive names, and run pg_restore into it as
//! the target's owner, with Heroku's flags. Nothing in an archive runs with
//! more rights than the database's owner has, and what it creates belongs
//! to the owner.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::pg::cluster::database::{self, Properties};
use crate::pg::cluster::Cluster;
use crate::pg::conn::quote::ident;
use crate::pg::conn::{self, Conn};
use crate::pg::formats::archive::Extension;
use crate::pg::tools::bins::{self, Tools};
use crate::pg::tools::tool::{Exit, Tool, ToolCommand};

/// A target database, and the role everything is applied as.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where the archive is applied: the target itself, or its shadow.
    pub name: String,
    pub owner: String,
    /// The owner is a superuser, or can create roles, bypass row-level
    /// security or reach the server's files and programs: what the archive
    /// runs gets that too.
    pub privileged_owner: bool,
    /// What the target is besides its contents, which its replacement gets.
    pub props: Properties,
}

impl Target {
    /// The same target, applied into database `name` instead.
    pub fn renamed(&self, name: &str) -> Target {
        Target { name: name.to_string(), ..self.clone() }
    }
}

/// Refuse, before the target is touched, an archive whose extensions this
/// server does not have.
pub async fn check_extensions(cluster: &Cluster, extensions: &[Extension]) -> Result<()> {
    if extensions.is_empty() {
        return Ok(());
    }
    let c = cluster.client().await?;
    let names: Vec<&str> = extensions.iter().map(|e| e.name.as_str()).collect();
    let missing: Vec<String> = c
        .query(
            "SELECT n FROM unnest($1::text[]) n WHERE NOT EXISTS (SELECT 1 FROM pg_available_extensions a WHERE a.name = n)",
            &[&names],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the backup needs the extension(s) {} which this server does not have (pg_available_extensions); \
             install the package that provides them, then restore again",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The target as it is now: its owner and properties, and whether that
/// owner holds more than a database owner should (a superuser, or a role
/// that can create roles or run programs on the server). Refuses the
/// control database.
pub async fn find(cluster: &Cluster, target: &str) -> Result<Target> {
    let c = cluster.client().await?;
    if let Some(url) = &cluster.control_url {
        let control = conn::connect(url).await?;
        let control: String = control.query_one("SELECT pg_catalog.current_database()", &[]).await?.get(0);
        if control == target {
            bail!("refusing to replace the control database {target:?}");
        }
    }
    let props = database::read(&c, bins::server_major(&c).await?, target)
        .await?
        .with_context(|| format!("target database {target:?} does not exist"))?;
    let privileged_owner: bool = c
        .query_one(
            "SELECT r.rolsuper OR r.rolcreaterole OR r.rolbypassrls
                    OR pg_catalog.pg_has_role(r.oid, 'pg_execute_server_program', 'MEMBER')
                    OR pg_catalog.pg_has_role(r.oid, 'pg_write_server_files', 'MEMBER')
                    OR pg_catalog.pg_has_role(r.oid, 'pg_read_server_files', 'MEMBER')
               FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
            &[&props.owner],
        )
        .await?
        .get(0);
    Ok(Target { name: target.to_string(), owner: props.owner.clone(), privileged_owner, props })
}

/// In place: drop `target` and create it again, empty, with its
/// properties; connections to it are ended (WITH (FORCE)). What a failure
/// after this leaves is a half-restored target: only `in_place => true`
/// asks for it.
pub async fn recreate(cluster: &Cluster, target: &Target) -> Result<()> {
    let name = &target.name;
    cluster
        .execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(name)))
        .await
        .with_context(|| format!("dropping {name}"))?;
    create(cluster, target).await
}

/// Create database `target.name`, empty, with the target's properties.
pub async fn create(cluster: &Cluster, target: &Target) -> Result<()> {
    cluster
        .execute(&target.props.create_statement(&target.name))
        .await
        .with_context(|| format!("creating database {}", target.name))
}

/// Create database `name`, which this cluster lacks, with the recorded
/// properties `props` (of a backup's database: its owner, locale,
/// settings, grants and comment); a tablespace this cluster lacks is left
/// for the default. Only the roles `created` (by this restore) get their
/// recorded settings in it; a setting only a superuser may make is not
/// made. What could not be kept, as warnings.
pub async fn receive(cluster: &Cluster, props: &Properties, name: &str, created: &[String]) -> Result<Vec<String>> {
    let c = cluster.client().await?;
    let mut warnings = Vec::new();
    let mut props = props.clone();
    for role in props.keep_role_settings_of(created) {
        warnings.push(format!("the settings {role} had in {name} were not made: {role} is this cluster's own role"));
    }
    let privileged: Vec<String> = c
        .query("SELECT name FROM pg_catalog.pg_settings WHERE context NOT IN ('user', 'backend') OR name LIKE '%preload_libraries'", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for s in props.drop_settings(&privileged) {
        warnings.push(format!("not made (a superuser's setting): ALTER DATABASE {name} SET {s}"));
    }
    let tablespace = props.tablespace.clone();
    if c.query_opt("SELECT 1 FROM pg_catalog.pg_tablespace WHERE spcname = $1", &[&tablespace]).await?.is_none() {
        warnings.push(format!("tablespace {tablespace:?} is not in this cluster: {name} is in the default one"));
        props.tablespace = "pg_default".into();
    }
    let target = Target { name: name.to_string(), owner: props.owner.clone(), privileged_owner: false, props };
    create(cluster, &target).await?;
    warnings.extend(configure(cluster, &target, name).await?);
    comment(cluster, &target).await?;
    Ok(warnings)
}

/// Drop database `name`, which this restore created empty (`receive`) and
/// then could not fill.
pub async fn drop_received(cluster: &Cluster, name: &str) -> Result<()> {
    cluster.execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(name))).await
}

/// Give database `into` the grants, connection limit and settings of
/// `target` (as it is now), once the archive is in. A setting the agent may
/// not store (a superuser's, or a role's it has no rights over) is a
/// warning naming the statement to run; a grant or limit it cannot give
/// fails the transfer, which would otherwise leave the database more open
/// than the target was.
pub async fn configure(cluster: &Cluster, target: &Target, into: &str) -> Result<Vec<String>> {
    let props = &target.props;
    for s in props.access_statements(into) {
        cluster.execute(&s).await.with_context(|| format!("giving {into} the grants of {}: {s}", target.name))?;
    }
    let mut warnings = Vec::new();
    for (s, shown) in props.setting_statements(into).into_iter().zip(props.setting_statements(&target.name)) {
        if let Err(e) = cluster.execute(&s).await {
            warnings.push(format!("could not keep a setting of {} ({e:#}): run {shown}", target.name));
        }
    }
    Ok(warnings)
}

/// Refuse a target that cannot be replaced: a template (its flag would be
/// lost, and it cannot be dropped), or one that replication or a prepared
/// transaction holds on to by its oid.
pub async fn check_replaceable(cluster: &Cluster, target: &Target) -> Result<()> {
    let c = cluster.client().await?;
    let row = c
        .query_one(
            "SELECT d.datistemplate,
                    (SELECT count(*) FROM pg_catalog.pg_replication_slots s WHERE s.database = d.datname),
                    (SELECT count(*) FROM pg_catalog.pg_subscription s WHERE s.subdbid = d.oid),
                    (SELECT count(*) FROM pg_catalog.pg_prepared_xacts x WHERE x.database = d.datname)
               FROM pg_catalog.pg_database d WHERE d.oid = $1",
            &[&target.props.oid],
        )
        .await?;
    let (template, slots, subscriptions, prepared): (bool, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let name = &target.name;
    if template {
        bail!("{name} is a template database: make it an ordinary one first (ALTER DATABASE ... IS_TEMPLATE false)");
    }
    if slots > 0 || subscriptions > 0 {
        bail!(
            "{name} has {slots} replication slot(s) and {subscriptions} subscription(s), which would not follow a \
             replaced database: drop them first"
        );
    }
    if prepared > 0 {
        bail!("{name} has {prepared} prepared transaction(s): commit or roll them back first (pg_prepared_xacts)");
    }
    Ok(())
}

/// Close database `db` to everyone but `role` (the throwaway login that
/// applies the archive: NOINHERIT, so the owner's rights are not its own)
/// until it gets the target's grants.
pub async fn open_only_to(cluster: &Cluster, db: &str, role: &str) -> Result<()> {
    cluster
        .execute(&format!(
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}",
            db = ident(db),
            role = ident(role)
        ))
        .await?;
    Ok(())
}

/// The name of the database with oid `oid`, if there is one.
pub async fn database_named(cluster: &Cluster, oid: u32) -> Result<Option<String>> {
    Ok(cluster
        .client()
        .await?
        .query_opt("SELECT datname::text FROM pg_catalog.pg_database WHERE oid = $1", &[&oid])
        .await?
        .map(|r| r.get(0)))
}

/// The oid of database `name`.
pub async fn oid_of(cluster: &Cluster, name: &str) -> Result<u32> {
    let c = cluster.client().await?;
    Ok(c.query_one("SELECT oid FROM pg_catalog.pg_database WHERE datname = $1", &[&name]).await?.get(0))
}

/// Give database `target.name` the target's comment (a shadow gets it in
/// the swap: until then its comment marks it as the agent's).
pub async fn comment(cluster: &Cluster, target: &Target) -> Result<()> {
    cluster.execute(&target.props.comment_statement(&target.name)).await
}

/// Create the archive's extensions in `target` as the agent, once the
/// archive's schemas are in (a schema the archive does not create is
/// created for the owner).
pub async fn create_extensions(cluster: &Cluster, target: &Target, extensions: &[Extension]) -> Result<()> {
    if extensions.is_empty() {
        return Ok(());
    }
    let c = conn::connect(&Conn::new(&cluster.data_url, Some(&target.name))?.with_password()).await?;
    for e in extensions {
        c.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}",
            ident(&e.schema),
            ident(&target.owner)
        ))
        .await
        .with_context(|| format!("creating schema {} for extension {}", e.schema, e.name))?;
        c.batch_execute(&format!(
            "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {} CASCADE",
            ident(&e.name),
            ident(&e.schema)
        ))
        .await
        .with_context(|| format!("creating extension {} in {}", e.name, target.name))?;
    }
    Ok(())
}

/// The major of the control cluster's server, which every restore and
/// copy target is on.
pub async fn server_major(cluster: &Cluster) -> Result<u32> {
    bins::server_major(&*cluster.client().await?).await
}

/// `pg_restore --clean --if-exists --no-acl --no-owner --verbose
/// --role=OWNER [-j N] [--use-list LIST]` from `tools` into `target` over
/// `conn` (the transfer's applier); the caller adds the input (a path, or
/// stdin).
pub fn pg_restore(
    tools: &Tools,
    conn: &Conn,
    target: &Target,
    jobs: Option<usize>,
    list: Option<&Path>,
) -> Result<ToolCommand> {
    let mut c = ToolCommand::new(tools, Tool::PgRestore, conn);
    c.args(["--clean", "--if-exists", "--no-acl", "--no-owner", "--verbose"]);
    c.arg(format!("--role={}", target.owner));
    if let Some(l) = list {
        c.arg("--use-list").arg(l);
    }
    if let Some(j) = jobs.filter(|j| *j > 1) {
        c.arg(format!("--jobs={j}"));
    }
    // A restore that crashes is run again from the start, so its sessions
    // need not wait for WAL flushes; index builds get more memory.
    c.env("PGOPTIONS", "-c synchronous_commit=off -c maintenance_work_mem=256MB");
    Ok(c)
}

/// pg_restore's verdict: errors it only ignored are warnings, as with
/// Heroku ("Finished with N warnings"); anything else is a failure.
pub fn restore_warnings(exit: &Exit) -> Result<i32> {
    if exit.success() {
        return Ok(0);
    }
    match ignored_errors(&exit.tail.join("\n")) {
        Some(n) => Ok(n),
        None => {
            exit.check()?;
            Ok(0)
        }
    }
}

/// pg_restore's closing "errors ignored on restore: N".
fn ignored_errors(text: &str) -> Option<i32> {
    text.lines().rev().find_map(|l| l.split("errors ignored on restore: ").nth(1).and_then(|n| n.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::conn::quote::literal;

    #[test]
    fn counts_errors_pg_restore_ignored() {
        assert_eq!(
            ignored_errors("pg_restore: creating TABLE\npg_restore: warning: errors ignored on restore: 3"),
            Some(3)
        );
        assert_eq!(ignored_errors("pg_restore: error: could not connect"), None);
    }

    #[test]
    fn quoting_survives_any_name() {
        assert_eq!(ident("it's \"q3#sales\""), "\"it's \"\"q3#sales\"\"\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
