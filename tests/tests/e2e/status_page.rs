//! The agent's status page (`GET /` on `--listen`, linked by
//! `backups.status_url()`): refused unless signed, served with its headers,
//! every database's name escaped, and rendered by a real browser (headless
//! Chromium) into a screenshot with its charts.
//!
//! With PGBACKUPS_SCREENSHOT_OUT set, the screenshot is copied there (that
//! is how docs/status-page.png is made).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::{free_port, Cluster};
use pgbackups_e2e::data::{create_db, literal, noise, wait, wait_for, SHOP};
use pgbackups_e2e::env::capture;

const PATIENCE: Duration = Duration::from_secs(90);
const SECRET: &str = "e2e-link-secret-0123456789";
/// A database name that is also HTML: it must only ever appear escaped.
const ODD: &str = "<b>&\"odd'";
const ODD_ESCAPED: &str = "&lt;b&gt;&amp;&quot;odd'";

struct Fetched {
    code: String,
    headers: String,
    body: String,
}

/// GET with the real curl: status, headers (lower-cased) and body.
fn get(url: &str, work: &Path) -> Fetched {
    let (h, b) = (work.join("headers"), work.join("body"));
    let _ = std::fs::remove_file(&b);
    let o = Command::new("curl")
        .args(["-s", "--max-time", "30", "-D"])
        .arg(&h)
        .arg("-o")
        .arg(&b)
        .args(["-w", "%{http_code}", url])
        .output()
        .unwrap();
    Fetched {
        code: String::from_utf8_lossy(&o.stdout).to_string(),
        headers: std::fs::read_to_string(&h).unwrap_or_default().to_ascii_lowercase(),
        body: std::fs::read_to_string(&b).unwrap_or_default(),
    }
}

/// Headless Chromium with its own profile, killed (its whole process
/// group) after 60 seconds.
fn chromium(profile: &Path, args: &[&str]) -> Output {
    let mut child = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("chromium (scripts/deps.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Read stdout on a thread, so that a large DOM cannot block the child.
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).ok();
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            panic!("chromium {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = reader.join().unwrap();
    let mut stderr = Vec::new();
    std::io::Read::read_to_end(child.stderr.as_mut().unwrap(), &mut stderr).ok();
    // Whatever chromium left behind in its group.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    Output { status, stdout, stderr }
}

/// `sql` in postgres as `role`: its output, or its error.
fn sql_as(c: &Cluster, role: &str, sql: &str) -> Result<String, String> {
    let o = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h", "127.0.0.1", "-p", &c.port.to_string()])
        .args(["-U", role, "-d", "postgres", "-c", sql])
        .output()
        .unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim_end().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).to_string())
    }
}

#[test]
fn the_status_page_is_signed_escaped_and_renders_its_charts_in_a_browser() {
    let port = free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let c = Cluster::start_with(&[
        &format!("backups.link_base_url = '{base}'"),
        &format!("backups.link_secret = '{SECRET}'"),
    ])
    .unwrap();
    let store = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let agent = Agent::start(
        &c.url("postgres"),
        &format!("file://{}", store.path().display()),
        &["--listen", &listen, "--link-secret", SECRET],
        &[],
    )
    .unwrap();

    // A few databases with histories: shop grows between its captures,
    // analytics' are two days old (late), inventory is scheduled but never
    // captured, and one name is HTML.
    create_db(&c, "shop", SHOP).unwrap();
    for round in 0..4 {
        if round > 0 {
            c.sql("shop", &format!("INSERT INTO orders (customer_id, placed_at, items, note) SELECT 1 + g % 5000, now(), '{{}}', repeat('x', 200) FROM generate_series(1, {}) g", 15000 * round)).unwrap();
        }
        capture(&c, &literal("shop"));
    }
    create_db(&c, "analytics", &noise(200, 64)).unwrap();
    for round in 0..3 {
        if round > 0 {
            // Fresh random bytes (a copy of the old ones would compress away).
            c.sql("analytics", &noise(200 * round, 64).replace("TABLE noise", &format!("TABLE noise{round}"))).unwrap();
        }
        capture(&c, &literal("analytics"));
    }
    create_db(&c, ODD, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g").unwrap();
    capture(&c, &literal(ODD));
    create_db(&c, "inventory", "CREATE TABLE items (id int)").unwrap();
    c.sql("postgres", "SELECT backups.schedule('daily 02:00', 'inventory')").unwrap();
    // Spread the histories over days, as a week of daily captures would be
    // (the latest of shop's stays now; analytics' all end two days ago).
    c.sql(
        "postgres",
        "UPDATE backups.transfers t SET started_at = t.started_at - d.shift, finished_at = t.finished_at - d.shift
           FROM (SELECT id, CASE WHEN database = 'analytics' THEN 2 ELSE 0 END * interval '1 day'
                            + (row_number() OVER (PARTITION BY database ORDER BY finished_at DESC) - 1) * interval '1 day'
                            + (random() * 20) * interval '1 minute' AS shift
                   FROM backups.transfers WHERE kind = 'capture' AND status = 'completed') d
          WHERE d.id = t.id AND NOT (t.database = 'shop' AND d.shift < interval '1 day')",
    )
    .unwrap();
    // And a capture that fails just now: its exclude pattern matches no table.
    let failed =
        c.sql("postgres", "SELECT backups.capture('analytics', exclude_table_data => ARRAY['audit_log'])").unwrap();
    assert_eq!(wait(&c, &failed, PATIENCE).unwrap(), "failed");
    // And one running, for as long as a lock holds its pg_dump.
    let mut locker = c.client("shop").unwrap();
    locker.batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE").unwrap();
    let running = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    wait_for(&c, &format!("SELECT status FROM backups.transfers WHERE name = '{running}'"), "running", PATIENCE)
        .unwrap();

    let work = tempfile::tempdir().unwrap();

    // Unsigned, tampered or not ours: 403, and nothing more.
    for url in [format!("{base}/"), format!("{base}/?expires=99999999999&signature=00")] {
        let r = get(&url, work.path());
        assert_eq!(r.code, "403", "{url}: {}", agent.log_text());
        assert!(!r.body.contains("shop"), "{}", r.body);
    }
    let url = c.sql("postgres", "SELECT backups.status_url()").unwrap();
    assert!(url.starts_with(&format!("{base}/?expires=")), "{url}");
    let sig_at = url.find("signature=").unwrap() + "signature=".len();
    let mut tampered = url.clone();
    tampered.replace_range(sig_at..sig_at + 1, if &url[sig_at..sig_at + 1] == "0" { "1" } else { "0" });
    assert_eq!(get(&tampered, work.path()).code, "403");
    // The signature is over "/" and its expiry: a later expiry does not pass.
    let exp_at = url.find("expires=").unwrap() + "expires=".len();
    let mut later = url.clone();
    later.replace_range(exp_at..exp_at + 1, "9");
    assert_eq!(get(&later, work.path()).code, "403");
    // A download link's signature is not a status page's.
    let b = c.sql("postgres", "SELECT name FROM backups.transfers WHERE database = 'shop' AND status = 'completed' ORDER BY id DESC LIMIT 1").unwrap();
    let dl = c.sql("postgres", &format!("SELECT backups.url('{b}')")).unwrap();
    assert_eq!(get(&format!("{base}/?{}", dl.split_once('?').unwrap().1), work.path()).code, "403");
    // An agent without a metrics token serves no /metrics at all.
    assert_eq!(get(&format!("{base}/metrics"), work.path()).code, "404");

    // Signed: the page, with its headers.
    let r = get(&url, work.path());
    assert_eq!(r.code, "200", "{}", agent.log_text());
    for h in [
        "content-type: text/html; charset=utf-8",
        "cache-control: no-store",
        "referrer-policy: no-referrer",
        "content-security-policy: default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    ] {
        assert!(r.headers.contains(h), "{h} in {}", r.headers);
    }
    let page = &r.body;
    assert!(!page.contains("<script"), "no JavaScript");
    for db in ["shop", "analytics", "inventory"] {
        assert!(page.contains(&format!("<td>{db}</td>")), "{db}: {page}");
    }
    assert!(page.contains(r#"<span class="status ok">ok</span>"#), "{page}");
    assert!(page.contains(r#"<span class="status late">late</span>"#), "{page}");
    assert!(page.contains(r#"<span class="status never">never</span>"#), "{page}");
    assert!(page.contains("0 queued, 1 running."), "{page}");
    assert!(page.contains(&format!("<td>{running} <span class=\"muted\">capture</span></td><td>shop</td>")), "{page}");
    assert!(
        page.contains(&format!(r#"<span title="{failed}: "#)) && page.contains("audit_log"),
        "the last failure: {page}"
    );
    // Two charts per captured database; a circle per capture in each.
    assert_eq!(page.matches("<svg ").count(), 6, "{page}");
    assert_eq!(page.matches("<circle ").count(), 2 * (4 + 3 + 1), "{page}");
    let shop_chart = &page[page.find(r#"aria-label="shop: stored size""#).expect("shop's size chart")..];
    let shop_chart = &shop_chart[..shop_chart.find("</svg>").unwrap()];
    assert_eq!(shop_chart.matches("<circle ").count(), 4, "{shop_chart}");
    // The odd name, only ever escaped.
    assert!(!page.contains(ODD), "{page}");
    assert!(!page.contains("<b>"), "{page}");
    assert!(page.contains(&format!("<td>{ODD_ESCAPED}</td>")), "{page}");
    assert!(page.contains(&format!("<h3>{ODD_ESCAPED}</h3>")), "{page}");

    // Only admins get a link.
    c.sql("postgres", "CREATE ROLE alice LOGIN IN ROLE backups_user; CREATE ROLE ada LOGIN IN ROLE backups_admin")
        .unwrap();
    let err = sql_as(&c, "alice", "SELECT backups.status_url()").unwrap_err();
    assert!(err.contains("permission denied"), "{err}");
    let ada = sql_as(&c, "ada", "SELECT backups.status_url()").unwrap();
    assert_eq!(get(&ada, work.path()).code, "200", "an admin's link works");

    // A real browser renders it: the DOM it built has the charts, and the screenshot is not blank.
    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(profile.path(), &["--dump-dom", &url]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.status.success(), "{}", String::from_utf8_lossy(&dom.stderr));
    assert!(dom_text.contains("<svg"), "{dom_text}");
    assert_eq!(dom_text.matches("<circle ").count(), 16, "{dom_text}");
    assert!(dom_text.contains(ODD_ESCAPED) && !dom_text.contains("<b>"), "{dom_text}");
    let png = work.path().join("status.png");
    let shot = chromium(profile.path(), &["--window-size=1280,1600", &format!("--screenshot={}", png.display()), &url]);
    assert!(shot.status.success(), "{}", String::from_utf8_lossy(&shot.stderr));
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
    assert!(bytes.len() > 30_000, "a screenshot of {} bytes is blank", bytes.len());
    if let Some(out) = std::env::var_os("PGBACKUPS_SCREENSHOT_OUT") {
        std::fs::copy(&png, &out).unwrap();
    }

    locker.batch_execute("ROLLBACK").unwrap();
    assert_eq!(wait(&c, &running, PATIENCE).unwrap(), "completed");

    // The control database down: 503, said plainly.
    c.stop_server("fast").unwrap();
    let r = get(&url, work.path());
    assert_eq!(r.code, "503", "{}", agent.log_text());
    assert!(r.body.contains("control database"), "{}", r.body);
}
