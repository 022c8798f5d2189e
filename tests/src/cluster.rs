//! A throwaway Postgres cluster (Debian's 15 unless told another major's
//! binaries): initdb into a temporary directory owned by an unprivileged
//! user (initdb and postgres refuse to run as root), a free port on
//! loopback, `shared_preload_libraries = 'pg_backups'` (or a plain server,
//! for a source that needs no extension), trust authentication for local
//! connections (over TLS only, if asked). Dropping a `Cluster` stops it and
//! removes its directory, also when a test panics.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// Where Debian's postgresql-15 puts the server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Where scripts/deps.sh puts PostgreSQL 16 (PyPI's pgserver wheel), unless
/// `$PG16_BIN` says otherwise (the Makefile passes its own).
pub const PG16_BIN: &str = "/opt/pgbackups/pg16-wheel/pgserver/pginstall/bin";

/// The PostgreSQL 15 server clusters start from: `$PG15_SERVER_BIN` (a
/// private copy with its own installed extension, for work in parallel
/// worktrees), or [`PG_BIN`].
pub fn pg15_server_bin() -> PathBuf {
    std::env::var_os("PG15_SERVER_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(PG_BIN))
}

/// PostgreSQL 16's binaries: `$PG16_BIN`, or [`PG16_BIN`].
pub fn pg16_bin() -> PathBuf {
    std::env::var_os("PG16_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(PG16_BIN))
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    /// The directory of its server binaries (and of the client tools the
    /// harness runs against it).
    pub bin: PathBuf,
    /// Leave the cluster running and its files in place when dropped.
    pub keep: bool,
}

/// The OS user that owns and runs clusters: the current one, or `postgres`
/// when running as root.
fn run_as() -> Option<&'static str> {
    (unsafe { libc::geteuid() } == 0).then_some("postgres")
}

/// `cmd args...`, as the cluster's user.
fn command(program: &str) -> Command {
    match run_as() {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--", program]);
            c
        }
        None => Command::new(program),
    }
}

fn check(what: &str, out: Output) -> Result<Output> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// A new cluster in a fresh temporary directory, started, with the
    /// extension created in the control database `postgres`.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Like [`Cluster::start`], with extra postgresql.conf lines.
    pub fn start_with(conf: &[&str]) -> Result<Self> {
        Self::start_with_bin(&pg15_server_bin(), conf)
    }

    /// Like [`Cluster::start_with`], with the server binaries in `bin` (the
    /// extension must be installed into that PostgreSQL).
    pub fn start_with_bin(bin: &Path, conf: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("pgbackups-cluster-").tempdir()?.keep();
        let c = Self::init_with(&dir, free_port()?, bin, true, conf)?;
        c.start_server()?;
        c.sql("postgres", "CREATE EXTENSION pg_backups")?;
        Ok(c)
    }

    /// Like [`Cluster::start_with`], serving TLS with the given certificate
    /// (PEM, with its chain) and key, and taking TCP connections over TLS
    /// only (`hostssl`, trust): a plain one is refused. Unix-socket
    /// connections stay open, without TLS as always. `client_ca` (PEM)
    /// verifies client certificates, for `hba` lines (put first) such as
    /// `hostssl all alice 127.0.0.0/8 cert`.
    pub fn start_tls(
        cert_pem: &str,
        key_pem: &str,
        client_ca: Option<&str>,
        hba: &[&str],
        conf: &[&str],
    ) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix("pgbackups-cluster-").tempdir()?.keep();
        // Owned by the server's user with the rest of `dir` (init_at), the
        // key readable by it alone, as postgres insists.
        let tls = dir.join("tls");
        std::fs::create_dir(&tls)?;
        std::fs::write(tls.join("server.crt"), cert_pem)?;
        std::fs::write(tls.join("server.key"), key_pem)?;
        std::fs::set_permissions(tls.join("server.key"), std::fs::Permissions::from_mode(0o600))?;
        let mut settings = vec![
            "ssl = on".to_string(),
            format!("ssl_cert_file = '{}'", tls.join("server.crt").display()),
            format!("ssl_key_file = '{}'", tls.join("server.key").display()),
        ];
        if let Some(ca) = client_ca {
            std::fs::write(tls.join("client-ca.crt"), ca)?;
            settings.push(format!("ssl_ca_file = '{}'", tls.join("client-ca.crt").display()));
        }
        settings.extend(conf.iter().map(|s| s.to_string()));
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        let c = Self::init_at(&dir, free_port()?, &settings)?;
        let mut lines: Vec<&str> = vec!["local all all trust"];
        lines.extend(hba);
        lines.extend(["hostssl all all 127.0.0.0/8 trust", "hostssl all all ::1/128 trust", ""]);
        std::fs::write(c.data().join("pg_hba.conf"), lines.join("\n"))?;
        c.start_server()?;
        c.sql("postgres", "CREATE EXTENSION pg_backups")?;
        Ok(c)
    }

    /// A plain server from the binaries in `bin`, without the extension:
    /// a source or target the agent reaches by URL, which needs nothing
    /// installed into that PostgreSQL.
    pub fn start_plain(bin: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("pgbackups-cluster-").tempdir()?.keep();
        let c = Self::init_with(&dir, free_port()?, bin, false, &[])?;
        c.start_server()?;
        Ok(c)
    }

    /// Initialise a cluster in `dir` (created if missing, must be empty).
    pub fn init_at(dir: &Path, port: u16, conf: &[&str]) -> Result<Self> {
        Self::init_with(dir, port, &pg15_server_bin(), true, conf)
    }

    /// Initialise a cluster in `dir` with the binaries in `bin`, the
    /// extension preloaded or not.
    fn init_with(dir: &Path, port: u16, bin: &Path, extension: bool, conf: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        if let Some(user) = run_as() {
            check("chown", Command::new("chown").args(["-R", user]).arg(dir).output()?)?;
        }
        let c = Cluster { dir: dir.to_path_buf(), port, bin: bin.to_path_buf(), keep: false };
        check(
            "initdb",
            command(&c.program("initdb"))
                .arg("-D")
                .arg(c.data())
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"])
                .output()?,
        )?;
        let mut settings = vec![
            format!("port = {port}"),
            "listen_addresses = '127.0.0.1'".into(),
            format!("unix_socket_directories = '{}'", dir.display()),
            "fsync = off".into(),
            "log_min_messages = info".into(),
        ];
        if extension {
            settings.push("shared_preload_libraries = 'pg_backups'".into());
            settings.push("backups.database_name = 'postgres'".into());
        }
        settings.extend(conf.iter().map(|s| s.to_string()));
        let conf_path = c.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path)?;
        text.push_str("\n# pg_backups test harness\n");
        text.push_str(&settings.join("\n"));
        text.push('\n');
        std::fs::write(&conf_path, text)?;
        Ok(c)
    }

    /// An existing cluster directory, for `pgbackups-cluster stop`: the
    /// binaries of its major (Debian's, or PostgreSQL 16's).
    pub fn open(dir: &Path) -> Result<Self> {
        let major = std::fs::read_to_string(dir.join("data/PG_VERSION")).context("not a cluster directory")?;
        let bin = match major.trim() {
            "16" if !Path::new("/usr/lib/postgresql/16/bin/postgres").exists() => pg16_bin(),
            m => PathBuf::from(format!("/usr/lib/postgresql/{m}/bin")),
        };
        let conf = std::fs::read_to_string(dir.join("data/postgresql.conf")).context("not a cluster directory")?;
        let port = conf
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("port = ").and_then(|p| p.trim().parse().ok()))
            .context("no port in postgresql.conf")?;
        Ok(Cluster { dir: dir.to_path_buf(), port, bin, keep: true })
    }

    /// One of its PostgreSQL programs (`initdb`, `pg_ctl`, `psql`, `pg_dump`...).
    pub fn program(&self, name: &str) -> String {
        self.bin.join(name).display().to_string()
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    pub fn start_server(&self) -> Result<()> {
        check(
            "pg_ctl start",
            command(&self.program("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.log())
                .args(["-w", "-t", "60", "start"])
                .stdout(Stdio::null())
                .output()?,
        )
        .with_context(|| format!("log: {}", std::fs::read_to_string(self.log()).unwrap_or_default()))?;
        Ok(())
    }

    /// Stop the server (`mode`: smart, fast or immediate).
    pub fn stop_server(&self, mode: &str) -> Result<()> {
        check("pg_ctl stop", self.pg_ctl_stop(mode, 60)?)?;
        Ok(())
    }

    /// `pg_ctl stop -m MODE -w -t SECONDS`, as the cluster's user: how it went.
    pub fn pg_ctl_stop(&self, mode: &str, seconds: u32) -> Result<std::process::Output> {
        Ok(command(&self.program("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "-t", &seconds.to_string(), "stop"])
            .stdout(Stdio::null())
            .output()?)
    }

    pub fn restart(&self) -> Result<()> {
        self.stop_server("fast")?;
        self.start_server()
    }

    /// libpq keyword/value connection string (any database name).
    pub fn connstr(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname='{}'",
            self.port,
            db.replace('\\', "\\\\").replace('\'', "\\'")
        )
    }

    /// URL form, as the agent takes it.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn client(&self, db: &str) -> Result<postgres::Client> {
        postgres::Client::connect(&self.connstr(db), postgres::NoTls)
            .with_context(|| format!("connecting to {}", self.connstr(db)))
    }

    /// Run SQL with psql (ON_ERROR_STOP); returns its stdout.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.program("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-d", &self.connstr(db), "-c", sql])
            .output()?;
        Ok(String::from_utf8(check(&format!("psql {sql:?}"), out)?.stdout)?.trim_end().to_string())
    }

    /// Run SQL with psql as login `role` over TCP (trust on loopback).
    pub fn sql_as(&self, role: &str, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.program("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", role, "-d", db, "-c", sql])
            .output()?;
        Ok(String::from_utf8(check(&format!("psql as {role} {sql:?}"), out)?.stdout)?.trim_end().to_string())
    }

    /// The server log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let _ = self.stop_server("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
