//! Encryption at rest with age, end to end: an agent with `--encrypt-to`
//! leaves no plain byte in storage (custom and directory format, the
//! manifest too), restores, links and `pgbackups download` give the data
//! back with its `--identity-file`, an agent without the matching identity
//! fails clearly, and a key rotation keeps old backups readable as long as
//! the old identity is kept.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use age::secrecy::ExposeSecret;
use pgbackups_e2e::agent::{self, Agent};
use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{fingerprint, wait, SHOP};
use pgbackups_e2e::env::{capture, TestEnv};
use pgbackups_e2e::os::files_under;

const PATIENCE: Duration = Duration::from_secs(90);
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// An identity file as age-keygen writes it, and its recipient.
fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = age::x25519::Identity::generate();
    let public = key.to_public().to_string();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("# created: by the e2e test\n# public key: {public}\n{}\n", key.to_string().expose_secret()),
    )
    .unwrap();
    (path, public)
}

/// A distinctive value nobody else writes: 48 random hex characters.
fn canary() -> String {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)).unwrap();
    format!("canary-{}", hex::encode(bytes))
}

/// Restore `b` into `target`; its final status and error.
fn restore(c: &Cluster, b: &str, target: &str) -> (String, String) {
    let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', '{target}', '{target}')")).unwrap();
    let status = wait(c, &r, PATIENCE).unwrap();
    let error =
        c.sql("postgres", &format!("SELECT coalesce(error, '') FROM backups.transfers WHERE name = '{r}'")).unwrap();
    (status, error)
}

fn info(c: &Cluster, b: &str, field: &str) -> String {
    c.sql(
        "postgres",
        &format!("SELECT coalesce(string_agg(value, ' '), '') FROM backups.info('{b}') WHERE field = '{field}'"),
    )
    .unwrap()
}

/// Every stored file under `root` is age-encrypted, and neither its bytes
/// nor what they would decompress to hold `canary`. Returns the files.
fn assert_all_encrypted(root: &Path, canary: &str) -> Vec<PathBuf> {
    let files = files_under(root);
    assert!(!files.is_empty(), "nothing stored under {}", root.display());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let name = f.display().to_string();
        assert!(bytes.starts_with(AGE_MAGIC), "{name} is not age-encrypted: {:?}", &bytes[..bytes.len().min(24)]);
        assert!(!bytes.starts_with(ZSTD_MAGIC), "{name} is plain zstd");
        assert!(name.ends_with(".age"), "{name}");
        assert!(!contains(&bytes, canary.as_bytes()), "{name} holds the canary");
        if let Ok(plain) = zstd::decode_all(&bytes[..]) {
            assert!(!contains(&plain, canary.as_bytes()), "{name} decompresses to the canary");
        }
        assert!(!contains(&bytes, b"\"files\""), "{name} holds a plain manifest");
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn start_agent(c: &Cluster, store: &Path, args: &[&str], env: &[(&str, &str)]) -> Agent {
    Agent::start(&c.url("postgres"), &format!("file://{}", store.display()), args, env).unwrap()
}

fn download(c: &Cluster, store: &Path, work: &Path, args: &[&str]) -> std::process::Output {
    Command::new(agent::binary())
        .args(["download", "--database-url", &c.url("postgres")])
        .arg("--storage")
        .arg(format!("file://{}", store.display()))
        .args(args)
        .current_dir(work)
        .output()
        .unwrap()
}

#[test]
fn encrypted_captures_store_no_plain_byte_and_come_back_identical() {
    let secret = canary();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keypair(keys.path(), "key.txt");
    let key_arg = key.display().to_string();
    let TestEnv { c, store, agent, .. } = TestEnv::new()
        .db(
            "shop",
            &format!(
                "{SHOP}; CREATE TABLE canary (v text); INSERT INTO canary SELECT '{secret}' FROM generate_series(1, 3)"
            ),
        )
        .links()
        .args(&["--encrypt-to", &public, "--identity-file", &key_arg])
        .start();

    let custom = capture(&c, "'shop'");
    let parallel = capture(&c, "'shop', jobs => 2");
    let files = assert_all_encrypted(store.path(), &secret);
    // The dump, the manifests, and a directory-format dump's files.
    assert!(files.iter().any(|f| f.ends_with(format!("shop/{custom}/backup.dump.zst.age"))), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with(format!("shop/{parallel}/manifest.json.age"))), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with(format!("shop/{parallel}/dump/toc.dat.zst.age"))), "{files:?}");
    assert!(files.len() > 4, "{files:?}");
    for b in [&custom, &parallel] {
        assert_eq!(info(&c, b, "encryption"), format!("age, to {public}"));
    }

    // Restores decrypt: both formats give the same data back.
    for (b, target) in [(&custom, "from_custom"), (&parallel, "from_parallel")] {
        c.sql("postgres", &format!("CREATE DATABASE {target}")).unwrap();
        let (status, error) = restore(&c, b, target);
        assert_eq!(status, "completed", "{b}: {error}\n{}", agent.log_text());
        assert_eq!(fingerprint(&c, target).unwrap(), fingerprint(&c, "shop").unwrap(), "{b}");
        // And a verification reads the sealed manifest's contents and
        // compares them with the decrypted backup restored.
        let v = c.sql("postgres", &format!("SELECT backups.verify('{b}')")).unwrap();
        let status = pgbackups_e2e::data::wait(&c, &v, PATIENCE).unwrap();
        let log = c
            .sql(
                "postgres",
                &format!("SELECT string_agg(value, E'\\n') FROM backups.info('{v}') WHERE field IN ('log', 'error')"),
            )
            .unwrap();
        assert_eq!(status, "completed", "{log}");
        assert!(log.contains("verified:"), "{log}");
    }

    // A link serves a plain dump that pg_restore reads.
    let work = tempfile::tempdir().unwrap();
    let url = c.sql("postgres", &format!("SELECT backups.url('{custom}')")).unwrap();
    let file = work.path().join("link.dump");
    let o = Command::new("curl").args(["-s", "-f", "-o"]).arg(&file).arg(&url).output().unwrap();
    assert!(o.status.success(), "curl: {}", agent.log_text());
    let list = Command::new(c.program("pg_restore")).arg("--list").arg(&file).output().unwrap();
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    assert!(String::from_utf8_lossy(&list.stdout).contains("TABLE DATA public canary"));

    // pgbackups download decrypts with --identity-file, and says what it
    // needs without one.
    let o = download(&c, store.path(), work.path(), &[&custom, "-o", "mine.dump", "--identity-file", &key_arg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(work.path().join("mine.dump")).unwrap().starts_with(b"PGDMP"));
    let o = download(&c, store.path(), work.path(), &[&parallel, "-o", "nokey.dir"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&public) && err.contains("--identity-file"), "{err}");
    assert!(!work.path().join("nokey.dir").exists());
}

#[test]
fn keys_rotate_and_a_backup_without_its_identity_fails_naming_its_recipients() {
    let (c, _store) = TestEnv::new().db("shop", SHOP).without_agent();
    for t in ["old_target", "new_target", "new_again", "old_refused"] {
        c.sql("postgres", &format!("CREATE DATABASE {t}")).unwrap();
    }
    let keys = tempfile::tempdir().unwrap();
    let (key_a, public_a) = keypair(keys.path(), "a.txt");
    let (key_b, public_b) = keypair(keys.path(), "b.txt");
    let (a, b) = (key_a.display().to_string(), key_b.display().to_string());
    let store = tempfile::tempdir().unwrap();

    // Options are checked before the agent starts.
    let o = Command::new(agent::binary())
        .args(["agent", "--database-url", &c.url("postgres"), "--encrypt-to", "age1notarecipient"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"age1notarecipient\" is not an age X25519 recipient"));
    let o = Command::new(agent::binary())
        .args(["agent", "--database-url", &c.url("postgres"), "--identity-file", &b.replace("b.txt", "none.txt")])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("reading the identity file"));

    // Key A.
    let mut agent = start_agent(&c, store.path(), &["--encrypt-to", &public_a, "--identity-file", &a], &[]);
    let old = capture(&c, "'shop'");
    agent.terminate(Duration::from_secs(30)).unwrap();

    // Rotated to B, keeping A's identity (from the environment, comma-separated).
    let ids = format!("{a},{b}");
    let mut agent = start_agent(
        &c,
        store.path(),
        &[],
        &[("PGBACKUPS_ENCRYPT_TO", public_b.as_str()), ("PGBACKUPS_IDENTITY_FILE", ids.as_str())],
    );
    let new = capture(&c, "'shop', jobs => 2");
    assert_eq!(info(&c, &old, "encryption"), format!("age, to {public_a}"));
    assert_eq!(info(&c, &new, "encryption"), format!("age, to {public_b}"));
    for (backup, target) in [(&old, "old_target"), (&new, "new_target")] {
        let (status, error) = restore(&c, backup, target);
        assert_eq!(status, "completed", "{backup}: {error}\n{}", agent.log_text());
        assert_eq!(fingerprint(&c, target).unwrap(), fingerprint(&c, "shop").unwrap(), "{backup}");
    }
    agent.terminate(Duration::from_secs(30)).unwrap();

    // B alone: the new backup restores, the old one fails clearly and
    // leaves its target as it was.
    c.sql("old_refused", "CREATE TABLE untouched (x int); INSERT INTO untouched VALUES (42)").unwrap();
    let agent = start_agent(&c, store.path(), &["--identity-file", &b], &[]);
    let (status, error) = restore(&c, &new, "new_again");
    assert_eq!(status, "completed", "{error}\n{}", agent.log_text());
    assert_eq!(fingerprint(&c, "new_again").unwrap(), fingerprint(&c, "shop").unwrap());
    let (status, error) = restore(&c, &old, "old_refused");
    assert_eq!(status, "failed", "{}", agent.log_text());
    assert!(error.contains(&public_a), "{error}");
    assert!(!error.contains(&public_b), "{error}");
    assert!(error.contains("--identity-file") && error.contains("b.txt"), "{error}");
    assert_eq!(c.sql("old_refused", "SELECT x FROM untouched").unwrap(), "42");
}
