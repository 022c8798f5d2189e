//! Connections to Postgres: the control database (tokio-postgres) and the
//! libpq connection strings handed to pg_dump and friends.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config as PgConfig, NoTls};

/// Connect and drive the connection in the background. Notifications are
/// not delivered here: see `listener`.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, conn) =
        tokio_postgres::connect(url, NoTls).await.with_context(|| format!("connecting to {}", redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("connection closed: {e}");
        }
    });
    Ok(client)
}

/// Connect, retrying with backoff for up to `patience`.
pub async fn connect_with_retry(url: &str, patience: Duration) -> Result<Client> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut wait = Duration::from_millis(200);
    loop {
        match connect(url).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() + wait < deadline => {
                tracing::debug!("{e:#}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A libpq keyword/value string for `url` with its database replaced by
/// `dbname`, and the password to pass in PGPASSWORD (never on a command
/// line, where `ps` would show it).
pub fn libpq_target(url: &str, dbname: Option<&str>) -> Result<(String, Option<String>)> {
    let cfg: PgConfig = url.parse().with_context(|| format!("invalid connection string {}", redact(url)))?;
    let mut parts = Vec::new();
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(s) => s.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(format!("host={}", quote(&hosts.join(","))));
    }
    if !cfg.get_ports().is_empty() {
        let ports: Vec<String> = cfg.get_ports().iter().map(u16::to_string).collect();
        parts.push(format!("port={}", ports.join(",")));
    }
    if let Some(u) = cfg.get_user() {
        parts.push(format!("user={}", quote(u)));
    }
    if let Some(db) = dbname.or(cfg.get_dbname()) {
        parts.push(format!("dbname={}", quote(db)));
    }
    if let Some(app) = cfg.get_application_name() {
        parts.push(format!("application_name={}", quote(app)));
    }
    let password = cfg.get_password().map(|p| String::from_utf8_lossy(p).into_owned());
    Ok((parts.join(" "), password))
}

/// The same URL aimed at another database.
pub fn with_dbname(url: &str, dbname: &str) -> Result<String> {
    let (conn, password) = libpq_target(url, Some(dbname))?;
    Ok(match password {
        Some(p) => format!("{conn} password={}", quote(&p)),
        None => conn,
    })
}

fn quote(v: &str) -> String {
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:,".contains(c)) {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// A URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ if url.contains("password=") => "(connection string with password)".into(),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_target_replaces_the_database_and_keeps_the_password_out() {
        let (c, p) = libpq_target("postgres://alice:s3cret@db.example.com:6543/postgres", Some("shop")).unwrap();
        assert_eq!(c, "host=db.example.com port=6543 user=alice dbname=shop");
        assert_eq!(p.as_deref(), Some("s3cret"));
        let (c, p) = libpq_target("host=/tmp port=5432 user=postgres dbname=postgres", Some("my db")).unwrap();
        assert_eq!(c, "host=/tmp port=5432 user=postgres dbname='my db'");
        assert_eq!(p, None);
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(redact("postgres://alice:s3cret@h/db"), "postgres://alice:***@h/db");
        assert_eq!(redact("postgres://alice@h/db"), "postgres://alice@h/db");
    }
}
