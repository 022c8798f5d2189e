//! `make bench`: capture, restore and copy measured side by side against
//! Heroku's own commands and pgcopydb, in one throwaway cluster, on
//! bench/realistic.sql (database `shop`, where `events` is about 85% of the
//! data) and on bench/skew.sql (database `skew`, `events` over 90%). Each
//! pair runs RUNS times, alternating which side goes first; medians and
//! ratios are printed as a table and written as JSON. The agent runs with
//! its defaults (a fresh process for each measurement, so that its peak RSS
//! is that operation's).
//!
//! Every round runs, on `shop`:
//! - capture vs `pg_dump -Fc`, and capture (jobs => 2) vs `pg_dump -Fd -j 2`;
//! - restore (the agent: one job per core) vs `pg_restore -j 2` of a local
//!   `pg_dump -Fc` file;
//! - copy (the agent: one COPY stream per core) vs `pg_dump -Fc |
//!   pg_restore`, vs `pgcopydb clone --table-jobs 2 --index-jobs 2`, and vs
//!   the same with `--split-tables-larger-than` (pgcopydb's same-table
//!   concurrency: `events` copied by several COPY processes). The row "copy
//!   vs the better pgcopydb" takes as the peer's time of each round the
//!   faster of that round's two pgcopydb runs (a per-round minimum, which
//!   can only favour the peer), then the median of those, as every row does;
//! - restore_tables of `plans` (100 rows, added to `shop` for it), of
//!   `customers` (15% of the data) and of `events` (85%) from the round's
//!   backup, each against that round's full restore of the same backup
//!   (targets: 0.2 for `plans`, 1.0 for `events`), and the share of the
//!   stored backup each read (the agent's count of stored bytes fetched);
//! - with JOBS_SWEEP, restore and copy again with one job: the agent under
//!   `taskset -c <cpu>` (it takes its job count from available_parallelism,
//!   which follows the affinity mask; it has no other knob), against
//!   `pg_restore -j 1` and `pgcopydb clone --table-jobs 1 --index-jobs 1`
//!   under the same taskset. Only the client side is pinned: the server's
//!   backends may use every core, for both sides alike. The rows above are
//!   the other point of the sweep (as many jobs as cores: 2 on the 2-core
//!   reference machine, where the peers run with 2 too);
//! - with SKEW, on `skew`: restore vs `pg_restore -j 2`, and copy vs both
//!   pgcopydb runs and the better of them. `skew` is captured and dumped
//!   with `pg_dump -Fc` once, before the rounds (those two times are in the
//!   JSON, not in the table), and every round restores that backup and file.
//!
//! Targets (ratio pg_backups / peer, of the medians): capture ≤ 0.30,
//! capture (jobs => 2) ≤ 0.35, restore ≤ 0.85, copy vs `pg_dump | pg_restore`
//! ≤ 0.50, copy vs the better pgcopydb ≤ 0.90 (on `shop` and on `skew`), and
//! an agent peak RSS ≤ 128 MiB in every operation. The rows without a target
//! (each pgcopydb run alone, the 1-job sweep) are there to explain the
//! others.
//!
//! Environment: SCALE (default 1: about 1 GB per database), RUNS (default 3),
//! OUT (default bench/results.json), SKEW (default 1; 0 leaves the `skew`
//! dataset out), JOBS_SWEEP (default 1 when SCALE ≤ 1, else 0), SPLIT_MB
//! (pgcopydb's --split-tables-larger-than, in MB; default 100 × SCALE, at
//! least 1, which cuts `events` into about 7 parts at any scale).
//!
//! Run time at SCALE=1 RUNS=3 on the 2-core reference machine (estimated
//! from the previous run's timings): about 15 min with SKEW=0 JOBS_SWEEP=0,
//! about 30 min with both (the default): JOBS_SWEEP adds about 6 min, SKEW
//! about 10 (its dataset, one capture and dump, then 5 transfers a round).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::Cluster;

/// The bound on the agent's peak RSS, for every operation.
const RSS_TARGET_MIB: f64 = 128.0;

struct Pair {
    /// A stable name for the JSON (`operation` repeats across peers).
    key: &'static str,
    name: &'static str,
    peer: String,
    /// None: a row that explains others, without a target of its own.
    target: Option<f64>,
    ours: Vec<f64>,
    theirs: Vec<f64>,
    rss_mib: Vec<f64>,
}

impl Pair {
    fn new(key: &'static str, name: &'static str, peer: impl Into<String>, target: Option<f64>) -> Self {
        Pair { key, name, peer: peer.into(), target, ours: vec![], theirs: vec![], rss_mib: vec![] }
    }

    /// One round: ours (seconds, agent peak RSS) and the peer's seconds.
    fn push(&mut self, (secs, rss): (f64, f64), peer: f64) {
        self.ours.push(secs);
        self.rss_mib.push(rss);
        self.theirs.push(peer);
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

/// `program`, under `taskset -c cpu` when pinned.
fn pinned(pin: Option<usize>, program: &str) -> Command {
    match pin {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), program]);
            c
        }
        None => Command::new(program),
    }
}

/// The first CPU this process may run on (the 1-job variants are pinned
/// to it).
fn first_allowed_cpu() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|v| v.trim().split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Run ours and the peer's side in the order of the round.
fn both<O, T>(
    b: &mut Bench,
    ours_first: bool,
    ours: impl FnOnce(&mut Bench) -> Result<O>,
    peer: impl FnOnce(&mut Bench) -> Result<T>,
) -> Result<(O, T)> {
    if ours_first {
        let o = ours(b)?;
        Ok((o, peer(b)?))
    } else {
        let t = peer(b)?;
        Ok((ours(b)?, t))
    }
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
    /// Start a fresh agent (under `taskset -c pin` when pinned), run `sql`
    /// (which queues one transfer), wait for it; returns (seconds, transfer
    /// id, agent peak RSS in MiB).
    fn agent_op(&mut self, pin: Option<usize>, sql: &str) -> Result<(f64, String, f64)> {
        let cpu = pin.map(|c| c.to_string());
        let wrapper: Vec<&str> = match &cpu {
            Some(cpu) => vec!["taskset", "-c", cpu],
            None => vec![],
        };
        let mut agent = Agent::start_wrapped(
            &wrapper,
            &self.c.url("postgres"),
            &format!("file://{}", self.store.display()),
            &[],
            &[],
        )?;
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

    /// An agent transfer: (seconds, agent peak RSS). Pinned, the agent
    /// must have said that it worked with one job (a restore's "N jobs", a
    /// copy's "N parallel COPY streams"), or the 1-job rows would be wrong.
    fn ours(&mut self, pin: Option<usize>, sql: &str) -> Result<(f64, f64)> {
        let (s, id, rss) = self.agent_op(pin, sql)?;
        if pin.is_some()
            && self.c.sql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM backups.transfer_logs l JOIN backups.transfers t ON t.id = l.transfer_id \
                     WHERE t.name = '{id}' AND (l.message LIKE '%, 1 jobs%' OR l.message LIKE '% by 1 parallel COPY streams%')"
                ),
            )? == "0"
        {
            bail!("{id}: pinned to one CPU, the agent did not say that it used one job");
        }
        Ok((s, rss))
    }

    fn fresh_db(&self, name: &str) -> Result<()> {
        self.c.sql("postgres", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
        self.c.sql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(())
    }

    /// Heroku's capture: `pg_dump -Fc` of `db` into `file`.
    fn pg_dump_fc(&self, db: &str, file: &Path) -> Result<f64> {
        let _ = std::fs::remove_file(file);
        let conn = self.c.connstr(db);
        timed(|| {
            run(Command::new("pg_dump")
                .args(["-F", "c", "--no-acl", "--no-owner", "--quote-all-identifiers", "-f"])
                .arg(file)
                .args(["-d", &conn]))
        })
    }

    /// Our restore of `backup` into a fresh `r_ours`.
    fn restore_ours(&mut self, backup: &str, pin: Option<usize>) -> Result<(f64, f64)> {
        self.fresh_db("r_ours")?;
        self.ours(pin, &format!("SELECT backups.restore('{backup}', 'r_ours', 'r_ours')"))
    }

    /// `pg_restore -j jobs` of a local dump file into a fresh `r_theirs`.
    fn restore_peer(&mut self, dump: &Path, jobs: usize, pin: Option<usize>) -> Result<f64> {
        self.fresh_db("r_theirs")?;
        let target = self.c.connstr("r_theirs");
        let jobs = jobs.to_string();
        timed(|| run(pinned(pin, "pg_restore").args(["-j", &jobs, "--no-acl", "--no-owner", "-d", &target]).arg(dump)))
    }

    /// Our copy of `src` into a fresh `c_ours`.
    fn copy_ours(&mut self, src: &str, pin: Option<usize>) -> Result<(f64, f64)> {
        self.fresh_db("c_ours")?;
        self.ours(pin, &format!("SELECT backups.copy('{src}', 'c_ours', 'c_ours')"))
    }

    /// `pg_dump -Fc | pg_restore` of `src` into a fresh `c_pipe`.
    fn pipe(&mut self, src: &str) -> Result<f64> {
        self.fresh_db("c_pipe")?;
        let (conn, target) = (self.c.connstr(src), self.c.connstr("c_pipe"));
        timed(|| {
            run(Command::new("bash").arg("-c").arg(format!(
                "set -o pipefail; pg_dump -Fc --no-acl --no-owner --quote-all-identifiers -d '{conn}' | pg_restore --no-acl --no-owner -d '{target}'"
            )))
        })
    }

    /// `pgcopydb clone` of `src` into a fresh `c_pgcopydb`, with `jobs`
    /// table and index jobs, splitting tables larger than `split` if given.
    fn pgcopydb(&mut self, src: &str, jobs: usize, split: Option<&str>, pin: Option<usize>) -> Result<f64> {
        self.fresh_db("c_pgcopydb")?;
        let wd = self.work.join("pgcopydb");
        let _ = std::fs::remove_dir_all(&wd);
        let (from, to, jobs) = (self.c.url(src), self.c.url("c_pgcopydb"), jobs.to_string());
        let mut cmd = pinned(pin, "pgcopydb");
        cmd.args(["clone", "--source", &from, "--target", &to, "--table-jobs", &jobs, "--index-jobs", &jobs]);
        if let Some(size) = split {
            cmd.args(["--split-tables-larger-than", size]);
        }
        cmd.args(["--no-owner", "--no-acl", "--dir"]).arg(&wd);
        timed(|| run(&mut cmd))
    }
}

/// Our copy against the two pgcopydb runs of the round, and the better.
fn record_copy(ours: (f64, f64), plain: f64, split: f64, pairs: [&mut Pair; 3]) {
    let [p_plain, p_split, p_best] = pairs;
    p_plain.push(ours, plain);
    p_split.push(ours, split);
    p_best.push(ours, plain.min(split));
}

/// Generate dataset `db` from `file` at `scale`; returns its size in bytes
/// and the share of it that `events` (with its indexes) holds.
fn generate(c: &Cluster, db: &str, file: &str, scale: f64) -> Result<(i64, f64)> {
    let sql = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench").join(file);
    c.sql("postgres", &format!("CREATE DATABASE {db}"))?;
    run(Command::new("psql")
        .args(["-X", "-q", "-v", &format!("scale={scale}"), "-d", &c.connstr(db), "-f"])
        .arg(&sql))?;
    c.sql(db, "VACUUM ANALYZE")?;
    let size: i64 = c.sql("postgres", &format!("SELECT pg_database_size('{db}')"))?.parse()?;
    let share: f64 =
        c.sql(db, "SELECT pg_total_relation_size('events')::float8 / pg_database_size(current_database())")?.parse()?;
    eprintln!("bench: {db} is {:.0} MB, events {:.1}% of it", size as f64 / 1e6, share * 100.0);
    Ok((size, share))
}

fn main() -> Result<()> {
    let scale: f64 = env_or("SCALE", 1.0);
    let runs: usize = env_or("RUNS", 3);
    let out_path = PathBuf::from(std::env::var("OUT").unwrap_or_else(|_| "bench/results.json".into()));
    let skew = env_or("SKEW", 1) != 0;
    let sweep = env_or("JOBS_SWEEP", if scale <= 1.0 { 1 } else { 0 }) != 0;
    let split = format!("{}MB", env_or("SPLIT_MB", (100.0 * scale).round().max(1.0) as u64));
    let cpu = first_allowed_cpu();

    eprintln!("bench: cluster, datasets at scale {scale} (skew: {skew}, 1-job sweep: {sweep}, split: {split})");
    // The same server settings for both sides of every pair.
    let c = Cluster::start_with(&["max_wal_size = '8GB'", "checkpoint_timeout = '30min'", "shared_buffers = '512MB'"])?;
    let (db_size, events_share) = generate(&c, "shop", "realistic.sql", scale)?;
    // One small table beside them, for restore_tables (the dataset's
    // smallest, customers, is 15% of it).
    c.sql(
        "shop",
        "CREATE TABLE plans (id int PRIMARY KEY, name text NOT NULL, price numeric(8,2)); \
         INSERT INTO plans SELECT g, 'plan ' || g, g * 9.99 FROM generate_series(1, 100) g",
    )?;
    let skew_size = if skew { Some(generate(&c, "skew", "skew.sql", scale)?) } else { None };

    let base = tempfile::Builder::new().prefix("pgbackups-bench-").tempdir()?;
    let store = base.path().join("storage");
    let work = base.path().join("work");
    std::fs::create_dir_all(&work)?;
    let control = c.client("postgres")?;
    let mut b = Bench { c, store, work, control };
    c_settings(&b.c)?;

    let pgcopydb2 = "pgcopydb clone --table-jobs 2 --index-jobs 2";
    let pgcopydb2_split = format!("{pgcopydb2} --split-tables-larger-than {split}");
    let better = "the better of the two pgcopydb runs above, per round";
    let mut capture =
        Pair::new("capture", "capture", "pg_dump -F c --no-acl --no-owner --quote-all-identifiers", Some(0.30));
    let mut capture_j = Pair::new("capture_jobs2", "capture (jobs => 2)", "pg_dump -F d -j 2", Some(0.35));
    let mut restore = Pair::new("restore", "restore", "pg_restore -j 2 --no-acl --no-owner", Some(0.85));
    let mut restore_1 = Pair::new(
        "restore_1job",
        "restore (1 job)",
        format!("pg_restore -j 1 --no-acl --no-owner (both sides under taskset -c {cpu})"),
        None,
    );
    let full = "our full restore of the same backup, same round";
    let mut table_small = Pair::new("restore_tables_small", "restore_tables (plans, 100 rows)", full, Some(0.20));
    let mut table_customers = Pair::new("restore_tables_customers", "restore_tables (customers, 15%)", full, None);
    let mut table_events = Pair::new("restore_tables_events", "restore_tables (events)", full, Some(1.0));
    let mut table_read: Vec<(String, f64)> = vec![];
    let mut copy = Pair::new("copy_pipe", "copy", "pg_dump -Fc | pg_restore", Some(0.50));
    let mut copy_pgcopydb = Pair::new("copy_pgcopydb", "copy", pgcopydb2, None);
    let mut copy_split = Pair::new("copy_pgcopydb_split", "copy", pgcopydb2_split.clone(), None);
    let mut copy_best = Pair::new("copy_pgcopydb_best", "copy vs the better pgcopydb", better, Some(0.90));
    let mut copy_1 = Pair::new(
        "copy_1job",
        "copy (1 job)",
        format!("pgcopydb clone --table-jobs 1 --index-jobs 1 (both sides under taskset -c {cpu})"),
        None,
    );
    let mut restore_skew =
        Pair::new("restore_skew", "restore (skew)", "pg_restore -j 2 --no-acl --no-owner", Some(0.85));
    let mut copy_skew = Pair::new("copy_skew_pgcopydb", "copy (skew)", pgcopydb2, None);
    let mut copy_skew_split = Pair::new("copy_skew_pgcopydb_split", "copy (skew)", pgcopydb2_split, None);
    let mut copy_skew_best =
        Pair::new("copy_skew_pgcopydb_best", "copy (skew) vs the better pgcopydb", better, Some(0.90));
    let mut stored_sizes = vec![];
    let mut dump_sizes = vec![];
    let dump = b.work.join("out.dump");
    let skew_dump = b.work.join("skew.dump");
    let conn = b.c.connstr("shop");

    // `skew`: captured and dumped once; every round restores those.
    let skew_capture = if skew {
        eprintln!("bench: capturing skew (once)");
        let (secs, id, rss) = b.agent_op(None, "SELECT backups.capture('skew')")?;
        let peer = b.pg_dump_fc("skew", &skew_dump)?;
        Some((id, secs, rss, peer))
    } else {
        None
    };
    let skew_backup = skew_capture.as_ref().map(|s| s.0.clone());

    for i in 0..runs {
        let ours_first = i % 2 == 0;
        eprintln!("bench: run {} of {runs} ({} first)", i + 1, if ours_first { "ours" } else { "peers" });

        // capture
        let ((secs, last_backup, rss), peer) = both(
            &mut b,
            ours_first,
            |b| b.agent_op(None, "SELECT backups.capture('shop')"),
            |b| b.pg_dump_fc("shop", &dump),
        )?;
        capture.push((secs, rss), peer);
        stored_sizes.push(
            b.c.sql("postgres", &format!("SELECT stored_size FROM backups.transfers WHERE name = '{last_backup}'"))?
                .parse::<f64>()?,
        );
        dump_sizes.push(std::fs::metadata(&dump)?.len() as f64);

        // capture (jobs => 2)
        let dir = b.work.join("out.dir");
        let (ours, peer) = both(
            &mut b,
            ours_first,
            |b| b.ours(None, "SELECT backups.capture('shop', jobs => 2)"),
            |_| {
                let _ = std::fs::remove_dir_all(&dir);
                timed(|| {
                    run(Command::new("pg_dump")
                        .args(["-F", "d", "-j", "2", "--no-acl", "--no-owner", "--quote-all-identifiers", "-f"])
                        .arg(&dir)
                        .args(["-d", &conn]))
                })
            },
        )?;
        capture_j.push(ours, peer);

        // restore, into fresh databases
        let (ours, peer) =
            both(&mut b, ours_first, |b| b.restore_ours(&last_backup, None), |b| b.restore_peer(&dump, 2, None))?;
        restore.push(ours, peer);
        // Table restores from the same backup, against that full restore.
        for (pair, table) in
            [(&mut table_small, "plans"), (&mut table_customers, "customers"), (&mut table_events, "events")]
        {
            let (secs, id, rss) = b.agent_op(
                None,
                &format!("SELECT backups.restore_tables('{last_backup}', ARRAY['public.{table}'], into_schema => 't_{table}')"),
            )?;
            pair.push((secs, rss), ours.0);
            let read = b.c.sql(
                "postgres",
                &format!(
                    "SELECT substring(l.message FROM 'read [^(]*\\(([0-9]+) bytes\\)') FROM backups.transfer_logs l \
                     JOIN backups.transfers t ON t.id = l.transfer_id WHERE t.name = '{id}' AND l.message LIKE 'read %'"
                ),
            )?;
            let stored = b
                .c
                .sql("postgres", &format!("SELECT stored_size FROM backups.transfers WHERE name = '{last_backup}'"))?;
            table_read.push((table.to_string(), read.parse::<f64>().unwrap_or(f64::NAN) / stored.parse::<f64>()?));
            b.c.sql("shop", &format!("DROP SCHEMA t_{table} CASCADE"))?;
        }
        if sweep {
            let (ours, peer) = both(
                &mut b,
                ours_first,
                |b| b.restore_ours(&last_backup, Some(cpu)),
                |b| b.restore_peer(&dump, 1, Some(cpu)),
            )?;
            restore_1.push(ours, peer);
        }

        // copy: ours, pg_dump | pg_restore, pgcopydb, pgcopydb splitting
        let (ours, (pipe, plain, split_s)) = both(
            &mut b,
            ours_first,
            |b| b.copy_ours("shop", None),
            |b| Ok((b.pipe("shop")?, b.pgcopydb("shop", 2, None, None)?, b.pgcopydb("shop", 2, Some(&split), None)?)),
        )?;
        copy.push(ours, pipe);
        record_copy(ours, plain, split_s, [&mut copy_pgcopydb, &mut copy_split, &mut copy_best]);
        if sweep {
            let (ours, peer) = both(
                &mut b,
                ours_first,
                |b| b.copy_ours("shop", Some(cpu)),
                |b| b.pgcopydb("shop", 1, None, Some(cpu)),
            )?;
            copy_1.push(ours, peer);
        }

        if let Some(backup) = &skew_backup {
            let (ours, peer) =
                both(&mut b, ours_first, |b| b.restore_ours(backup, None), |b| b.restore_peer(&skew_dump, 2, None))?;
            restore_skew.push(ours, peer);
            let (ours, (plain, split_s)) = both(
                &mut b,
                ours_first,
                |b| b.copy_ours("skew", None),
                |b| Ok((b.pgcopydb("skew", 2, None, None)?, b.pgcopydb("skew", 2, Some(&split), None)?)),
            )?;
            record_copy(ours, plain, split_s, [&mut copy_skew, &mut copy_skew_split, &mut copy_skew_best]);
        }

        // Keep storage from filling up between runs (the skew backup stays).
        b.c.sql(
            "postgres",
            &format!(
                "UPDATE backups.transfers SET status = 'expired' WHERE kind = 'capture' AND status = 'completed' \
                 AND name <> '{}'",
                skew_backup.as_deref().unwrap_or("")
            ),
        )?;
    }

    // Report.
    let pairs = [
        &capture,
        &capture_j,
        &restore,
        &restore_1,
        &table_small,
        &table_customers,
        &table_events,
        &copy,
        &copy_pgcopydb,
        &copy_split,
        &copy_best,
        &copy_1,
        &restore_skew,
        &copy_skew,
        &copy_skew_split,
        &copy_skew_best,
    ];
    let mb = db_size as f64 / 1e6;
    let mut table = String::new();
    table.push_str("| operation | pg_backups (s) | peer | peer (s) | ratio | target | met | agent peak RSS (MiB) |\n");
    table.push_str("|---|---:|---|---:|---:|---:|:-:|---:|\n");
    let mut json_pairs = vec![];
    let mut rss_max = f64::NAN;
    for p in pairs.into_iter().filter(|p| !p.ours.is_empty()) {
        let (a, t) = (median(&p.ours), median(&p.theirs));
        let ratio = a / t;
        let rss = p.rss_mib.iter().cloned().fold(f64::NAN, f64::max);
        rss_max = rss_max.max(rss);
        let met = p.target.map(|target| ratio <= target);
        table.push_str(&format!(
            "| {} | {a:.2} | `{}` | {t:.2} | {ratio:.2} | {} | {} | {} |\n",
            p.name,
            p.peer.replace('|', "\\|"),
            p.target.map_or("-".into(), |t| format!("≤ {t:.2}")),
            match met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
            if rss.is_nan() { "-".into() } else { format!("{rss:.0}") }
        ));
        json_pairs.push(serde_json::json!({
            "key": p.key, "operation": p.name, "peer": p.peer, "ours_s": p.ours, "peer_s": p.theirs,
            "ours_median_s": a, "peer_median_s": t, "ratio": ratio, "target": p.target, "target_met": met,
            "agent_peak_rss_mib": p.rss_mib,
        }));
    }
    let (stored, dumped) = (median(&stored_sizes), median(&dump_sizes));
    let capture_mbps = mb / median(&capture.ours);
    let mut summary = format!(
        "database size {mb:.0} MB (events {:.0}%); stored backup {:.1} MB vs pg_dump -Fc file {:.1} MB ({:.2}x); capture throughput {capture_mbps:.0} MB/s of database size; agent peak RSS at most {rss_max:.0} MiB (target ≤ {RSS_TARGET_MIB:.0} MiB: {})",
        events_share * 100.0,
        stored / 1e6,
        dumped / 1e6,
        stored / dumped,
        if rss_max <= RSS_TARGET_MIB { "met" } else { "not met" }
    );
    // From one job to one per core (ours) and to 2 (the peers): how much faster.
    let speedup = |one: &[f64], many: &[f64]| median(one) / median(many);
    let scaling = sweep.then(|| {
        serde_json::json!({
            "cpu": cpu,
            "restore_ours": speedup(&restore_1.ours, &restore.ours),
            "restore_pg_restore": speedup(&restore_1.theirs, &restore.theirs),
            "copy_ours": speedup(&copy_1.ours, &copy.ours),
            "copy_pgcopydb": speedup(&copy_1.theirs, &copy_pgcopydb.theirs),
        })
    });
    if let Some(s) = &scaling {
        summary.push_str(&format!(
            "; from 1 job to {} (time with 1 / time with more): restore {:.2}x, pg_restore {:.2}x, copy {:.2}x, pgcopydb {:.2}x",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            s["restore_ours"].as_f64().unwrap_or(f64::NAN),
            s["restore_pg_restore"].as_f64().unwrap_or(f64::NAN),
            s["copy_ours"].as_f64().unwrap_or(f64::NAN),
            s["copy_pgcopydb"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    for table in ["plans", "customers", "events"] {
        let fractions: Vec<f64> = table_read.iter().filter(|(t, _)| t == table).map(|(_, f)| *f).collect();
        if !fractions.is_empty() {
            summary.push_str(&format!(
                "; restore_tables of {table} read {:.1}% of the stored backup (median)",
                median(&fractions) * 100.0
            ));
        }
    }
    let skew_json = match (skew_size, &skew_capture) {
        (Some((size, share)), Some((_, secs, rss, peer))) => {
            summary.push_str(&format!(
                "; skew {:.0} MB (events {:.0}%), captured once in {secs:.2} s vs pg_dump -Fc {peer:.2} s",
                size as f64 / 1e6,
                share * 100.0
            ));
            serde_json::json!({
                "database_bytes": size, "events_share": share, "capture_s": secs,
                "capture_agent_peak_rss_mib": rss, "pg_dump_fc_s": peer,
            })
        }
        _ => serde_json::Value::Null,
    };
    println!("{table}\n{summary}");
    let json = serde_json::json!({
        "date": chrono_now(),
        "command": format!(
            "make bench SCALE={scale} RUNS={runs} SKEW={} JOBS_SWEEP={}",
            u8::from(skew),
            u8::from(sweep)
        ),
        "machine": machine(),
        "scale": scale,
        "runs": runs,
        "database_bytes": db_size,
        "events_share": events_share,
        "stored_bytes_median": stored,
        "pg_dump_fc_bytes_median": dumped,
        "capture_mb_per_s": capture_mbps,
        "pgcopydb_split_tables_larger_than": split,
        "agent_peak_rss_max_mib": rss_max,
        "agent_peak_rss_target_mib": RSS_TARGET_MIB,
        "jobs_sweep": scaling,
        "skew": skew_json,
        "pairs": json_pairs,
        "table_markdown": table,
        "summary": summary,
        "restore_tables_read_fraction": table_read.iter().map(|(t, f)| serde_json::json!({"table": t, "fraction": f})).collect::<Vec<_>>(),
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
        "pgcopydb": String::from_utf8_lossy(&Command::new("pgcopydb").arg("--version").output().map(|o| o.stdout).unwrap_or_default()).lines().next().unwrap_or_default(),
    })
}
