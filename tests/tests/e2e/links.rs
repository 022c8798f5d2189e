//! Download links and `pgbackups download`, end to end with curl and the
//! standard pg_restore; restores from a link; links that must be refused.

use std::process::Command;
use std::time::Duration;

use pgbackups_e2e::agent::{self};
use pgbackups_e2e::cluster::{free_port, Cluster};
use pgbackups_e2e::data::{create_db, fingerprint, wait, SHOP};
use pgbackups_e2e::env::{capture, TestEnv, LINK_SECRET};

const PATIENCE: Duration = Duration::from_secs(90);

fn setup() -> TestEnv {
    // Restores from the agent's own links on loopback.
    TestEnv::new().db("shop", SHOP).links().args(&["--allow-private-urls"]).start()
}

/// curl -o; the HTTP status.
fn curl(url: &str, out: &std::path::Path) -> String {
    let o = Command::new("curl")
        .args(["-s", "-o"])
        .arg(out)
        .args(["-w", "%{http_code}", "--path-as-is", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn pg_restore(c: &Cluster, db: &str, args: &[&str], path: &std::path::Path) {
    c.sql("postgres", &format!("CREATE DATABASE {db}")).unwrap();
    let o = Command::new("pg_restore")
        .args(["--clean", "--if-exists", "--no-acl", "--no-owner", "-d", &c.connstr(db)])
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn url_then_curl_then_pg_restore_gives_identical_data() {
    let e = setup();
    let b = capture(&e.c, "'shop'");
    let url = e.c.sql("postgres", &format!("SELECT backups.url('{b}')")).unwrap();
    assert!(url.starts_with(&format!("{}/backups/{b}.dump?expires=", e.base())), "{url}");
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("latest.dump");
    assert_eq!(curl(&url, &file), "200", "{}", e.agent.log_text());
    pg_restore(&e.c, "from_link", &[], &file);
    assert_eq!(fingerprint(&e.c, "from_link").unwrap(), fingerprint(&e.c, "shop").unwrap());

    // A parallel backup comes as a tar of its directory.
    let p = capture(&e.c, "'shop', jobs => 2");
    let url = e.c.sql("postgres", &format!("SELECT backups.url('{p}')")).unwrap();
    assert!(url.contains(&format!("/backups/{p}.tar?")), "{url}");
    let tarball = work.path().join("p.tar");
    assert_eq!(curl(&url, &tarball), "200");
    let st = Command::new("tar").arg("xf").arg(&tarball).arg("-C").arg(work.path()).status().unwrap();
    assert!(st.success());
    pg_restore(&e.c, "from_tar", &["-Fd", "-j", "2"], &work.path().join(&p));
    assert_eq!(fingerprint(&e.c, "from_tar").unwrap(), fingerprint(&e.c, "shop").unwrap());
}

#[test]
fn restore_from_a_link_gives_identical_data() {
    let e = setup();
    create_db(&e.c, "staging", "CREATE TABLE leftovers (x int)").unwrap();
    for args in ["'shop'", "'shop', jobs => 2"] {
        let b = capture(&e.c, args);
        let url = e.c.sql("postgres", &format!("SELECT backups.url('{b}')")).unwrap();
        let r = e.c.sql("postgres", &format!("SELECT backups.restore('{url}', 'staging', 'staging')")).unwrap();
        assert_eq!(wait(&e.c, &r, PATIENCE).unwrap(), "completed", "{}", e.agent.log_text());
        assert_eq!(fingerprint(&e.c, "staging").unwrap(), fingerprint(&e.c, "shop").unwrap(), "{args}");
    }
}

#[test]
fn bad_links_are_refused_and_reveal_nothing() {
    let e = setup();
    let b = capture(&e.c, "'shop'");
    let url = e.c.sql("postgres", &format!("SELECT backups.url('{b}')")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("x");
    // Tampered signature, expiry, id.
    let sig_at = url.find("signature=").unwrap() + "signature=".len();
    let mut tampered = url.clone();
    let flip = if &url[sig_at..sig_at + 1] == "0" { "1" } else { "0" };
    tampered.replace_range(sig_at..sig_at + 1, flip);
    assert_eq!(curl(&tampered, &out), "403");
    assert!(!std::fs::read_to_string(&out).unwrap().contains("PGDMP"));
    let later = url.replace("expires=", "expires=9");
    assert_eq!(curl(&later, &out), "403");
    let other = url.replace(&format!("/{b}.dump"), "/b999.dump");
    assert_eq!(curl(&other, &out), "403");
    assert_eq!(curl(&format!("{}/backups/{b}.dump", e.base()), &out), "403");
    // Expired.
    let short = e.c.sql("postgres", &format!("SELECT backups.url('{b}', '1 second')")).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(curl(&short, &out), "403");
    // Validly signed, but for a backup that does not exist, or was deleted.
    let exp = chrono_like_now() + 600;
    let sig = pgbackups_core_sign("b999", exp);
    assert_eq!(curl(&format!("{}/backups/b999.dump?expires={exp}&signature={sig}", e.base()), &out), "404");
    e.c.sql("postgres", &format!("SELECT backups.delete('{b}')")).unwrap();
    assert_eq!(curl(&url, &out), "404");
    // Path traversal and other paths.
    for path in ["/backups/..%2F..%2Fetc%2Fpasswd", "/backups/../../etc/passwd", "/etc/passwd", "/backups/b001"] {
        let code = curl(&format!("{}{path}?expires={exp}&signature={sig}", e.base()), &out);
        assert!(code == "404" || code == "403", "{path}: {code}");
        assert!(!std::fs::read_to_string(&out).unwrap_or_default().contains("root:"));
    }
}

fn chrono_like_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Sign as the extension does (HMAC-SHA256 of "name\nexpires").
fn pgbackups_core_sign(name: &str, expires: i64) -> String {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(LINK_SECRET.as_bytes()).unwrap();
    m.update(format!("{name}\n{expires}").as_bytes());
    hex::encode(m.finalize().into_bytes())
}

#[test]
fn restore_from_a_url_that_serves_garbage_fails_and_leaves_the_target() {
    let e = setup();
    create_db(&e.c, "staging", "CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (42)").unwrap();
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("garbage.dump"), b"this is not a pg_dump archive at all\n".repeat(100)).unwrap();
    let port = free_port().unwrap();
    let mut server = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
        .arg(www.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let r =
        e.c.sql(
            "postgres",
            &format!("SELECT backups.restore('http://127.0.0.1:{port}/garbage.dump', 'staging', 'staging')"),
        )
        .unwrap();
    assert_eq!(wait(&e.c, &r, PATIENCE).unwrap(), "failed");
    let err = e.c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{r}'")).unwrap();
    assert!(err.contains("does not serve a pg_dump archive"), "{err}");
    assert_eq!(e.c.sql("staging", "SELECT x FROM keep_me").unwrap(), "42");
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn pgbackups_download_writes_latest_dump_then_latest_dump_1() {
    let e = setup();
    let b = capture(&e.c, "'shop'");
    let work = tempfile::tempdir().unwrap();
    let download = || {
        Command::new(agent::binary())
            .args(["download", "--database-url", &e.c.url("postgres")])
            .arg("--storage")
            .arg(format!("file://{}", e.store.path().display()))
            .current_dir(work.path())
            .output()
            .unwrap()
    };
    let o = download();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("{b} downloaded to latest.dump (sha256 verified)")));
    let o = download();
    assert!(o.status.success());
    assert!(work.path().join("latest.dump.1").exists());
    pg_restore(&e.c, "from_download", &[], &work.path().join("latest.dump"));
    assert_eq!(fingerprint(&e.c, "from_download").unwrap(), fingerprint(&e.c, "shop").unwrap());
    // A named backup to a named file; an unknown one is a clear error.
    let o = Command::new(agent::binary())
        .args(["download", &b, "-o", "mine.dump", "--database-url", &e.c.url("postgres")])
        .arg("--storage")
        .arg(format!("file://{}", e.store.path().display()))
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(o.status.success() && work.path().join("mine.dump").exists());
    let o = Command::new(agent::binary())
        .args(["download", "b999", "--database-url", &e.c.url("postgres")])
        .arg("--storage")
        .arg(format!("file://{}", e.store.path().display()))
        .current_dir(work.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("b999 is not a completed backup"));
}

/// curl's exit code and the HTTP status.
fn curl_exit(url: &str, out: &std::path::Path) -> (i32, String) {
    let o = Command::new("curl").args(["-s", "-o"]).arg(out).args(["-w", "%{http_code}", url]).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).to_string())
}

/// The biggest stored file of a backup.
fn biggest_object(dir: &std::path::Path) -> std::path::PathBuf {
    let mut files: Vec<_> = pgbackups_e2e::os::files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "zst"))
        .map(|p| (std::fs::metadata(&p).unwrap().len(), p))
        .collect();
    files.sort();
    files.pop().unwrap().1
}

#[test]
fn a_flipped_byte_is_refused_by_link_download_and_restore() {
    let e = setup();
    create_db(&e.c, "staging", "CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (42)").unwrap();
    for args in ["'shop'", "'shop', jobs => 2"] {
        let b = capture(&e.c, args);
        let url = e.c.sql("postgres", &format!("SELECT backups.url('{b}')")).unwrap();
        let victim = biggest_object(&e.store.path().join(pgbackups_e2e::data::home(&e.c)).join("shop").join(&b));
        let mut bytes = std::fs::read(&victim).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&victim, bytes).unwrap();

        // The link: never a clean, complete 200 response.
        let work = tempfile::tempdir().unwrap();
        let (code, http) = curl_exit(&url, &work.path().join("x"));
        assert!(code != 0 || http != "200", "{args}: the corrupt backup was served whole (curl {code}, HTTP {http})");

        // pgbackups download: exit 1, and no file (partial or not) left behind.
        let o = Command::new(agent::binary())
            .args(["download", &b, "-o", "got.dump", "--database-url", &e.c.url("postgres")])
            .arg("--storage")
            .arg(format!("file://{}", e.store.path().display()))
            .current_dir(work.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args}: {stderr}");
        let said = stderr.to_lowercase();
        assert!(said.contains("checksum") || said.contains("corrupt"), "{args}: {stderr}");
        let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("x")], "{args}: download left files behind");

        // A restore fails before the target is touched.
        let r = e.c.sql("postgres", &format!("SELECT backups.restore('{b}', 'staging', 'staging')")).unwrap();
        assert_eq!(wait(&e.c, &r, PATIENCE).unwrap(), "failed");
        assert_eq!(e.c.sql("staging", "SELECT x FROM keep_me").unwrap(), "42");
    }
}
