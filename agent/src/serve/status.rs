//! The status page, `GET /?expires=..&signature=..` (a link from
//! `backups.status_url()`): every database's health, the running transfers
//! and the queue, and charts of each database's captures, for people who
//! would rather look than query.
//!
//! Signed over the name `/` with the link secret, like a download link; a
//! missing, bad or expired signature gets 403 and nothing more. The page is
//! server-rendered HTML with inline SVG (`serve::chart`): no JavaScript,
//! and a Content-Security-Policy that allows none. Every string from the
//! database is escaped (maud escapes whatever it interpolates). It is read
//! from `backups._overview()` in the control database, within a timeout;
//! the control database not answering is a 503.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::serve::chart::{self, Point};
use crate::serve::links::{self, Signed};
use crate::serve::{self, Served};
use crate::transfer::progress::human;

/// How long the page waits for the control database.
const PATIENCE: Duration = Duration::from_secs(10);

pub fn routes() -> Router<Served> {
    Router::new().route("/", get(page))
}

async fn page(State(s): State<Served>, Query(q): Query<Signed>) -> Response {
    if !q.allows(&s.secret, "/") {
        return links::status(StatusCode::FORBIDDEN);
    }
    let overview = match serve::overview(&s.ctx, true, PATIENCE)
        .await
        .and_then(|v| serde_json::from_value::<Overview>(v).context("decoding backups._overview()"))
    {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("status page: {e:#}");
            return unavailable();
        }
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // The URL carries the signature: never send it anywhere.
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        render(&overview).into_string(),
    )
        .into_response()
}

/// No scripts, no fetches, no frames, no forms: inline styles and data: images only.
pub const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
        "The control database is not answering; try again in a minute.\n",
    )
        .into_response()
}

/// `backups._overview()`, as sql/health.sql builds it.
#[derive(Debug, Deserialize)]
pub struct Overview {
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub health: Vec<Health>,
    #[serde(default)]
    pub pending: i64,
    #[serde(default)]
    pub running: Vec<Running>,
    #[serde(default)]
    pub charts: Vec<Charted>,
}

#[derive(Debug, Deserialize)]
pub struct Health {
    pub database: String,
    pub status: String,
    pub last_backup: Option<String>,
    pub last_backup_at: Option<DateTime<Utc>>,
    pub schedule: Option<String>,
    pub last_failure: Option<String>,
    pub last_failure_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
pub struct Running {
    pub id: String,
    pub kind: String,
    pub database: String,
    pub agent: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub processed: Option<f64>,
    pub expected: Option<f64>,
    pub progress: Option<String>,
    pub current: Option<String>,
}

/// One database's completed captures (its latest 50), oldest first: one
/// array per field, the same length each.
#[derive(Debug, Deserialize)]
pub struct Charted {
    pub database: String,
    pub ids: Vec<String>,
    pub finished_at: Vec<DateTime<Utc>>,
    pub seconds: Vec<Option<f64>>,
    pub stored: Vec<Option<f64>>,
}

impl Charted {
    /// The points of one field, skipping captures without a value.
    fn points(&self, values: &[Option<f64>]) -> Vec<Point> {
        self.ids
            .iter()
            .zip(&self.finished_at)
            .zip(values)
            .filter_map(|((id, at), v)| Some(Point { label: id.clone(), at: *at, value: (*v)? }))
            .collect()
    }
}

/// `3 d 4 h`, `2 h 5 min`, `12 min`, `40 s`: the two largest units.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// A duration for the chart's value axis.
fn duration(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else {
        age(seconds.round() as i64)
    }
}

fn size(bytes: f64) -> String {
    human(bytes.max(0.0).round() as u64)
}

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px 32px; color: #1f2328; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; } h3 { font-size: 15px; margin: 18px 0 6px; }
.muted { color: #656d76; } .empty { color: #656d76; font-style: italic; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #d0d7de; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
.status { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; font-size: 12px; color: #fff; }
.ok { background: #1a7f37; } .late { background: #bf8700; } .failing { background: #cf222e; } .never { background: #6e7781; }
.bar { width: 220px; height: 10px; background: #eaeef2; border-radius: 5px; overflow: hidden; }
.bar div { height: 100%; background: #0969da; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
.charts figure { margin: 0; } figcaption { font-size: 12px; color: #656d76; }
svg.chart { background: #fbfcfd; border: 1px solid #d0d7de; border-radius: 6px; }
svg .axis { stroke: #8c959f; stroke-width: 1; } svg .label { font: 11px system-ui, sans-serif; fill: #57606a; }
svg .line { fill: none; stroke: #0969da; stroke-width: 2; } svg .point { fill: #0969da; stroke: #fff; stroke-width: 1; }
code { font-size: 12px; } .nowrap { white-space: nowrap; }
"#;

/// The whole page.
pub fn render(o: &Overview) -> Markup {
    let ago = |t: &DateTime<Utc>| age((o.at - *t).num_seconds());
    // Every database health() lists, with its chart if it has captures
    // (_overview() charts only those): a thousand databases are a
    // thousand lookups, not a scan of every capture each.
    let charts: HashMap<&str, &Charted> = o.charts.iter().map(|c| (c.database.as_str(), c)).collect();
    let databases: Vec<&str> = o.health.iter().map(|h| h.database.as_str()).collect();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                // Reloads itself (no script needed) until the link expires.
                meta http-equiv="refresh" content="60";
                title { "pg_backups status" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                h1 { "pg_backups status" }
                p.muted { "As of " (chart::when(o.at)) ". Reloads every minute." }

                h2 { "Health" }
                @if o.health.is_empty() {
                    p.empty { "No database has a schedule or a backup yet." }
                } @else {
                    table {
                        thead { tr { th { "Database" } th { "Status" } th { "Last backup" } th { "Age" } th { "Schedule" } th { "Last failure" } } }
                        tbody {
                            @for h in &o.health {
                                tr {
                                    td { (h.database) }
                                    td { span class={ "status " (status_class(&h.status)) } { (h.status) } }
                                    td.nowrap {
                                        @if let Some(b) = &h.last_backup { (b) }
                                        @if let Some(t) = &h.last_backup_at { " " span.muted { (chart::when(*t)) } }
                                    }
                                    td.nowrap { @if let Some(t) = &h.last_backup_at { (ago(t)) } @else { span.muted { "—" } } }
                                    td.nowrap { @if let Some(s) = &h.schedule { code { (s) } } @else { span.muted { "none" } } }
                                    td {
                                        @if let Some(f) = &h.last_failure { span title=(f) { (clip(f, FAILURE_CHARS)) } }
                                        @if let Some(t) = &h.last_failure_at { br; span.muted.nowrap { (chart::when(*t)) } }
                                    }
                                }
                            }
                        }
                    }
                }

                h2 { "Transfers" }
                p { (o.pending) " queued, " (o.running.len()) " running." }
                @if !o.running.is_empty() {
                    table {
                        thead { tr { th { "Transfer" } th { "Database" } th { "Agent" } th { "Started" } th { "Progress" } } }
                        tbody {
                            @for r in &o.running {
                                tr {
                                    td { (r.id) " " span.muted { (r.kind) } }
                                    td { (r.database) }
                                    td { @if let Some(a) = &r.agent { (a) } }
                                    td { @if let Some(t) = &r.started_at { (ago(t)) " ago" } }
                                    td {
                                        @if let Some(pct) = fraction(r.processed, r.expected) {
                                            div.bar title={ (format!("{:.0}", pct * 100.0)) "%" } {
                                                div style={ "width: " (format!("{:.1}", pct * 100.0)) "%" } {}
                                            }
                                        }
                                        @if let Some(p) = &r.progress { (p) }
                                        @else if let Some(b) = r.processed { (size(b)) }
                                        @if let Some(c) = &r.current { br; span.muted { (c) } }
                                    }
                                }
                            }
                        }
                    }
                }

                h2 { "Captures over time" }
                @if databases.is_empty() {
                    p.empty { "No completed captures yet." }
                }
                @for db in &databases {
                    h3 { (db) }
                    @if let Some(c) = charts.get(db).filter(|c| !c.ids.is_empty()) {
                        div.charts {
                            figure {
                                (chart::chart(&format!("{db}: stored size"), &c.points(&c.stored), size))
                                figcaption { "Stored size of each completed capture (" (c.ids.len()) ")" }
                            }
                            figure {
                                (chart::chart(&format!("{db}: duration"), &c.points(&c.seconds), duration))
                                figcaption { "Duration of each completed capture" }
                            }
                        }
                    } @else {
                        p.empty { "No completed captures yet." }
                    }
                }
            }
        }
    }
}

/// How much of a failure the table shows (all of it on hover).
const FAILURE_CHARS: usize = 140;

/// `text`, cut at `max` characters with an ellipsis.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

fn status_class(s: &str) -> &'static str {
    match s {
        "ok" => "ok",
        "late" => "late",
        "failing" => "failing",
        _ => "never",
    }
}

/// processed / expected in [0, 1], when there is an expectation.
fn fraction(processed: Option<f64>, expected: Option<f64>) -> Option<f64> {
    let (p, e) = (processed.unwrap_or(0.0), expected?);
    (e > 0.0).then(|| (p / e).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ODD: &str = "<script>\"&'";

    fn overview() -> Overview {
        let odd = serde_json::Value::String(ODD.into());
        serde_json::from_value(serde_json::json!({
            "at": "2026-11-22T08:00:00.5+00:00",
            "health": [
                {"database": odd, "status": "never", "last_backup": null, "last_backup_at": null,
                 "backup_age": null, "schedule": null, "last_failure": "b002: <oops> & \"gone\"",
                 "last_failure_at": "2026-11-22T06:00:00+00:00"},
                {"database": "shop", "status": "ok", "last_backup": "b003",
                 "last_backup_at": "2026-11-22T07:00:00+00:00", "backup_age": "01:00:00",
                 "schedule": "daily at 03:00", "last_failure": null, "last_failure_at": null}
            ],
            "pending": 2,
            "running": [{"id": "b004", "kind": "capture", "database": odd, "agent": "host-1",
                         "started_at": "2026-11-22T07:58:00+00:00", "processed": 430, "expected": 1000,
                         "progress": "43%, 430 B of ~1000 B", "current": "\"public\".\"<t>\""}],
            "charts": [
                {"database": "shop", "ids": ["b001", "b003"],
                 "finished_at": ["2026-11-22T05:00:00+00:00", "2026-11-22T07:00:00+00:00"],
                 "seconds": [2.5, 3.25], "stored": [1000, 1200]},
                {"database": odd, "ids": ["b005"], "finished_at": ["2026-11-22T07:30:00+00:00"],
                 "seconds": [1], "stored": [10]}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn every_database_string_is_escaped() {
        let page = render(&overview()).into_string();
        assert!(!page.contains(ODD), "{page}");
        assert!(!page.contains("<script"), "no script, least of all the database's");
        assert!(!page.contains("<oops>") && !page.contains("<t>"));
        assert!(page.contains("&lt;script&gt;&quot;&amp;'"), "{page}");
        assert!(page.contains(r#"<span title="b002: &lt;oops&gt; &amp; &quot;gone&quot;">b002: &lt;oops&gt; &amp; &quot;gone&quot;</span>"#), "{page}");
        assert!(page.contains("&quot;public&quot;.&quot;&lt;t&gt;&quot;"));
    }

    #[test]
    fn the_page_shows_health_transfers_and_a_chart_per_database() {
        let page = render(&overview()).into_string();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains(r#"<span class="status ok">ok</span>"#), "{page}");
        assert!(page.contains(r#"<span class="status never">never</span>"#));
        assert!(page.contains("2 queued, 1 running."));
        assert!(page.contains("43%, 430 B of ~1000 B"));
        assert!(page.contains(r#"style="width: 43.0%""#), "{page}");
        // Two charts per database with captures: shop's two points twice, the odd one's one point twice.
        assert_eq!(page.matches("<svg ").count(), 4);
        assert_eq!(page.matches("<circle ").count(), 6);
        assert!(page.contains("<title>b003 2026-11-22 07:00 UTC: 1.2 kB</title>"), "{page}");
        assert!(page.contains("<title>b001 2026-11-22 05:00 UTC: 2.5 s</title>"), "{page}");
        assert!(page.contains(r#"<td class="nowrap">1 h 0 min</td>"#), "shop's last backup's age: {page}");
    }

    #[test]
    fn an_empty_overview_says_so() {
        let o: Overview = serde_json::from_value(serde_json::json!({
            "at": "2026-11-22T08:00:00+00:00", "health": [], "pending": 0, "running": [], "charts": []
        }))
        .unwrap();
        let page = render(&o).into_string();
        assert!(page.contains("No database has a schedule or a backup yet."));
        assert!(page.contains("0 queued, 0 running."));
        assert!(!page.contains("<svg"));
    }

    #[test]
    fn ages_use_the_two_largest_units() {
        assert_eq!(age(-5), "0 s");
        assert_eq!(age(40), "40 s");
        assert_eq!(age(12 * 60 + 5), "12 min");
        assert_eq!(age(2 * 3600 + 5 * 60), "2 h 5 min");
        assert_eq!(age(3 * 86_400 + 4 * 3600 + 59), "3 d 4 h");
        assert_eq!(fraction(Some(5.0), None), None);
        assert_eq!(fraction(Some(5.0), Some(0.0)), None);
        assert_eq!(fraction(Some(50.0), Some(10.0)), Some(1.0));
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("héllo", 5), "héllo");
    }
}
