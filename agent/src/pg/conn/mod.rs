//! Connections to Postgres: tokio-postgres clients for the agent's own
//! queries (over TLS as `tls` sets it up), and `Conn`, the libpq connection
//! string handed to pg_dump, pg_restore and psql, with its password kept
//! apart for the environment.

pub mod quote;
pub mod tls;

use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::config::{Host, TargetSessionAttrs};
use tokio_postgres::{Client, Config as PgConfig, Connection, Socket};

/// The agent's `application_name` on every connection it and its tools
/// open (unless the connection string names one).
pub const APPLICATION_NAME: &str = "pgbackups";

/// How long a connection may take to open (a host that drops packets would
/// otherwise hold the caller for minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Open a connection (a URL or keyword/value string, TLS settings
/// included), within `CONNECT_TIMEOUT`; the caller drives it.
pub async fn open(url: &str) -> Result<(Client, Connection<Socket, tls::Stream>)> {
    let attempt = async {
        let (settings, rest) = tls::split(url)?;
        let mut cfg: PgConfig = rest.parse().context("invalid connection string")?;
        if cfg.get_application_name().is_none() {
            cfg.application_name(APPLICATION_NAME);
        }
        // A database's owner may set its search_path (ALTER DATABASE ...
        // SET) so that its own functions shadow pg_catalog's in the agent's
        // queries, run with the agent's rights: the agent's sessions pin it.
        let options = match cfg.get_options() {
            Some(o) => format!("{o} {PINNED_SEARCH_PATH}"),
            None => PINNED_SEARCH_PATH.to_string(),
        };
        cfg.options(&options);
        // A connection a firewall or NAT dropped while it sat idle (an
        // admin connection through an hour's load) is found dead within
        // about two minutes, not at the next statement's TCP timeout.
        if !rest.contains("keepalives_idle") {
            cfg.keepalives_idle(Duration::from_secs(60))
                .keepalives_interval(Duration::from_secs(10))
                .keepalives_retries(6);
        }
        tls::connect(&cfg, &settings).await
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))
        .and_then(|r| r)
        .with_context(|| format!("connecting to {}", redact(url)))
}

/// The search_path of every session the agent opens itself, and the
/// quoting its statements' literals assume (`pg/quote.rs`), whatever a
/// database's own settings say.
pub const PINNED_SEARCH_PATH: &str = "-c search_path=pg_catalog,pg_temp -c standard_conforming_strings=on";

/// For the agent's own sessions that create, rename and drop databases: a
/// lock someone else holds (a tenant's open `COMMENT ON DATABASE`, say) is
/// waited for this long, not for good.
pub const LOCK_TIMEOUT: &str = "SET lock_timeout = '5s'";

/// Connect and drive the connection in the background. Notifications are
/// not delivered here: see the agent's `listen`.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = open(url).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("connection closed: {e}");
        }
    });
    Ok(client)
}

/// Connect, retrying with backoff for up to `patience`; a TLS setting or
/// certificate refused is not retried.
pub async fn connect_with_retry(url: &str, patience: Duration) -> Result<Client> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut wait = Duration::from_millis(200);
    loop {
        match connect(url).await {
            Ok(c) => return Ok(c),
            Err(e) if e.downcast_ref::<tls::Fatal>().is_some() => return Err(e),
            Err(e) if tokio::time::Instant::now() + wait < deadline => {
                tracing::debug!("{e:#}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A database to connect to, in libpq's keyword/value form (safe to show:
/// no password), and the password to pass in PGPASSWORD, never on a command
/// line where `ps` would show it.
#[derive(Debug, Clone)]
pub struct Conn {
    pub keywords: String,
    pub password: Option<String>,
}

impl Conn {
    /// `url` (a URL or keyword/value string), aimed at `dbname` if given.
    pub fn new(url: &str, dbname: Option<&str>) -> Result<Conn> {
        let (tls, rest) = tls::split(url).with_context(|| format!("invalid connection string {}", redact(url)))?;
        let cfg: PgConfig = rest.parse().with_context(|| format!("invalid connection string {}", redact(url)))?;
        Ok(Self::from_config(&cfg, &tls, dbname))
    }

    /// Like `new`, logging in as `user` with `password` instead.
    pub fn login_as(url: &str, dbname: Option<&str>, user: &str, password: &str) -> Result<Conn> {
        let (tls, rest) = tls::split(url).with_context(|| format!("invalid connection string {}", redact(url)))?;
        let mut cfg: PgConfig = rest.parse().with_context(|| format!("invalid connection string {}", redact(url)))?;
        cfg.user(user).password(password);
        Ok(Self::from_config(&cfg, &tls, dbname))
    }

    fn from_config(cfg: &PgConfig, tls: &tls::Settings, dbname: Option<&str>) -> Conn {
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
        if !cfg.get_hostaddrs().is_empty() {
            let addrs: Vec<String> = cfg.get_hostaddrs().iter().map(|a| a.to_string()).collect();
            parts.push(format!("hostaddr={}", addrs.join(",")));
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
        // What else the connection asked for is kept: TLS first of all.
        for (k, v) in tls.keywords() {
            parts.push(format!("{k}={}", quote(&v)));
        }
        if let Some(o) = cfg.get_options() {
            parts.push(format!("options={}", quote(o)));
        }
        if let Some(t) = cfg.get_connect_timeout() {
            parts.push(format!("connect_timeout={}", t.as_secs().max(1)));
        }
        match cfg.get_target_session_attrs() {
            TargetSessionAttrs::ReadWrite => parts.push("target_session_attrs=read-write".into()),
            TargetSessionAttrs::ReadOnly => parts.push("target_session_attrs=read-only".into()),
            _ => {}
        }
        let password = cfg.get_password().map(|p| String::from_utf8_lossy(p).into_owned());
        Conn { keywords: parts.join(" "), password }
    }

    /// The full string, password included, for the agent's own connections.
    pub fn with_password(&self) -> String {
        match &self.password {
            Some(p) => format!("{} password={}", self.keywords, quote(p)),
            None => self.keywords.clone(),
        }
    }
}

fn quote(v: &str) -> String {
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:,".contains(c)) {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// The database a connection string names, if it names one.
pub fn dbname(url: &str) -> Result<Option<String>> {
    let (_, rest) = tls::split(url).with_context(|| format!("invalid connection string {}", redact(url)))?;
    let cfg: PgConfig = rest.parse().with_context(|| format!("invalid connection string {}", redact(url)))?;
    Ok(cfg.get_dbname().map(str::to_string))
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
    fn conn_replaces_the_database_and_keeps_the_password_out() {
        let c = Conn::new("postgres://alice:s3cret@db.example.com:6543/postgres", Some("shop")).unwrap();
        assert_eq!(c.keywords, "host=db.example.com port=6543 user=alice dbname=shop");
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.with_password(), "host=db.example.com port=6543 user=alice dbname=shop password=s3cret");
        let c = Conn::new("host=/tmp port=5432 user=postgres dbname=postgres", Some("it's q3#sales")).unwrap();
        assert_eq!(c.keywords, "host=/tmp port=5432 user=postgres dbname='it\\'s q3#sales'");
        assert_eq!(c.password, None);
        // The string libpq gets back names the same database.
        let parsed: PgConfig = c.with_password().parse().unwrap();
        assert_eq!(parsed.get_dbname(), Some("it's q3#sales"));
        // TLS and the other settings of the connection are kept.
        let c = Conn::new(
            "postgres://a@h/postgres?sslmode=require&options=-c%20statement_timeout%3D0&connect_timeout=5&target_session_attrs=read-write",
            Some("shop"),
        )
        .unwrap();
        assert_eq!(
            c.keywords,
            "host=h port=5432 user=a dbname=shop sslmode=require options='-c statement_timeout=0' connect_timeout=5 target_session_attrs=read-write"
        );
    }

    #[test]
    fn conn_gives_the_tools_every_tls_setting() {
        for mode in ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] {
            let c = Conn::new(&format!("postgres://a@h/postgres?sslmode={mode}"), None).unwrap();
            assert_eq!(c.keywords, format!("host=h port=5432 user=a dbname=postgres sslmode={mode}"));
        }
        // URL form: files, and a host address beside the name checked.
        let c = Conn::new(
            "postgres://a:pw@db.example.com:6543/postgres?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert=/etc/ssl/my%20ca.pem&sslcert=/c.pem&sslkey=/k.pem&sslcrl=/crl.pem",
            Some("shop"),
        )
        .unwrap();
        assert_eq!(
            c.keywords,
            "host=db.example.com hostaddr=127.0.0.1 port=6543 user=a dbname=shop sslmode=verify-full \
             sslrootcert='/etc/ssl/my ca.pem' sslcert=/c.pem sslkey=/k.pem sslcrl=/crl.pem"
        );
        assert_eq!(c.password.as_deref(), Some("pw"));
        // Keyword/value form; what the agent gets back (with_password) is
        // the same connection, TLS included.
        let c = Conn::new("host=h user=a dbname=x sslmode=verify-ca sslrootcert='/tmp/it\\'s.pem' password=pw", None)
            .unwrap();
        assert_eq!(c.keywords, "host=h user=a dbname=x sslmode=verify-ca sslrootcert='/tmp/it\\'s.pem'");
        let (settings, rest) = tls::split(&c.with_password()).unwrap();
        assert_eq!(settings.mode, Some(tls::SslMode::VerifyCa));
        assert_eq!(settings.rootcert.as_deref(), Some(std::path::Path::new("/tmp/it's.pem")));
        let parsed: PgConfig = rest.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"pw"[..]));
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(redact("postgres://alice:s3cret@h/db"), "postgres://alice:***@h/db");
        assert_eq!(redact("postgres://alice@h/db"), "postgres://alice@h/db");
    }
}
