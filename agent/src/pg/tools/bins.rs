//! Which pg_dump, pg_restore and psql a transfer runs, since one set does not
//! fit every server: pg_dump refuses a server newer than itself, and
//! pg_restore reads no archive from a newer pg_dump. The agent knows one bin
//! directory per PostgreSQL major (`--pg-bin-dir`, then
//! `/usr/lib/postgresql/*/bin`, then PATH), learns each one's major once at
//! start-up, and gives each side of a transfer the lowest major that is at
//! least its server's: a capture's pg_dump the source's; a restore's
//! pg_restore the target's and that of the pg_dump that wrote the archive; a
//! copy, a capture and a restore without storage, both.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokio::process::Command;

/// Where Debian (and the PGDG packages) put each major's programs.
pub const SCAN_ROOT: &str = "/usr/lib/postgresql";

/// The programs of one PostgreSQL major, all from one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// Its major version (15, 16...), from `pg_dump --version`.
    pub major: u32,
    /// What `pg_dump --version` says, as recorded with a capture.
    pub version: String,
    /// Its directory; `None` for programs found on PATH.
    pub dir: Option<PathBuf>,
}

impl Tools {
    /// The path of one of its programs (`pg_dump`, `pg_restore`, `psql`).
    pub fn path(&self, program: &str) -> PathBuf {
        match &self.dir {
            Some(d) => d.join(program),
            None => PathBuf::from(program),
        }
    }

    /// `using PostgreSQL 16 tools from /opt/pg16/bin (pg_dump (PostgreSQL)
    /// 16.2)`, for transfer logs.
    pub fn used(&self) -> String {
        let place = match &self.dir {
            Some(d) => d.display().to_string(),
            None => "PATH".into(),
        };
        format!("using PostgreSQL {} tools from {place} ({})", self.major, self.version)
    }

    /// `16 (/usr/lib/postgresql/16/bin)`, for messages.
    pub fn describe(&self) -> String {
        match &self.dir {
            Some(d) => format!("{} ({})", self.major, d.display()),
            None => format!("{} (on PATH)", self.major),
        }
    }
}

/// Why a transfer needs tools of at least some major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A server the tools connect to, named for messages ("this server",
    /// "the source", "the target").
    Server(&'static str, u32),
    /// An archive written by pg_dump of this major, for pg_restore.
    Archive(u32),
}

impl Need {
    fn major(self) -> u32 {
        match self {
            Need::Server(_, m) | Need::Archive(m) => m,
        }
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Server(what, m) => write!(f, "{what} is PostgreSQL {m}"),
            Need::Archive(m) => write!(f, "the archive is from pg_dump {m}"),
        }
    }
}

/// Every set of tools the agent found, lowest major first; one per major
/// (the first found: `--pg-bin-dir` wins over the scan, the scan over PATH).
#[derive(Debug, Clone)]
pub struct Bins {
    found: Vec<Tools>,
}

impl Bins {
    /// Look in `configured` (each must hold a pg_dump), then in
    /// `/usr/lib/postgresql/*/bin`, then on PATH; run each `pg_dump
    /// --version` once.
    pub async fn discover(configured: &[PathBuf]) -> Result<Bins> {
        let mut found = Vec::new();
        for dir in configured {
            let pg_dump = dir.join("pg_dump");
            if !pg_dump.is_file() {
                bail!("--pg-bin-dir {}: there is no pg_dump there", dir.display());
            }
            found.push(probe(Some(dir.clone())).await.with_context(|| format!("--pg-bin-dir {}", dir.display()))?);
        }
        for dir in scan(Path::new(SCAN_ROOT)) {
            match probe(Some(dir.clone())).await {
                Ok(t) => found.push(t),
                Err(e) => tracing::debug!("skipping {}: {e:#}", dir.display()),
            }
        }
        match probe(None).await {
            Ok(t) => found.push(t),
            Err(e) => tracing::debug!("no pg_dump on PATH: {e:#}"),
        }
        let bins = Bins::new(found);
        if bins.found.is_empty() {
            bail!(
                "no pg_dump found (in --pg-bin-dir, {SCAN_ROOT}/*/bin or PATH): install the PostgreSQL client tools \
                 or set --pg-bin-dir"
            );
        }
        Ok(bins)
    }

    /// From tools in search order: the first of each major, sorted by major.
    pub fn new(in_search_order: Vec<Tools>) -> Bins {
        let mut found: Vec<Tools> = Vec::new();
        for t in in_search_order {
            if !found.iter().any(|f| f.major == t.major) {
                found.push(t);
            }
        }
        found.sort_by_key(|t| t.major);
        Bins { found }
    }

    /// What was found, for the start-up log: `15 (/usr/...), 16 (/opt/...)`.
    pub fn describe(&self) -> String {
        self.found.iter().map(Tools::describe).collect::<Vec<_>>().join(", ")
    }

    /// The newest tools: they read any archive the others can.
    pub fn newest(&self) -> &Tools {
        self.found.last().expect("discover finds at least one")
    }

    /// A capture's: pg_dump for the source's server.
    pub fn for_capture(&self, server: u32) -> Result<&Tools> {
        self.pick("pg_dump", &[Need::Server("this server", server)])
    }

    /// A restore's: pg_restore for the target's server and for the archive,
    /// written by pg_dump of major `archive`.
    pub fn for_restore(&self, target: u32, archive: u32) -> Result<&Tools> {
        self.pick("pg_restore", &[Need::Server("the target", target), Need::Archive(archive)])
    }

    /// A copy's, as a capture then a restore: the source side's (pg_dump,
    /// psql COPY TO) for the source's server, and the target side's
    /// (pg_restore, psql COPY FROM) for the target's server and for the
    /// archive that pg_dump writes. The pg_dump of the source's own major is
    /// the one that knows its catalog: a newer major's pg_dump of an older
    /// minor can misread it (15.20 keeps a `pg_attver` column option that
    /// pg_dump 16.2 dumps as one the server refuses).
    pub fn for_copy(&self, source: u32, target: u32) -> Result<(&Tools, &Tools)> {
        let dump = self.pick("pg_dump", &[Need::Server("the source", source)])?;
        let restore = self.pick("pg_restore", &[Need::Server("the target", target), Need::Archive(dump.major)])?;
        Ok((dump, restore))
    }

    /// The tools of the lowest major that meets every need; `program` (the
    /// one that would refuse) names them in the error.
    fn pick(&self, program: &str, needs: &[Need]) -> Result<&Tools> {
        let need = needs.iter().map(|n| n.major()).max().unwrap_or(0);
        if let Some(t) = self.found.iter().find(|t| t.major >= need) {
            return Ok(t);
        }
        let why: Vec<String> = needs.iter().map(Need::to_string).collect();
        bail!(
            "{}; {program} {need} or newer is needed, found {}; add its bin directory with --pg-bin-dir",
            why.join(" and "),
            self.describe()
        )
    }
}

/// `/usr/lib/postgresql/*/bin` holding a pg_dump, in name order.
fn scan(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> =
        entries.flatten().map(|e| e.path().join("bin")).filter(|d| d.join("pg_dump").is_file()).collect();
    dirs.sort();
    dirs
}

/// Run `pg_dump --version` in `dir` (or from PATH) and learn its major.
async fn probe(dir: Option<PathBuf>) -> Result<Tools> {
    let tools = Tools { major: 0, version: String::new(), dir };
    let path = tools.path("pg_dump");
    let out =
        Command::new(&path).arg("--version").output().await.with_context(|| format!("running {}", path.display()))?;
    if !out.status.success() {
        bail!("{} --version failed ({})", path.display(), out.status);
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let major = tool_major(&version).with_context(|| format!("no version in {version:?} ({})", path.display()))?;
    Ok(Tools { major, version, ..tools })
}

/// The major in `pg_dump (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)`,
/// `pg_dump (PostgreSQL) 16.2` or `... 17devel`.
pub fn tool_major(version: &str) -> Option<u32> {
    let number = version.split_whitespace().find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    number.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

/// The major of the server `client` is connected to.
pub async fn server_major(client: &tokio_postgres::Client) -> Result<u32> {
    let num: String = client.query_one("SHOW server_version_num", &[]).await?.get(0);
    let num: u32 = num.trim().parse().with_context(|| format!("server_version_num {num:?}"))?;
    Ok(num / 10000)
}

/// The major in `pg_restore --list`'s `;     Dumped by pg_dump version: 16.2`.
pub fn dumped_by(list: &[String]) -> Option<u32> {
    list.iter().find_map(|l| l.split("Dumped by pg_dump version:").nth(1)).and_then(tool_major)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(major: u32, dir: &str) -> Tools {
        Tools { major, version: format!("pg_dump (PostgreSQL) {major}.1"), dir: Some(PathBuf::from(dir)) }
    }

    #[test]
    fn versions_are_read_from_what_the_tools_print() {
        assert_eq!(tool_major("pg_dump (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)"), Some(15));
        assert_eq!(tool_major("pg_dump (PostgreSQL) 16.2"), Some(16));
        assert_eq!(tool_major("pg_dump (PostgreSQL) 17devel"), Some(17));
        assert_eq!(tool_major("pg_dump"), None);
        let list = ";\n; Archive created at 2024-01-01 00:00:00 UTC\n;     dbname: shop\n\
                    ;     Dumped from database version: 15.10 (Debian 15.10-0+deb12u1)\n\
                    ;     Dumped by pg_dump version: 16.2\n;\n";
        let lines = |text: &str| text.lines().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(dumped_by(&lines(list)), Some(16));
        assert_eq!(dumped_by(&lines("; nothing here\n")), None);
    }

    #[test]
    fn the_lowest_major_at_least_every_need_is_picked() {
        let bins = Bins::new(vec![tools(17, "/b17"), tools(15, "/b15"), tools(16, "/b16")]);
        let capture = |server| bins.for_capture(server).map(|t| t.major).map_err(|e| e.to_string());
        assert_eq!(capture(15), Ok(15));
        assert_eq!(capture(16), Ok(16));
        // Older servers get the oldest tools that can talk to them.
        assert_eq!(capture(13), Ok(15));
        // A restore: the target, and the pg_dump that wrote the archive.
        let restore = |target, archive| bins.for_restore(target, archive).map(|t| t.major).map_err(|e| e.to_string());
        assert_eq!(restore(16, 15), Ok(16));
        assert_eq!(restore(15, 16), Ok(16));
        assert_eq!(restore(14, 13), Ok(15));
        // A copy: pg_dump for the source; pg_restore for the target and that pg_dump.
        let copy =
            |source, target| bins.for_copy(source, target).map(|(d, r)| (d.major, r.major)).map_err(|e| e.to_string());
        assert_eq!(copy(15, 16), Ok((15, 16)));
        assert_eq!(copy(16, 15), Ok((16, 16)));
        assert_eq!(copy(17, 17), Ok((17, 17)));
        assert_eq!(copy(13, 14), Ok((15, 15)));
        assert_eq!(bins.newest().major, 17);
    }

    #[test]
    fn the_first_found_of_a_major_wins() {
        // --pg-bin-dir first, then the scan, then PATH.
        let path = Tools { major: 15, version: "pg_dump (PostgreSQL) 15.9".into(), dir: None };
        let bins = Bins::new(vec![tools(15, "/opt/pg15/bin"), tools(15, "/usr/lib/postgresql/15/bin"), path]);
        let t = bins.for_capture(15).unwrap();
        assert_eq!(t.dir.as_deref(), Some(Path::new("/opt/pg15/bin")));
        assert_eq!(bins.describe(), "15 (/opt/pg15/bin)");
        assert_eq!(t.path("pg_restore"), PathBuf::from("/opt/pg15/bin/pg_restore"));
        let on_path = Tools { major: 16, version: String::new(), dir: None };
        assert_eq!(on_path.path("psql"), PathBuf::from("psql"));
        assert_eq!(on_path.describe(), "16 (on PATH)");
        assert_eq!(t.used(), "using PostgreSQL 15 tools from /opt/pg15/bin (pg_dump (PostgreSQL) 15.1)");
    }

    #[test]
    fn none_fitting_names_what_is_needed_and_what_was_found() {
        let bins = Bins::new(vec![tools(15, "/usr/lib/postgresql/15/bin")]);
        let e = bins.for_capture(16).unwrap_err().to_string();
        assert_eq!(
            e,
            "this server is PostgreSQL 16; pg_dump 16 or newer is needed, found 15 (/usr/lib/postgresql/15/bin); \
             add its bin directory with --pg-bin-dir"
        );
        let e = bins.for_restore(15, 17).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "the target is PostgreSQL 15 and the archive is from pg_dump 17; pg_restore 17 or newer is needed"
            ),
            "{e}"
        );
        let e = bins.for_copy(15, 16).unwrap_err().to_string();
        assert!(e.starts_with("the target is PostgreSQL 16 and the archive is from pg_dump 15; pg_restore 16"), "{e}");
        let e = bins.for_copy(16, 15).unwrap_err().to_string();
        assert!(e.starts_with("the source is PostgreSQL 16; pg_dump 16 or newer is needed"), "{e}");
    }

    #[test]
    fn the_scan_finds_bin_directories_holding_pg_dump() {
        let root = tempfile::tempdir().unwrap();
        for (v, with_dump) in [("16", true), ("15", true), ("14", false)] {
            let bin = root.path().join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            if with_dump {
                std::fs::write(bin.join("pg_dump"), "").unwrap();
            }
        }
        assert_eq!(scan(root.path()), vec![root.path().join("15/bin"), root.path().join("16/bin")]);
        assert!(scan(&root.path().join("missing")).is_empty());
    }
}
