//! `make bench-capture-cost`: what recording contents and encrypting cost a
//! capture. On bench/realistic.sql (database `shop`), each round captures
//! it, in custom format and with `jobs => 2`, with:
//! - `baseline`: an agent built from before contents were recorded
//!   (`BASELINE_BIN`; the Makefile builds it from `BASELINE_REV`);
//! - `contents`: this agent (every table tallied as the dump streams);
//! - `contents + age`: this agent with `--encrypt-to` (a key made by
//!   `age-keygen` for the run).
//!
//! The order of the variants rotates from round to round; each capture
//! runs in a fresh agent process. Medians, and each variant's ratio to the
//! baseline, are printed and written as JSON. The target: at most 1.10 (10%
//! added time) for both.
//!
//! Environment: SCALE (default 1: about 1 GB), RUNS (default 5), OUT
//! (default bench/capture-cost.json), BASELINE_BIN (without it, the
//! baseline rows are left out and the ratios are to `contents`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgbackups_e2e::agent::{self, Agent};
use pgbackups_e2e::cluster::Cluster;

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

struct Variant {
    name: &'static str,
    bin: PathBuf,
    args: Vec<String>,
    custom: Vec<f64>,
    jobs2: Vec<f64>,
}

/// One capture by a fresh agent: seconds from queueing to completed.
fn capture(c: &Cluster, store: &Path, v: &Variant, sql: &str) -> Result<f64> {
    let args: Vec<&str> = v.args.iter().map(String::as_str).collect();
    let mut a =
        Agent::start_binary(&v.bin, &[], &c.url("postgres"), &format!("file://{}", store.display()), &args, &[])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.sql("postgres", &format!("SELECT count(*) FROM backups.agents WHERE agent_id LIKE '%-{}'", a.pid()))? != "1"
    {
        if Instant::now() > deadline {
            bail!("{} did not start: {}", v.name, a.log_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut client = c.client("postgres")?;
    let t = Instant::now();
    let id: String = client.query_one(sql, &[])?.get(0);
    loop {
        let s: String = client.query_one("SELECT status FROM backups.transfers WHERE name = $1", &[&id])?.get(0);
        match s.as_str() {
            "completed" => break,
            "failed" | "cancelled" => bail!("{} {id} {s}: {}", v.name, a.log_text()),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    a.terminate(Duration::from_secs(30))?;
    Ok(secs)
}

/// A fresh age key pair for the run: (recipient, identity file).
fn age_key(dir: &Path) -> Result<String> {
    let file = dir.join("key.txt");
    let out = Command::new("age-keygen").arg("-o").arg(&file).output().context("age-keygen (package age)")?;
    if !out.status.success() {
        bail!("age-keygen: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(&file)?;
    text.lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .map(str::to_string)
        .context("no public key in age-keygen's output")
}

fn main() -> Result<()> {
    let scale: f64 = env_or("SCALE", 1.0);
    let runs: usize = env_or("RUNS", 5);
    let out_path = PathBuf::from(std::env::var("OUT").unwrap_or_else(|_| "bench/capture-cost.json".into()));
    let baseline = std::env::var_os("BASELINE_BIN").map(PathBuf::from);

    let c = Cluster::start_with(&["max_wal_size = '8GB'", "checkpoint_timeout = '30min'", "shared_buffers = '512MB'"])?;
    std::fs::write(c.data().join("postgresql.auto.conf"), "backups.keep_manual = 1000\n")?;
    c.sql("postgres", "SELECT pg_reload_conf()")?;
    c.sql("postgres", "CREATE DATABASE shop")?;
    let sql = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/realistic.sql");
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", &format!("scale={scale}"), "-d", &c.connstr("shop"), "-f"])
        .arg(&sql)
        .output()?;
    if !out.status.success() {
        bail!("generating shop: {}", String::from_utf8_lossy(&out.stderr));
    }
    c.sql("shop", "VACUUM ANALYZE")?;
    let size: i64 = c.sql("postgres", "SELECT pg_database_size('shop')")?.parse()?;
    eprintln!("capture-cost: shop is {:.0} MB", size as f64 / 1e6);

    let work = tempfile::Builder::new().prefix("pgbackups-capture-cost-").tempdir()?;
    let store = work.path().join("storage");
    let recipient = age_key(work.path())?;
    let mut variants = Vec::new();
    if let Some(bin) = &baseline {
        variants.push(Variant { name: "baseline", bin: bin.clone(), args: vec![], custom: vec![], jobs2: vec![] });
    }
    variants.push(Variant { name: "contents", bin: agent::binary(), args: vec![], custom: vec![], jobs2: vec![] });
    variants.push(Variant {
        name: "contents + age",
        bin: agent::binary(),
        args: vec!["--encrypt-to".into(), recipient],
        custom: vec![],
        jobs2: vec![],
    });
    let n = variants.len();
    for round in 0..runs {
        for k in 0..n {
            let i = (round + k) % n;
            eprintln!("capture-cost: round {} of {runs}, {}", round + 1, variants[i].name);
            let s = capture(&c, &store, &variants[i], "SELECT backups.capture('shop')")?;
            variants[i].custom.push(s);
            let s = capture(&c, &store, &variants[i], "SELECT backups.capture('shop', jobs => 2)")?;
            variants[i].jobs2.push(s);
            // Keep the disk from filling: the objects are not read back.
            let _ = std::fs::remove_dir_all(&store);
        }
    }

    let base = (median(&variants[0].custom), median(&variants[0].jobs2));
    let mut table =
        String::from("| variant | capture (s) | ratio | capture, jobs => 2 (s) | ratio |\n|---|---:|---:|---:|---:|\n");
    let mut rows = Vec::new();
    for v in &variants {
        let (c1, c2) = (median(&v.custom), median(&v.jobs2));
        table.push_str(&format!("| {} | {c1:.2} | {:.3} | {c2:.2} | {:.3} |\n", v.name, c1 / base.0, c2 / base.1));
        rows.push(serde_json::json!({
            "variant": v.name, "capture_s": v.custom, "capture_jobs2_s": v.jobs2,
            "capture_median_s": c1, "capture_jobs2_median_s": c2,
            "ratio_to_first": c1 / base.0, "ratio_jobs2_to_first": c2 / base.1,
        }));
    }
    println!("{table}");
    let json = serde_json::json!({
        "command": format!("make bench-capture-cost SCALE={scale} RUNS={runs}"),
        "database_bytes": size,
        "baseline_bin": baseline.map(|b| b.display().to_string()),
        "first_row_is": variants[0].name,
        "rows": rows,
        "table_markdown": table,
    });
    if let Some(d) = out_path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&json)?)?;
    eprintln!("capture-cost: wrote {}", out_path.display());
    Ok(())
}
