//! `make bench`: capture, restore and copy measured side by side against
//! Heroku's own commands and pgcopydb, on bench/realistic.sql, in one
//! throwaway cluster. Each pair runs RUNS times, alternating which side goes
//! first; medians and ratios are printed as a table and written as JSON.
//! The agent runs with its defaults (a fresh process for each measurement,
//! so that its peak RSS is that operation's).
//!
//! Environment: SCALE (default 1, about 1 GB), RUNS (default 3),
//! OUT (default bench/results.json).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::Cluster;

struct Pair {
    name: &'static str,
    peer: &'static str,
    target: f64,
    ours: Vec<f64>,
    theirs: Vec<f64>,
    rss_mib: Vec<f64>,
}

impl Pair {
    fn new(name: &'static str, peer: &'static str, target: f64) -> Self {
        Pair { name, peer, target, ours: vec![], theirs: vec![], rss_mib: vec![] }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Wait for a transfer with fine polling (timing resolution).
fn wait(c: &Cluster, client: &mut postgres::Client, id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let s: String = client.query_one("SELECT status FROM backups.transfers WHERE name = $1", &[&id])?.get(0);
        match s.as_str() {
            "completed" => return Ok(()),
            "failed" | "cancelled" | "expired" => {
                bail!(
                    "{id} {s}: {}",
                    c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{id}'"))?
                )
            }
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("{id} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Peak resident memory of a process, MiB.
fn peak_rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

struct Bench {
    c: Cluster,
    store: PathBuf,
    work: PathBuf,
    control: postgres::Client,
}

impl Bench {
    /// Start a fresh agent, run `sql` (which queues one transfer), wait for
    /// it; returns (seconds, transfer id, agent peak RSS in MiB).
    fn agent_op(&mut self, sql: &str) -> Result<(f64, String, f64)> {
        let mut agent = Agent::start(&self.c.url("postgres"), &format!("file://{}", self.store.display()), &[], &[])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.c.sql(
            "postgres",
            &format!(
                "SELECT count(*) FROM backups.agents WHERE hostname IS NOT NULL AND agent_id LIKE '%-{}'",
                agent.pid()
            ),
        )? != "1"
        {
            if Instant::now() > deadline {
                bail!("agent did not start: {}", agent.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let t = Instant::now();
        let id: String = self.control.query_one(sql, &[])?.get(0);
        wait(&self.c, &mut self.control, &id)?;
        let secs = t.elapsed().as_secs_f64();
        let rss = peak_rss_mib(agent.pid());
        agent.terminate(Duration::from_secs(30))?;
        Ok((secs, id, rss))
    }

    fn fresh_db(&self, name: &str) -> Result<()> {
        self.c.sql("postgres", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
        self.c.sql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(())
    }
}

fn main() -> Result<()> {
    let scale: f64 = env_or("SCALE", 1.0);
    let runs: usize = env_or("RUNS", 3);
    let out_path = PathBuf::from(std::env::var("OUT").unwrap_or_else(|_| "bench/results.json".into()));
    let sql = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/realistic.sql");

    eprintln!("bench: cluster, dataset at scale {scale}");
    // The same server settings for both sides of every pair.
    let c = Cluster::start_with(&["max_wal_size = '8GB'", "checkpoint_timeout = '30min'", "shared_buffers = '512MB'"])?;
    c.sql("postgres", "CREATE DATABASE shop")?;
    run(Command::new("psql")
        .args(["-X", "-q", "-v", &format!("scale={scale}"), "-d", &c.connstr("shop"), "-f"])
        .arg(&sql))?;
    c.sql("shop", "VACUUM ANALYZE")?;
    let db_size: i64 = c.sql("postgres", "SELECT pg_database_size('shop')")?.parse()?;
    eprintln!("bench: shop is {:.0} MB", db_size as f64 / 1e6);

    let base = tempfile::Builder::new().prefix("pgbackups-bench-").tempdir()?;
    let store = base.path().join("storage");
    let work = base.path().join("work");
    std::fs::create_dir_all(&work)?;
    let control = c.client("postgres")?;
    let mut b = Bench { c, store, work, control };
    c_settings(&b.c)?;

    let mut capture = Pair::new("capture", "pg_dump -F c --no-acl --no-owner --quote-all-identifiers", 0.30);
    let mut capture_j = Pair::new("capture (jobs => 2)", "pg_dump -F d -j 2", 0.35);
    let mut restore = Pair::new("restore", "pg_restore -j 2 --no-acl --no-owner", 0.80);
    let mut copy = Pair::new("copy", "pg_dump -Fc | pg_restore", 0.50);
    let mut copy_pgcopydb = Pair::new("copy", "pgcopydb clone --table-jobs 2 --index-jobs 2", 1.0);
    let mut stored_sizes = vec![];
    let mut dump_sizes = vec![];
    let dump = b.work.join("out.dump");
    let conn = b.c.connstr("shop");

    for i in 0..runs {
        let ours_first = i % 2 == 0;
        eprintln!("bench: run {} of {runs} ({} first)", i + 1, if ours_first { "ours" } else { "peers" });

        // capture
        let last_backup;
        let do_ours = |b: &mut Bench, p: &mut Pair, sql: &str| -> Result<String> {
            let (s, id, rss) = b.agent_op(sql)?;
            p.ours.push(s);
            p.rss_mib.push(rss);
            Ok(id)
        };
        let heroku = |p: &mut Pair| -> Result<()> {
            let _ = std::fs::remove_file(&dump);
            p.theirs.push(timed(|| {
                run(Command::new("pg_dump")
                    .args(["-F", "c", "--no-acl", "--no-owner", "--quote-all-identifiers", "-f"])
                    .arg(&dump)
                    .args(["-d", &conn]))
            })?);
            Ok(())
        };
        if ours_first {
            last_backup = do_ours(&mut b, &mut capture, "SELECT backups.capture('shop')")?;
            heroku(&mut capture)?;
        } else {
            heroku(&mut capture)?;
            last_backup = do_ours(&mut b, &mut capture, "SELECT backups.capture('shop')")?;
        }
        stored_sizes.push(
            b.c.sql("postgres", &format!("SELECT stored_size FROM backups.transfers WHERE name = '{last_backup}'"))?
                .parse::<f64>()?,
        );
        dump_sizes.push(std::fs::metadata(&dump)?.len() as f64);

        // capture (jobs => 2)
        let dir = b.work.join("out.dir");
        let heroku_j = |p: &mut Pair| -> Result<()> {
            let _ = std::fs::remove_dir_all(&dir);
            p.theirs.push(timed(|| {
                run(Command::new("pg_dump")
                    .args(["-F", "d", "-j", "2", "--no-acl", "--no-owner", "--quote-all-identifiers", "-f"])
                    .arg(&dir)
                    .args(["-d", &conn]))
            })?);
            Ok(())
        };
        if ours_first {
            do_ours(&mut b, &mut capture_j, "SELECT backups.capture('shop', jobs => 2)")?;
            heroku_j(&mut capture_j)?;
        } else {
            heroku_j(&mut capture_j)?;
            do_ours(&mut b, &mut capture_j, "SELECT backups.capture('shop', jobs => 2)")?;
        }

        // restore, into fresh databases
        let restore_ours = |b: &mut Bench, p: &mut Pair| -> Result<()> {
            b.fresh_db("r_ours")?;
            let (s, _, rss) = b.agent_op(&format!("SELECT backups.restore('{last_backup}', 'r_ours', 'r_ours')"))?;
            p.ours.push(s);
            p.rss_mib.push(rss);
            Ok(())
        };
        let restore_theirs = |b: &mut Bench, p: &mut Pair| -> Result<()> {
            b.fresh_db("r_theirs")?;
            let target = b.c.connstr("r_theirs");
            p.theirs.push(timed(|| {
                run(Command::new("pg_restore").args(["-j", "2", "--no-acl", "--no-owner", "-d", &target]).arg(&dump))
            })?);
            Ok(())
        };
        if ours_first {
            restore_ours(&mut b, &mut restore)?;
            restore_theirs(&mut b, &mut restore)?;
        } else {
            restore_theirs(&mut b, &mut restore)?;
            restore_ours(&mut b, &mut restore)?;
        }

        // copy: ours, pg_dump | pg_restore, pgcopydb
        let copy_ours = |b: &mut Bench, p: &mut Pair| -> Result<f64> {
            b.fresh_db("c_ours")?;
            let (s, _, rss) = b.agent_op("SELECT backups.copy('shop', 'c_ours', 'c_ours')")?;
            p.ours.push(s);
            p.rss_mib.push(rss);
            Ok(s)
        };
        let pipe = |b: &mut Bench| -> Result<f64> {
            b.fresh_db("c_pipe")?;
            let target = b.c.connstr("c_pipe");
            timed(|| {
                run(Command::new("bash").arg("-c").arg(format!(
                    "set -o pipefail; pg_dump -Fc --no-acl --no-owner --quote-all-identifiers -d '{conn}' | pg_restore --no-acl --no-owner -d '{target}'"
                )))
            })
        };
        let pgcopydb = |b: &mut Bench| -> Result<f64> {
            b.fresh_db("c_pgcopydb")?;
            let wd = b.work.join("pgcopydb");
            let _ = std::fs::remove_dir_all(&wd);
            let (src, dst) = (b.c.url("shop"), b.c.url("c_pgcopydb"));
            timed(|| {
                run(Command::new("pgcopydb")
                    .args([
                        "clone",
                        "--source",
                        &src,
                        "--target",
                        &dst,
                        "--table-jobs",
                        "2",
                        "--index-jobs",
                        "2",
                        "--no-owner",
                        "--no-acl",
                        "--dir",
                    ])
                    .arg(&wd))
            })
        };
        if ours_first {
            let s = copy_ours(&mut b, &mut copy)?;
            copy_pgcopydb.ours.push(s);
            copy.theirs.push(pipe(&mut b)?);
            copy_pgcopydb.theirs.push(pgcopydb(&mut b)?);
        } else {
            copy.theirs.push(pipe(&mut b)?);
            copy_pgcopydb.theirs.push(pgcopydb(&mut b)?);
            let s = copy_ours(&mut b, &mut copy)?;
            copy_pgcopydb.ours.push(s);
        }
        // Keep storage from filling up between runs.
        b.c.sql(
            "postgres",
            "UPDATE backups.transfers SET status = 'expired' WHERE kind = 'capture' AND status = 'completed'",
        )?;
    }

    // Report.
    let pairs = [&capture, &capture_j, &restore, &copy, &copy_pgcopydb];
    let mb = db_size as f64 / 1e6;
    let mut table = String::new();
    table.push_str("| operation | pg_backups (s) | peer | peer (s) | ratio | target | met | agent peak RSS (MiB) |\n");
    table.push_str("|---|---:|---|---:|---:|---:|:-:|---:|\n");
    let mut json_pairs = vec![];
    for p in pairs {
        let (a, t) = (median(&p.ours), median(&p.theirs));
        let ratio = a / t;
        let rss = p.rss_mib.iter().cloned().fold(f64::NAN, f64::max);
        table.push_str(&format!(
            "| {} | {a:.2} | `{}` | {t:.2} | {ratio:.2} | ≤ {:.2} | {} | {} |\n",
            p.name,
            p.peer,
            p.target,
            if ratio <= p.target { "yes" } else { "no" },
            if rss.is_nan() { "-".into() } else { format!("{rss:.0}") }
        ));
        json_pairs.push(serde_json::json!({
            "operation": p.name, "peer": p.peer, "ours_s": p.ours, "peer_s": p.theirs,
            "ours_median_s": a, "peer_median_s": t, "ratio": ratio, "target": p.target,
            "agent_peak_rss_mib": p.rss_mib,
        }));
    }
    let (stored, dumped) = (median(&stored_sizes), median(&dump_sizes));
    let capture_mbps = mb / median(&capture.ours);
    let summary = format!(
        "database size {mb:.0} MB; stored backup {:.1} MB vs pg_dump -Fc file {:.1} MB ({:.2}x); capture throughput {capture_mbps:.0} MB/s of database size",
        stored / 1e6,
        dumped / 1e6,
        stored / dumped
    );
    println!("{table}\n{summary}");
    let json = serde_json::json!({
        "date": chrono_now(),
        "command": format!("make bench SCALE={scale} RUNS={runs}"),
        "machine": machine(),
        "scale": scale,
        "runs": runs,
        "database_bytes": db_size,
        "stored_bytes_median": stored,
        "pg_dump_fc_bytes_median": dumped,
        "capture_mb_per_s": capture_mbps,
        "pairs": json_pairs,
        "table_markdown": table,
        "summary": summary,
    });
    if let Some(d) = out_path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", out_path.display()))?;
    eprintln!("bench: wrote {}", out_path.display());
    Ok(())
}

fn c_settings(c: &Cluster) -> Result<()> {
    // Manual backups would otherwise expire (keep_manual) in the middle of a run.
    std::fs::write(c.data().join("postgresql.auto.conf"), "backups.keep_manual = 1000\n")?;
    c.sql("postgres", "SELECT pg_reload_conf()")?;
    Ok(())
}

fn chrono_now() -> String {
    String::from_utf8_lossy(
        &Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output().map(|o| o.stdout).unwrap_or_default(),
    )
    .trim()
    .to_string()
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default();
    let mem =
        std::fs::read_to_string("/proc/meminfo").unwrap_or_default().lines().next().unwrap_or_default().to_string();
    serde_json::json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory": mem,
        "postgres": String::from_utf8_lossy(&Command::new("pg_dump").arg("--version").output().map(|o| o.stdout).unwrap_or_default()).trim(),
    })
}
