//! Watching the agent from outside: `/metrics` for Prometheus on the
//! `--listen` address, and webhooks told of each transfer's status, with
//! the real agent, a real cluster and HTTP servers made by the test.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::{free_port, Cluster};
use pgbackups_e2e::data::{wait, SHOP};
use pgbackups_e2e::env::TestEnv;

const PATIENCE: Duration = Duration::from_secs(90);
const SECRET: &str = "e2e-link-secret-0123456789";
const TOKEN: &str = "e2e-metrics-token-9876543210";

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// `GET path` on `addr`, with `Authorization: Bearer <token>` if given:
/// status line, content type and body.
fn get(addr: &str, path: &str, token: Option<&str>) -> std::io::Result<(String, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").to_string();
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    Ok((status, content_type, body.to_string()))
}

/// The agent's /metrics, once it answers.
fn scrape(addr: &str) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get(addr, "/metrics", Some(TOKEN)) {
            Ok((status, content_type, body)) if status.contains(" 200 ") => {
                assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
                return parse(&body);
            }
            other => assert!(Instant::now() < deadline, "no /metrics: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Parse the OpenMetrics text strictly (every line a HELP, TYPE or UNIT
/// descriptor or a sample, `# EOF` last), and check that prometheus-parse
/// reads the same samples.
fn parse(text: &str) -> Vec<Sample> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    let mut samples = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (kw, name) = (words.next().unwrap(), words.next().unwrap_or(""));
            assert!(["HELP", "TYPE", "UNIT"].contains(&kw) && is_name(name), "bad line {line:?}");
            if kw == "TYPE" {
                let t = words.next().unwrap_or("");
                assert!(["counter", "gauge", "histogram", "info"].contains(&t), "bad type in {line:?}");
            }
            continue;
        }
        samples.push(sample(line).unwrap_or_else(|| panic!("bad sample line {line:?} in\n{text}")));
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let plain = samples.iter().filter(|(n, _, _)| !n.ends_with("_bucket")).count();
    let theirs = scrape.samples.iter().filter(|s| !matches!(s.value, prometheus_parse::Value::Histogram(_))).count();
    assert_eq!(plain, theirs, "prometheus-parse reads another number of samples in\n{text}");
    samples
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{k="v",...} value`, label values with OpenMetrics' escapes.
fn sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if !is_name(name) {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = r.find('=')?;
            let key = &r[..eq];
            if !is_name(key) {
                return None;
            }
            r = r[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c @ ('"' | '\\') => value.push(c),
                        _ => return None,
                    },
                    c => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            r = &r[end + 1..];
            r = r.strip_prefix(',').unwrap_or(r);
        }
    }
    let value = rest.strip_prefix(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name.to_string(), labels, value))
}

/// The value of the sample `name` with (at least) `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.2)
}

fn start_listening_agent(c: &Cluster, store: &tempfile::TempDir, extra: &[&str]) -> (Agent, String) {
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let mut args =
        vec!["--listen", &addr, "--link-secret", SECRET, "--agent-id", "observer-1", "--metrics-token", TOKEN];
    args.extend_from_slice(extra);
    let agent = Agent::start(&c.url("postgres"), &format!("file://{}", store.path().display()), &args, &[]).unwrap();
    (agent, addr)
}

#[test]
fn metrics_parse_and_count_a_capture() {
    let (c, store) = TestEnv::new().db("shop", SHOP).without_agent();
    let (agent, addr) = start_listening_agent(&c, &store, &[]);

    let before = scrape(&addr);
    // Only a scraper with the token: without it, or with another, 401.
    for token in [None, Some("wrong"), Some("")] {
        let (status, _, body) = get(&addr, "/metrics", token).unwrap();
        assert!(status.contains(" 401 "), "{token:?}: {status}");
        assert!(!body.contains("pgbackups_"), "{body}");
    }
    let completed = [("kind", "capture"), ("outcome", "completed")];
    let done_before = value(&before, "pgbackups_transfers_total", &completed).unwrap_or(0.0);
    let info = [("agent_id", "observer-1"), ("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(value(&before, "pgbackups_agent_info", &info), Some(1.0), "{before:?}");
    assert_eq!(value(&before, "pgbackups_control_up", &[]), Some(1.0), "{before:?}");
    assert_eq!(value(&before, "pgbackups_last_success_timestamp_seconds", &[("database", "shop")]), None);

    let b = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    let finished_at: f64 = c
        .sql("postgres", &format!("SELECT extract(epoch FROM finished_at) FROM backups.transfers WHERE name = '{b}'"))
        .unwrap()
        .parse()
        .unwrap();

    // The supervisor counts after recording: give it a moment past the status.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = scrape(&addr);
        if value(&s, "pgbackups_transfers_total", &completed).unwrap_or(0.0) > done_before || Instant::now() > deadline
        {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(value(&after, "pgbackups_transfers_total", &completed), Some(done_before + 1.0), "{after:?}");
    let last = value(&after, "pgbackups_last_success_timestamp_seconds", &[("database", "shop")]).unwrap();
    assert!((last - finished_at).abs() < 1.0, "last success {last}, finished at {finished_at}");
    assert_eq!(value(&after, "pgbackups_database_health", &[("database", "shop"), ("status", "ok")]), Some(1.0));
    assert!(value(&after, "pgbackups_processed_bytes_total", &[("kind", "capture")]).unwrap() > 0.0, "{after:?}");
    assert!(value(&after, "pgbackups_stored_bytes_total", &[]).unwrap() > 0.0, "{after:?}");
    assert_eq!(value(&after, "pgbackups_transfer_duration_seconds_count", &[("kind", "capture")]), Some(1.0));
    assert_eq!(value(&after, "pgbackups_running_transfers", &[]), Some(0.0));
    assert_eq!(value(&after, "pgbackups_queue_pending", &[]), Some(0.0));
    assert_eq!(value(&after, "pgbackups_agent_info", &info), Some(1.0));

    // The control database down: the process's own series are still served.
    c.stop_server("fast").unwrap();
    let down = scrape(&addr);
    assert_eq!(value(&down, "pgbackups_control_up", &[]), Some(0.0), "{down:?}");
    assert_eq!(value(&down, "pgbackups_transfers_total", &completed), Some(done_before + 1.0));
    assert_eq!(value(&down, "pgbackups_queue_pending", &[]), None);
    c.start_server().unwrap();
}

/// What a webhook server received: request line and body, per request.
type Received = Arc<Mutex<Vec<(String, String)>>>;

/// An HTTP server that records each request and answers 200 (or, if
/// `hang`, accepts and never answers). Its address.
fn webhook_server(hang: bool) -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let received: Received = Arc::default();
    let r = received.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            if hang {
                held.push(stream);
                continue;
            }
            let r = r.clone();
            std::thread::spawn(move || {
                let _ = answer(stream, &r);
            });
        }
    });
    (addr, received)
}

fn answer(stream: TcpStream, received: &Received) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        received.lock().unwrap().push((request_line.trim_end().to_string(), String::from_utf8_lossy(&body).into()));
        (&stream).write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")?;
    }
}

/// The JSON bodies received so far, once there are `n`.
fn bodies(received: &Received, n: usize) -> Vec<(String, serde_json::Value)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = received.lock().unwrap().clone();
        if got.len() >= n || Instant::now() > deadline {
            return got.into_iter().map(|(l, b)| (l, serde_json::from_str(&b).expect("a JSON body"))).collect();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn webhooks_are_told_of_completed_and_failed_transfers() {
    let (c, store) = TestEnv::new().db("shop", SHOP).without_agent();
    let (addr, received) = webhook_server(false);
    let cfg = config(
        &store,
        &format!("[[webhook]]\nurl = \"http://{addr}/hooks/T0-secret-token?key=abc\"\nevents = [\"failed\", \"completed\"]\n"),
    );
    let (agent, _) = start_listening_agent(&c, &store, &["--config", &cfg]);

    let b = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    let f = c.sql("postgres", "SELECT backups.capture(source => 'nowhere')").unwrap();
    assert_eq!(wait(&c, &f, PATIENCE).unwrap(), "failed", "{}", agent.log_text());

    let got = bodies(&received, 2);
    assert_eq!(got.len(), 2, "{got:?}\n{}", agent.log_text());
    for (line, _) in &got {
        assert_eq!(line, "POST /hooks/T0-secret-token?key=abc HTTP/1.1");
    }
    // Only the statuses asked for (no "running"), in order.
    let (done, failed) = (&got[0].1, &got[1].1);
    assert_eq!(done["id"], b.as_str(), "{got:?}");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["kind"], "capture");
    assert_eq!(done["database"], "shop");
    assert_eq!(done["agent"], "observer-1");
    assert!(done["error"].is_null(), "{done}");
    assert_eq!(done["text"], format!("pg_backups: capture {b} of shop completed"));
    assert_eq!(failed["id"], f.as_str(), "{got:?}");
    assert_eq!(failed["status"], "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("unknown source \"nowhere\"") && !error.contains('\n'), "{error}");
    let text = failed["text"].as_str().unwrap();
    assert!(text.contains(&f) && text.contains(" failed: unknown source \"nowhere\""), "{text}");
    assert!(!agent.log_text().contains("secret-token"), "{}", agent.log_text());
}

#[test]
fn a_webhook_that_never_answers_delays_neither_transfers_nor_shutdown() {
    let (c, store) = TestEnv::new().db("shop", SHOP).without_agent();
    let (addr, _) = webhook_server(true);
    let cfg = config(
        &store,
        &format!(
            "[[webhook]]\nurl = \"http://user:pw@{addr}/never?token=s3cr3t\"\nevents = [\"running\", \"completed\", \"failed\"]\n"
        ),
    );
    let (mut agent, _) = start_listening_agent(&c, &store, &["--config", &cfg]);

    // Each capture's running and completed events queue behind deliveries
    // that hang: the captures do not wait for them.
    for _ in 0..3 {
        let started = Instant::now();
        let b = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
        assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
        // A webhook attempt waits 10 s for an answer: a capture of this
        // small database that waited on one would take at least that.
        assert!(started.elapsed() < Duration::from_secs(8), "{b} took {:?}", started.elapsed());
    }
    let started = Instant::now();
    agent.terminate(Duration::from_secs(20)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(8), "shutdown took {:?}", started.elapsed());
    let log = agent.log_text();
    assert!(log.contains("webhook deliveries still under way"), "{log}");
    assert!(!log.contains("s3cr3t") && !log.contains("user:pw") && !log.contains("/never"), "{log}");
}

#[test]
fn a_scrape_that_timed_out_leaves_no_query_running_on_the_server() {
    let (c, store) = TestEnv::new().conf("max_prepared_transactions = 2").db("shop", SHOP).without_agent();
    let (_agent, addr) = start_listening_agent(&c, &store, &[]);
    // The history locked by a transaction no shutdown or cancel ends.
    c.sql(
        "postgres",
        "BEGIN; LOCK TABLE backups.transfers IN ACCESS EXCLUSIVE MODE; PREPARE TRANSACTION 'hold_history'",
    )
    .unwrap();
    let down = scrape(&addr);
    assert_eq!(value(&down, "pgbackups_control_up", &[]), Some(0.0), "{down:?}");
    // The scrape gave up: so did its query, on the server.
    let running = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%backups._overview%' \
                   AND pid <> pg_backend_pid()";
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut left = c.sql("postgres", running).unwrap();
    while left != "0" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        left = c.sql("postgres", running).unwrap();
    }
    c.sql("postgres", "ROLLBACK PREPARED 'hold_history'").unwrap();
    assert_eq!(left, "0", "an abandoned _overview() still runs");
}
