//! Backups that outlive their server: storage describes itself. The drill
//! (a cluster's data directory deleted; its backups listed, restored into a
//! brand-new cluster with their roles and database, and adopted there),
//! two clusters sharing one bucket, and what storage holds that is not a
//! finished backup (no manifest; an altered manifest).

use std::path::{Path, PathBuf};
use std::time::Duration;

use age::secrecy::ExposeSecret;
use pgbackups_e2e::agent::{shell, Agent};
use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{self, fingerprint, wait, wait_for, SHOP};
use pgbackups_e2e::env::{capture, log_of, TestEnv};
use pgbackups_e2e::s3::S3Server;

const PATIENCE: Duration = Duration::from_secs(120);
const STORAGE: &str = "s3://backups/pg";

/// An age identity file and its recipient.
fn keypair(dir: &Path) -> (PathBuf, String) {
    let key = age::x25519::Identity::generate();
    let public = key.to_public().to_string();
    let path = dir.join("key.txt");
    std::fs::write(&path, format!("{}\n", key.to_string().expose_secret())).unwrap();
    (path, public)
}

fn agent_on(c: &Cluster, s3: &S3Server, args: &[&str]) -> Agent {
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Agent::start(&c.url("postgres"), STORAGE, args, &env).unwrap()
}

/// `pgbackups ARGS` against the S3 server; its stdout, failing the test
/// (with its stderr) unless it exits 0.
fn ok(s3: &S3Server, args: &[&str]) -> String {
    let out = run(s3, args);
    assert!(out.status.success(), "pgbackups {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn run(s3: &S3Server, args: &[&str]) -> std::process::Output {
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    shell(args, &env)
}

/// `list --json` with storage alone: (id, database, readable) of each.
fn listed(s3: &S3Server, extra: &[&str]) -> Vec<(String, String, String)> {
    let mut args = vec!["list", "--storage", STORAGE, "--json"];
    args.extend(extra);
    let v: serde_json::Value = serde_json::from_str(&ok(s3, &args)).unwrap();
    let mut out: Vec<(String, String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["database"].as_str().unwrap().to_string(),
                r["readable"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

const OWNED: &str = r#"
CREATE TABLE ledger (id int PRIMARY KEY, note text);
INSERT INTO ledger SELECT g, 'entry ' || g FROM generate_series(1, 500) g;
"#;

#[test]
fn the_drill_a_lost_cluster_is_listed_restored_into_a_new_one_and_adopted() {
    let keys = tempfile::tempdir().unwrap();
    let (identity, recipient) = keypair(keys.path());
    let identity = identity.to_str().unwrap().to_string();
    let s3 = S3Server::start("backups").unwrap();
    let (old, _store) = TestEnv::new().db("shop", SHOP).without_agent();
    // The second database belongs to an ordinary role, with a setting of its own.
    old.sql("postgres", "CREATE ROLE keeper LOGIN; CREATE ROLE readers NOLOGIN; GRANT readers TO keeper").unwrap();
    old.sql("postgres", "CREATE DATABASE books OWNER keeper").unwrap();
    old.sql("postgres", "ALTER DATABASE books SET work_mem = '7MB'").unwrap();
    old.sql_as("keeper", "books", OWNED).unwrap();
    old.sql_as("keeper", "books", "GRANT SELECT ON ledger TO readers").unwrap();
    let old_id = data::home(&old);

    // Manual, scheduled and parallel captures, then an encrypted one.
    let mut agent = agent_on(&old, &s3, &["--cluster-name", "prod"]);
    let manual = capture(&old, "'books'");
    old.sql("postgres", "SELECT backups.schedule('daily 03:00', 'books')").unwrap();
    old.sql("postgres", "UPDATE backups.schedules SET next_run_at = now()").unwrap();
    wait_for(
        &old,
        "SELECT count(*) FROM backups.transfers WHERE name LIKE 'a%' AND status = 'completed'",
        "1",
        PATIENCE,
    )
    .unwrap();
    let parallel = capture(&old, "'shop', jobs => 2");
    // A pin: storage learns of it too.
    old.sql("postgres", "SELECT backups.keep('a001')").unwrap();
    wait_for(&old, "SELECT kept_stored FROM backups.transfers WHERE name = 'a001'", "t", PATIENCE).unwrap();
    agent.terminate(PATIENCE).unwrap();
    let mut agent = agent_on(&old, &s3, &["--cluster-name", "prod", "--encrypt-to", &recipient]);
    let sealed = capture(&old, "'books'");
    let books = fingerprint(&old, "books").unwrap();
    let shop = fingerprint(&old, "shop").unwrap();
    let history = old.sql("postgres", "SELECT string_agg(id, ' ' ORDER BY id) FROM backups.list()").unwrap();
    assert_eq!(history, format!("a001 {manual} {parallel} {sealed}"));

    // The server is lost: agent stopped, data directory gone.
    agent.terminate(PATIENCE).unwrap();
    old.stop_server("immediate").unwrap();
    std::fs::remove_dir_all(old.data()).unwrap();

    // Storage alone lists every backup; the encrypted one reads with its key.
    let all = listed(&s3, &[]);
    let ids: Vec<&str> = all.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, vec!["a001", manual.as_str(), parallel.as_str(), sealed.as_str()], "{all:?}");
    assert!(all.iter().any(|(id, _, r)| *id == sealed && r.contains("--identity-file")), "{all:?}");
    let with_key = listed(&s3, &["--identity-file", &identity]);
    assert!(with_key.iter().all(|(_, _, r)| r == "yes"), "{with_key:?}");
    assert_eq!(listed(&s3, &["--database", "shop"]).len(), 1);
    // By name once every manifest reads; by identifier in any case.
    assert_eq!(listed(&s3, &["--cluster", "prod", "--identity-file", &identity]).len(), 4);
    assert_eq!(listed(&s3, &["--cluster", &old_id]).len(), 4);
    // A name no backup has, or one two clusters share, is an error.
    assert!(!run(&s3, &["list", "--storage", STORAGE, "--cluster", "elsewhere"]).status.success());
    let info: serde_json::Value =
        serde_json::from_str(&ok(&s3, &["info", "a001", "--storage", STORAGE, "--json"])).unwrap();
    assert_eq!(info["owner"], "keeper");
    assert_eq!(info["kind"], "scheduled");
    assert_eq!(info["schedule"], "daily 03:00");
    assert!(info["cluster"].as_str().unwrap().contains(&old_id), "{info}");

    // A brand-new cluster: the latest backup of books, with --create.
    let new = Cluster::start().unwrap();
    let to = format!("{}/books", new.url("postgres").rsplit_once('/').unwrap().0);
    let restore = [
        "restore",
        "latest",
        "--database",
        "books",
        "--to",
        &to,
        "--confirm",
        "books",
        "--create",
        "--storage",
        STORAGE,
    ];
    let out = run(&s3, &restore);
    // Without the key, the latest (encrypted) backup cannot be read.
    assert!(!out.status.success(), "restored an encrypted backup without its key");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("identity-file"), "{said}");
    assert!(new.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'books'").unwrap() == "0");
    let said = run(&s3, &[&restore[..], &["--identity-file", &identity]].concat());
    assert!(said.status.success(), "{}", String::from_utf8_lossy(&said.stderr));
    let said = String::from_utf8_lossy(&said.stderr).to_string();
    assert!(
        said.contains("created roles: keeper, readers") || said.contains("created roles: readers, keeper"),
        "{said}"
    );
    assert!(said.contains("no password yet") && said.contains("keeper"), "{said}");
    assert_eq!(
        new.sql("postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'books'").unwrap(),
        "keeper"
    );
    assert_eq!(
        new.sql("postgres", "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = 'books' AND s.setrole = 0").unwrap(),
        "work_mem=7MB"
    );
    assert_eq!(new.sql("postgres", "SELECT pg_has_role('keeper', 'readers', 'MEMBER')").unwrap(), "t");
    assert_eq!(fingerprint(&new, "books").unwrap(), books);
    assert_eq!(new.sql_as("keeper", "books", "SELECT count(*) FROM ledger").unwrap(), "500");
    // Heroku's dumps carry no owners or grants: what was restored is the owner's.
    assert_eq!(new.sql("books", "SELECT tableowner FROM pg_tables WHERE tablename = 'ledger'").unwrap(), "keeper");
    assert_eq!(new.sql("books", "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgbackups%'").unwrap(), "0");

    // The new cluster adopts the old one's history.
    let control = new.url("postgres");
    let adopt = [
        "adopt",
        "--database-url",
        &control,
        "--storage",
        STORAGE,
        "--cluster",
        "prod",
        "--identity-file",
        &identity,
        "--json",
    ];
    let adopted = ok(&s3, &adopt);
    let adopted: serde_json::Value = serde_json::from_str(&adopted).unwrap();
    assert_eq!(adopted.as_array().unwrap().len(), 4, "{adopted}");
    assert!(adopted.as_array().unwrap().iter().all(|r| r["result"] == "adopted"), "{adopted}");
    let again = ok(&s3, &adopt);
    assert!(!again.contains("\"adopted\""), "adopted twice: {again}");
    assert_eq!(new.sql("postgres", "SELECT string_agg(id, ' ' ORDER BY id) FROM backups.list()").unwrap(), history);
    assert_eq!(new.sql("postgres", "SELECT database FROM backups.list() WHERE id = 'a001'").unwrap(), "books");
    assert_eq!(new.sql("postgres", "SELECT string_agg(id, ' ') FROM backups.list() WHERE kept").unwrap(), "a001");

    // An agent on the new cluster: the next capture gets the next free id,
    // and an adopted backup restores from SQL.
    let _agent = agent_on(&new, &s3, &["--identity-file", &identity]);
    let next = capture(&new, "'books'");
    assert_eq!(next, "b004");
    new.sql("postgres", "CREATE DATABASE shop_again").unwrap();
    let r = new.sql("postgres", &format!("SELECT backups.restore('{parallel}', 'shop_again', 'shop_again')")).unwrap();
    assert_eq!(wait(&new, &r, PATIENCE).unwrap(), "completed", "{}", log_of(&new, &r));
    assert_eq!(fingerprint(&new, "shop_again").unwrap(), shop);
    let r = new.sql("postgres", &format!("SELECT backups.restore('{sealed}', 'books', 'books')")).unwrap();
    assert_eq!(wait(&new, &r, PATIENCE).unwrap(), "completed", "{}", log_of(&new, &r));
    assert_eq!(fingerprint(&new, "books").unwrap(), books);
}

#[test]
fn clusters_sharing_a_bucket_list_and_adopt_only_their_own() {
    let s3 = S3Server::start("backups").unwrap();
    let (one, _s1) = TestEnv::new().db("shop", SHOP).without_agent();
    let (two, _s2) =
        TestEnv::new().db("shop", "CREATE TABLE other (x int); INSERT INTO other VALUES (2);").without_agent();
    let a1 = agent_on(&one, &s3, &["--cluster-name", "one"]);
    let a2 = agent_on(&two, &s3, &["--cluster-name", "two"]);
    // Both call theirs b001: neither overwrites the other's.
    assert_eq!(capture(&one, "'shop'"), "b001");
    assert_eq!(capture(&two, "'shop'"), "b001");
    drop((a1, a2));
    assert_eq!(listed(&s3, &[]).len(), 2);
    assert_eq!(listed(&s3, &["--cluster", "one"]).len(), 1);
    assert_eq!(listed(&s3, &["--cluster", &data::home(&two)]).len(), 1);
    // Two backups are b001: the verbs ask which.
    let out = run(&s3, &["info", "b001", "--storage", STORAGE]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cluster"), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value =
        serde_json::from_str(&ok(&s3, &["info", "b001", "--cluster", "two", "--storage", STORAGE, "--json"])).unwrap();
    assert_eq!(
        info["checksum"].as_str().unwrap(),
        two.sql("postgres", "SELECT checksum FROM backups.transfers WHERE name = 'b001'").unwrap()
    );

    // Cluster one loses its catalog (the extension dropped and made again):
    // adopt brings back its own backup, not cluster two's.
    let checksum = one.sql("postgres", "SELECT checksum FROM backups.transfers WHERE name = 'b001'").unwrap();
    one.sql("postgres", "DROP EXTENSION pg_backups; CREATE EXTENSION pg_backups").unwrap();
    let out = ok(&s3, &["adopt", "--database-url", &one.url("postgres"), "--storage", STORAGE]);
    assert!(out.contains("adopted"), "{out}");
    assert_eq!(
        one.sql("postgres", "SELECT string_agg(name || ' ' || checksum, ',') FROM backups.transfers").unwrap(),
        format!("b001 {checksum}")
    );
}

#[test]
fn a_half_written_backup_is_not_listed_and_an_altered_manifest_is_refused() {
    let s3 = S3Server::start("backups").unwrap();
    let (c, _store) = TestEnv::new().db("shop", SHOP).without_agent();
    let agent = agent_on(&c, &s3, &[]);
    let good = capture(&c, "'shop'");
    let altered = capture(&c, "'shop'");
    let parallel = capture(&c, "'shop', jobs => 2");
    drop(agent);
    let root = s3.root.join("backups/pg").join(data::home(&c)).join("shop");
    // A capture killed before its manifest: objects, no manifest.
    let half = root.join("b099");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::copy(root.join(&good).join("backup.dump.zst"), half.join("backup.dump.zst")).unwrap();
    // A manifest edited by hand (its database renamed), its checksum left.
    let path = root.join(&altered).join("manifest.json");
    let text =
        std::fs::read_to_string(&path).unwrap().replacen("\"database\": \"shop\"", "\"database\": \"elsewhere\"", 1);
    std::fs::write(&path, text).unwrap();
    // A directory-format backup one of whose files went missing.
    let dump = root.join(&parallel).join("dump");
    let victim =
        std::fs::read_dir(&dump).unwrap().map(|e| e.unwrap().path()).find(|p| !p.ends_with("toc.dat.zst")).unwrap();
    std::fs::remove_file(victim).unwrap();

    let all = listed(&s3, &[]);
    assert!(!all.iter().any(|(id, _, _)| id == "b099"), "a half-written backup is listed: {all:?}");
    let shown = all.iter().find(|(id, _, _)| *id == altered).unwrap();
    assert!(shown.2.contains("altered"), "{all:?}");
    let work = tempfile::tempdir().unwrap();
    let never = work.path().join("never.dump");
    let out = run(&s3, &["download", &altered, "--storage", STORAGE, "-o", never.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("altered"));
    assert!(std::fs::read_dir(work.path()).unwrap().next().is_none(), "a refused download left a file");

    // Adoption into a catalog that lost them: the good one only, the others
    // reported, and a non-zero exit.
    c.sql("postgres", "DROP EXTENSION pg_backups; CREATE EXTENSION pg_backups").unwrap();
    let out = run(&s3, &["adopt", "--database-url", &c.url("postgres"), "--storage", STORAGE]);
    assert!(!out.status.success(), "adopt exited 0 with refused backups");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(good.as_str()) && said.contains("refused"), "{said}");
    assert!(said.contains("not in storage"), "the missing file is not named: {said}");
    assert_eq!(c.sql("postgres", "SELECT string_agg(name, ' ') FROM backups.transfers").unwrap(), good);
    // The counters moved past every name found: the next capture
    // overwrites none of what storage holds.
    assert_eq!(c.sql("postgres", "SELECT backups.capture('shop')").unwrap(), "b004");
}

/// The manifest of `id` in file storage `root` (its folder under cluster
/// `c`'s, database `db`).
fn manifest_path(root: &Path, c: &Cluster, db: &str, id: &str) -> PathBuf {
    root.join(data::home(c)).join(db).join(id).join("manifest.json")
}

#[test]
fn a_crafted_manifest_creates_no_powers_and_runs_no_sql() {
    // Whoever can write storage writes manifests, and can make their own
    // checksum match: what --create makes of one is bounded all the same.
    let e = TestEnv::new().db("shop", SHOP).start();
    let (c, root) = (&e.c, e.store.path());
    let b = capture(c, "'shop'");
    let other = capture(c, "'shop'");
    let path = manifest_path(root, c, "shop", &b);
    let original: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let storage = e.storage();
    let shell_ok = |args: &[&str]| {
        let out = shell(args, &[]);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };

    // 1. A grant whose privilege is SQL: the manifest is refused.
    let mut m = original.clone();
    m["receiving"]["database"]["grants"] = serde_json::json!([
        {"grantee": null, "privilege": "CONNECT ON DATABASE shop TO PUBLIC; CREATE ROLE pwned SUPERUSER; --", "grantable": false}
    ]);
    std::fs::write(&path, data::reseal(&mut m)).unwrap();
    let (ok, said) = shell_ok(&["list", "--storage", &storage, "--json"]);
    assert!(ok && said.contains("altered"), "{said}");
    let new = Cluster::start().unwrap();
    let to = format!("{}/shop", new.url("postgres").rsplit_once('/').unwrap().0);
    let (ok, said) = shell_ok(&["restore", &b, "--to", &to, "--confirm", "shop", "--create", "--storage", &storage]);
    assert!(!ok && said.contains("altered"), "{said}");
    assert_eq!(new.sql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'pwned'").unwrap(), "0");

    // 2. Roles with powers, a password and memberships in the cluster's own
    //    roles: created plain, without them, and said so.
    let mut m = original.clone();
    let role = |name: &str, member_of: serde_json::Value| {
        serde_json::json!({"name": name, "superuser": true, "inherit": true, "create_role": true, "create_db": true,
                           "login": true, "replication": true, "bypass_rls": true, "connection_limit": -1,
                           "valid_until": null, "password": "md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                           "settings": ["session_preload_libraries=evil"], "member_of": member_of})
    };
    m["receiving"]["roles"] = serde_json::json!([
        role(
            "mallory",
            serde_json::json!([["pg_execute_server_program", false], ["postgres", true], ["helper", false]])
        ),
        role("helper", serde_json::json!([])),
    ]);
    m["receiving"]["database"]["owner"] = serde_json::json!("mallory");
    m["receiving"]["database"]["settings"] = serde_json::json!(["session_replication_role=replica", "work_mem=5MB"]);
    std::fs::write(&path, data::reseal(&mut m)).unwrap();
    let (ok, said) = shell_ok(&[
        "restore",
        &b,
        "--to",
        &to,
        "--confirm",
        "shop",
        "--create",
        "--storage",
        &storage,
        "--role-passwords",
    ]);
    assert!(ok, "{said}");
    assert!(said.contains("without SUPERUSER"), "{said}");
    assert_eq!(
        new.sql(
            "postgres",
            "SELECT string_agg(rolname || ':' || (rolsuper OR rolcreaterole OR rolreplication OR rolbypassrls), ',' ORDER BY rolname)
               FROM pg_roles WHERE rolname IN ('mallory', 'helper')"
        )
        .unwrap(),
        "helper:false,mallory:false"
    );
    // No membership in a role it did not create; the one it did, kept.
    assert_eq!(
        new.sql("postgres", "SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = 'mallory'").unwrap(),
        "helper"
    );
    // md5 verifiers from storage are kept only as given; superuser-only
    // settings are not made, ordinary ones are.
    assert_eq!(new.sql("postgres", "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = 'mallory'").unwrap(), "0");
    assert_eq!(
        new.sql("postgres", "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = 'shop' AND s.setrole = 0").unwrap(),
        "work_mem=5MB"
    );
    assert!(said.contains("session_replication_role"), "{said}");

    // 3. A manifest copied over another backup's: refused as moved.
    let mut m = original.clone();
    std::fs::write(manifest_path(root, c, "shop", &other), data::reseal(&mut m)).unwrap();
    let (ok, said) = shell_ok(&["info", &other, "--storage", &storage]);
    assert!(!ok && said.contains("altered or moved"), "{said}");
}
