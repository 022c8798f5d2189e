//! Webhooks: the status changes of the transfers this agent runs, POSTed
//! as JSON to the configured URLs by one background task, so that a slow
//! or dead endpoint never holds up a transfer.
//!
//! The supervisor hands each event over without waiting ([`Hooks::send`]:
//! dropped with a warning when the queue is full); [`deliver`] sends them in
//! order, each with a few attempts, and on shutdown gives what is left a
//! short grace.

use std::time::Duration;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events waiting for delivery before new ones are dropped.
const QUEUE: usize = 256;
/// One POST's time limit.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per event and webhook.
const ATTEMPTS: u32 = 3;
/// The pause after a failed attempt, doubled after each.
const BACKOFF: Duration = Duration::from_secs(1);
/// What is left to deliver when the agent stops gets this long, in all.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// An error is cut to its first line and this many characters (as in the
/// backups_events NOTIFY).
const ERROR_CHARS: usize = 1000;

/// A webhook as configured: where, and on which statuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    #[serde(default = "default_statuses")]
    pub events: Vec<Status>,
}

/// `--webhook URL`: the default statuses.
impl std::str::FromStr for Webhook {
    type Err = std::convert::Infallible;
    fn from_str(url: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Webhook { url: url.to_string(), events: default_statuses() })
    }
}

impl Webhook {
    /// The `i`th webhook, checked: an http(s) URL and at least one status.
    /// Its URL is not repeated in errors (it may carry a token).
    pub fn checked(&self, i: usize) -> Result<WebhookTarget> {
        let n = i + 1;
        let url = url::Url::parse(&self.url).map_err(|e| anyhow::anyhow!("webhook {n}: not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            bail!("webhook {n}: only http:// and https:// URLs with a host are supported");
        }
        if self.events.is_empty() {
            bail!("webhook {n}: no events (give some of running, completed, failed, cancelled)");
        }
        Ok(WebhookTarget { url, events: self.events.clone() })
    }
}

/// The statuses a webhook may be told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

fn default_statuses() -> Vec<Status> {
    vec![Status::Failed]
}

/// A webhook, checked.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub url: url::Url,
    pub events: Vec<Status>,
}

/// Text a tenant chose (a database's name, an error quoting it) as Slack
/// and Mattermost show it, not as markup: `<!channel>` or `<url|label>` in
/// a database's name must not ping a channel or disguise a link. Slack's
/// three escapes, and control characters (a name may hold a newline) as
/// spaces. The JSON's own fields stay as they are.
fn slack_escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// One status change, as the webhooks get it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub status: &'static str,
    pub database: String,
    /// The error's first line, for a failure.
    pub error: Option<String>,
    /// The agent that ran it.
    pub agent: String,
    /// One line for people (Slack, Mattermost and others show `text`).
    pub text: String,
}

impl Event {
    pub fn new(id: &str, kind: &str, status: Status, database: &str, error: Option<&str>, agent: &str) -> Self {
        let error = error.map(|e| e.lines().next().unwrap_or("").chars().take(ERROR_CHARS).collect::<String>());
        let on = match kind {
            "restore" | "copy" => "into",
            _ => "of",
        };
        let what = format!("pg_backups: {kind} {id} {on} {}", slack_escaped(database));
        let text = match (status, &error) {
            (Status::Running, _) => format!("{what} is running"),
            (Status::Failed, Some(e)) => format!("{what} failed: {}", slack_escaped(e)),
            (s, _) => format!("{what} {}", s.as_str()),
        };
        Event {
            id: id.into(),
            kind: kind.into(),
            status: status.as_str(),
            database: database.into(),
            error,
            agent: agent.into(),
            text,
        }
    }
}

/// Where the supervisors hand events to: nowhere without webhooks.
pub struct Hooks {
    tx: Option<mpsc::Sender<(Status, Event)>>,
}

/// The delivery side of [`Hooks`], for [`deliver`].
pub struct Queue(mpsc::Receiver<(Status, Event)>);

impl Hooks {
    /// Hooks for `targets`, and the queue to deliver from (none without targets).
    pub fn new(targets: &[WebhookTarget]) -> (Hooks, Option<Queue>) {
        if targets.is_empty() {
            return (Hooks { tx: None }, None);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        (Hooks { tx: Some(tx) }, Some(Queue(rx)))
    }

    /// Queue `event` for the webhooks that want `status`; never waits.
    pub fn send(&self, status: Status, event: Event) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send((status, event)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full((_, e))) => {
                tracing::warn!(id = %e.id, status = e.status, "webhook queue full: this event is not sent");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Deliver queued events until `stop`, then what is left (in flight or
/// queued) within [`SHUTDOWN_GRACE`].
pub async fn deliver(targets: Vec<WebhookTarget>, queue: Queue, stop: CancellationToken) {
    let Queue(mut rx) = queue;
    // No redirects (a 3xx is a failed attempt): an endpoint must not steer
    // the agent's POSTs to other hosts, nor learn the URL's token from a
    // Referer.
    let client = match reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("webhooks disabled: {e:#}");
            return;
        }
    };
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            next = rx.recv() => next,
        };
        let Some((status, event)) = next else { return };
        let sending = send(&client, &targets, status, &event);
        tokio::pin!(sending);
        tokio::select! {
            _ = &mut sending => continue,
            _ = stop.cancelled() => {
                let rest = async {
                    sending.await;
                    drain(&client, &targets, &mut rx).await;
                };
                if tokio::time::timeout(SHUTDOWN_GRACE, rest).await.is_err() {
                    tracing::warn!("stopping: webhook deliveries still under way after {SHUTDOWN_GRACE:?} are given up");
                }
                return;
            }
        }
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, drain(&client, &targets, &mut rx)).await.is_err() {
        tracing::warn!("stopping: webhook deliveries still under way after {SHUTDOWN_GRACE:?} are given up");
    }
}

/// Send what is queued now.
async fn drain(client: &reqwest::Client, targets: &[WebhookTarget], rx: &mut mpsc::Receiver<(Status, Event)>) {
    while let Ok((status, event)) = rx.try_recv() {
        send(client, targets, status, &event).await;
    }
}

/// POST `event` to every target that wants `status`, at once.
async fn send(client: &reqwest::Client, targets: &[WebhookTarget], status: Status, event: &Event) {
    let posts = targets.iter().filter(|t| t.events.contains(&status)).map(|t| post(client, t, event));
    futures::future::join_all(posts).await;
}

/// One event to one webhook, with retries; a warning if it never got through.
async fn post(client: &reqwest::Client, target: &WebhookTarget, event: &Event) {
    let body = serde_json::to_vec(event).expect("an event serializes");
    let mut pause = BACKOFF;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let request = client
            .post(target.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(id = %event.id, status = event.status, to = %shown(&target.url), "webhook delivered");
                return;
            }
            Ok(r) => last = format!("HTTP {}", r.status()),
            // Without the URL: reqwest's errors name it whole.
            Err(e) => last = describe(e),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    tracing::warn!(
        id = %event.id,
        status = event.status,
        "webhook {} not delivered after {ATTEMPTS} attempts: {last}",
        shown(&target.url)
    );
}

/// What went wrong with a request, without its URL.
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {ATTEMPT_TIMEOUT:?}");
    }
    format!("{:#}", anyhow::Error::new(e.without_url()))
}

/// A webhook's URL as logs show it: scheme, host and port only (its path,
/// query string or user part may hold a token).
pub fn shown(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(p) => format!("{}://{host}:{p}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_one_line_and_urls_are_shown_without_secrets() {
        let e = Event::new("b012", "capture", Status::Failed, "shop", Some("boom\nmore"), "a-1");
        assert_eq!(e.text, "pg_backups: capture b012 of shop failed: boom");
        assert_eq!(e.error.as_deref(), Some("boom"));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["status"], "failed");
        assert_eq!(v["agent"], "a-1");
        let r = Event::new("r001", "restore", Status::Completed, "shop_staging", None, "a-1");
        assert_eq!(r.text, "pg_backups: restore r001 into shop_staging completed");
        assert!(serde_json::to_value(&r).unwrap()["error"].is_null());
        // A tenant's name is text, not Slack markup, and stays one line.
        let odd = Event::new("b014", "capture", Status::Failed, "<!channel> <https://x|y>\n&", Some("db <!here>"), "a");
        assert_eq!(
            odd.text,
            "pg_backups: capture b014 of &lt;!channel&gt; &lt;https://x|y&gt; &amp; failed: db &lt;!here&gt;"
        );
        assert_eq!(odd.database, "<!channel> <https://x|y>\n&");
        let running = Event::new("b013", "capture", Status::Running, "shop", None, "a-1");
        assert_eq!(running.text, "pg_backups: capture b013 of shop is running");
        let u = url::Url::parse("https://user:pw@hooks.example.com:8443/services/T0/B0/xyz?token=s").unwrap();
        assert_eq!(shown(&u), "https://hooks.example.com:8443");
        let u = url::Url::parse("http://hooks.example.com/x").unwrap();
        assert_eq!(shown(&u), "http://hooks.example.com");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_never_waits() {
        let target =
            WebhookTarget { url: url::Url::parse("http://127.0.0.1:9/").unwrap(), events: vec![Status::Failed] };
        let (hooks, queue) = Hooks::new(&[target]);
        let _queue = queue.unwrap();
        for i in 0..(QUEUE + 10) {
            hooks.send(Status::Failed, Event::new(&format!("b{i}"), "capture", Status::Failed, "shop", None, "a"));
        }
        let (none, q) = Hooks::new(&[]);
        assert!(q.is_none());
        none.send(Status::Failed, Event::new("b1", "capture", Status::Failed, "shop", None, "a"));
    }

    /// Read one HTTP request on `l` (head and body) and answer `reply`.
    async fn answer_one(l: &tokio::net::TcpListener, reply: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = l.accept().await.unwrap();
        let (mut got, mut buf) = (Vec::new(), vec![0u8; 65536]);
        loop {
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            let t = String::from_utf8_lossy(&got).to_string();
            if let Some(i) = t.find("\r\n\r\n") {
                let len = t[..i]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0usize);
                if got.len() >= i + 4 + len {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        s.write_all(reply.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&got).to_string()
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_the_url_is_not_sent_as_referer() {
        let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = a.local_addr().unwrap().port();
        let url = url::Url::parse(&format!("http://127.0.0.1:{port}/services/T0/SECRETTOKEN?token=s3")).unwrap();
        let target = WebhookTarget { url, events: vec![Status::Failed] };
        let (hooks, queue) = Hooks::new(std::slice::from_ref(&target));
        let stop = CancellationToken::new();
        let delivery = tokio::spawn(deliver(vec![target], queue.unwrap(), stop.clone()));
        hooks.send(Status::Failed, Event::new("b1", "capture", Status::Failed, "shop", Some("x"), "a"));
        let to_b = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://localhost:{}/internal\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            b.local_addr().unwrap().port()
        );
        let first = answer_one(&a, &to_b).await;
        assert!(first.starts_with("POST /services/T0/SECRETTOKEN?token=s3 "), "{first}");
        // Retries come back to the webhook itself, never to the redirect's host.
        let redirected = tokio::time::timeout(Duration::from_secs(4), b.accept()).await;
        assert!(redirected.is_err(), "the agent followed the redirect");
        stop.cancel();
        let _ = delivery.await;
    }
}
