//! Test data and comparisons: a small database with several kinds of
//! tables, reading backups back out of storage, and row-for-row checks.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::cluster::Cluster;

/// Several tables: keys and sequences, text, jsonb, bytea with zero bytes,
/// NULLs, an index, a foreign key, a view.
pub const SHOP: &str = r#"
CREATE TABLE customers (id bigserial PRIMARY KEY, email text UNIQUE NOT NULL, name text, score numeric(10,2));
INSERT INTO customers (email, name, score)
SELECT 'user' || g || '@example.com', CASE WHEN g % 7 = 0 THEN NULL ELSE initcap(md5(g::text)) END, (g * 1.37)::numeric(10,2)
FROM generate_series(1, 5000) g;
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers(id), placed_at timestamptz,
                     items jsonb, note text);
INSERT INTO orders (customer_id, placed_at, items, note)
SELECT 1 + g % 5000, timestamptz '2026-01-01' + g * interval '1 minute',
       jsonb_build_object('sku', 'SKU-' || (g % 97), 'qty', g % 5 + 1), repeat('n', g % 50)
FROM generate_series(1, 20000) g;
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE TABLE blobs (id int PRIMARY KEY, data bytea);
INSERT INTO blobs SELECT g, decode(md5(g::text) || '0000ff00', 'hex') FROM generate_series(1, 500) g;
CREATE TABLE empty_table (id int);
CREATE VIEW big_spenders AS SELECT c.email, count(*) AS n FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY 1;
SELECT setval('orders_id_seq', 123456);
"#;

/// A table `noise` of incompressible bytes: `rows` rows of `chunks` x 16
/// random bytes (`rows * chunks * 16` bytes in all).
pub fn noise(rows: u32, chunks: u32) -> String {
    format!(
        "CREATE TABLE noise AS SELECT g AS id, decode(string_agg(md5(random()::text || g || i), ''), 'hex') AS data
           FROM generate_series(1, {rows}) g, generate_series(1, {chunks}) i GROUP BY g"
    )
}

/// Create database `db` (any name) and fill it with `sql`.
pub fn create_db(c: &Cluster, db: &str, sql: &str) -> Result<()> {
    c.sql("postgres", &format!("CREATE DATABASE {}", ident(db)))?;
    c.sql(db, sql)?;
    Ok(())
}

/// `name` as an SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as an SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Per table: row count and an order-independent hash of the rows; plus
/// sequence values. Two databases with equal fingerprints hold the same data.
pub fn fingerprint(c: &Cluster, db: &str) -> Result<String> {
    let tables = c.sql(
        db,
        "SELECT string_agg(t, E'\\n' ORDER BY t) FROM (
            SELECT format('%I.%I', schemaname, tablename) AS t FROM pg_tables
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
            UNION ALL
            SELECT format('%I.%I', schemaname, matviewname) FROM pg_matviews) x",
    )?;
    let mut out = String::new();
    for t in tables.lines().filter(|l| !l.is_empty()) {
        let line = c.sql(
            db,
            &format!("SELECT '{t} ' || count(*) || ' ' || coalesce(md5(string_agg(md5(x::text), '' ORDER BY md5(x::text))), '-') FROM {t} x"),
        )?;
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&c.sql(
        db,
        "SELECT coalesce(string_agg(format('%I.%I=%s', schemaname, sequencename, last_value), ' ' ORDER BY schemaname, sequencename), '') FROM pg_sequences",
    )?);
    out.push('\n');
    out.push_str(&c.sql(
        db,
        "SELECT coalesce(string_agg(indexname, ' ' ORDER BY indexname), '') FROM pg_indexes WHERE schemaname = 'public'",
    )?);
    Ok(out)
}

/// Wait until transfer `id` ends; its final status.
pub fn wait(c: &Cluster, id: &str, patience: Duration) -> Result<String> {
    let deadline = Instant::now() + patience;
    loop {
        let s = c.sql("postgres", &format!("SELECT status FROM backups.transfers WHERE name = '{id}'"))?;
        if ["completed", "failed", "cancelled", "expired"].contains(&s.as_str()) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("{id} still {s:?} after {patience:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until `sql` returns `want`.
pub fn wait_for(c: &Cluster, sql: &str, want: &str, patience: Duration) -> Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        let got = c.sql("postgres", sql)?;
        if got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{sql}: {got:?}, not {want:?}, after {patience:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The folder cluster `c`'s backups are stored under, below the storage
/// prefix: its system identifier.
pub fn home(c: &Cluster) -> String {
    c.sql("postgres", "SELECT system_identifier FROM pg_catalog.pg_control_system()").expect("the system identifier")
}

/// A manifest's bytes after an edit, its own checksum made to match again
/// (as someone who can write storage could): what the checksum over its
/// canonical form (keys sorted, no spaces) says.
pub fn reseal(manifest: &mut serde_json::Value) -> Vec<u8> {
    let o = manifest.as_object_mut().expect("a manifest is an object");
    o.remove("manifest_sha256");
    let sum = sha256_hex(&serde_json::to_vec(&manifest).unwrap());
    manifest["manifest_sha256"] = serde_json::Value::String(sum);
    serde_json::to_vec_pretty(&manifest).unwrap()
}

/// The manifest of attempt `attempt` of a backup stored under `root`
/// (file:// storage): `manifest.json`, or `manifest-N.json` for a retry.
pub fn manifest(root: &Path, key_folder: &str, attempt: u32) -> Result<serde_json::Value> {
    let name = if attempt > 1 { format!("manifest-{attempt}.json") } else { "manifest.json".into() };
    let text = std::fs::read(root.join(key_folder).join(&name)).with_context(|| format!("reading {name}"))?;
    Ok(serde_json::from_slice(&text)?)
}

/// Decompress a backup stored under `root` into `out` (a `.dump` file for
/// custom format, a directory for directory format), checking every file's
/// SHA-256 against the manifest. Returns the path to give pg_restore.
pub fn materialise(root: &Path, manifest: &serde_json::Value, out: &Path) -> Result<std::path::PathBuf> {
    let files = manifest["files"].as_array().context("files")?;
    let format = manifest["format"].as_str().context("format")?;
    let target = if format == "custom" { out.join("backup.dump") } else { out.join("dump") };
    if format != "custom" {
        std::fs::create_dir_all(&target)?;
    }
    for f in files {
        let stored = std::fs::read(root.join(f["path"].as_str().unwrap()))?;
        assert_eq!(sha256_hex(&stored), f["sha256"].as_str().unwrap(), "checksum of {}", f["path"]);
        let plain = zstd::decode_all(&stored[..])?;
        assert_eq!(plain.len() as u64, f["size"].as_u64().unwrap());
        let dest = if format == "custom" { target.clone() } else { target.join(f["name"].as_str().unwrap()) };
        std::fs::write(dest, plain)?;
    }
    Ok(target)
}

/// `pg_restore --no-acl --no-owner -d db path` (the user's own command).
pub fn pg_restore(c: &Cluster, db: &str, path: &Path) -> Result<()> {
    let out = Command::new(c.program("pg_restore"))
        .args(["--no-acl", "--no-owner", "--exit-on-error", "-d", &c.connstr(db)])
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!("pg_restore failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `pg_dump --schema-only --no-owner --no-acl`, normalised only for what
/// legitimately differs between two databases: comments, blank lines, and
/// the random `\restrict` keys newer pg_dump versions print.
pub fn schema(c: &Cluster, db: &str) -> Result<String> {
    let out = Command::new(c.program("pg_dump"))
        .args(["--schema-only", "--no-owner", "--no-acl", "-d", &c.connstr(db)])
        .output()?;
    if !out.status.success() {
        bail!("pg_dump --schema-only: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            !l.is_empty() && !l.starts_with("--") && !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict")
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Large objects: OIDs and a hash of each one's content.
pub fn large_objects(c: &Cluster, db: &str) -> Result<String> {
    c.sql(db, "SELECT coalesce(string_agg(oid || '=' || md5(lo_get(oid)), ' ' ORDER BY oid), '') FROM pg_largeobject_metadata")
}

/// Lines only in `a` and only in `b`, for a readable failure.
pub fn diff(a: &str, b: &str) -> String {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out = String::new();
    for l in &la {
        if !lb.contains(l) {
            out.push_str(&format!("- {l}\n"));
        }
    }
    for l in &lb {
        if !la.contains(l) {
            out.push_str(&format!("+ {l}\n"));
        }
    }
    if out.is_empty() && a != b {
        out.push_str("(same lines, different order)\n");
    }
    out
}

/// Everything a round trip must keep: schema, data, sequences, large objects.
pub fn assert_same_database(c: &Cluster, source: &str, copy: &str, what: &str) {
    let (sa, sb) = (schema(c, source).unwrap(), schema(c, copy).unwrap());
    assert!(sa == sb, "{what}: schema differs (- {source}, + {copy}):\n{}", diff(&sa, &sb));
    let (fa, fb) = (fingerprint(c, source).unwrap(), fingerprint(c, copy).unwrap());
    assert!(fa == fb, "{what}: data differs (- {source}, + {copy}):\n{}", diff(&fa, &fb));
    let (la, lb) = (large_objects(c, source).unwrap(), large_objects(c, copy).unwrap());
    assert!(la == lb, "{what}: large objects differ:\n- {la}\n+ {lb}");
}
