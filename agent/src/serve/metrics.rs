//! `GET /metrics` for Prometheus: this agent's own series (telemetry), and
//! what the control database says at scrape time (`backups._overview()`):
//! each database's last successful capture and health, and the queue.
//! It names databases and `--listen` also serves public download links, so
//! it is off unless the agent has a metrics token, and then answers only
//! scrapers that send it (`Authorization: Bearer <token>`, compared in
//! constant time): 404 without a token configured, 401 without the right one.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::serve::{self, Served};
use crate::telemetry::PREFIX;

/// How long a scrape waits for the control database (connection and query).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn routes() -> Router<Served> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(s): State<Served>, headers: HeaderMap) -> Response {
    let Some(token) = s.ctx.cfg.listen.as_ref().and_then(|l| l.metrics_token.as_deref()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !bearer_is(&headers, token) {
        return (StatusCode::UNAUTHORIZED, [(WWW_AUTHENTICATE, "Bearer")]).into_response();
    }
    // Without the charts' history: health, the queue, the running ids.
    let overview = match serve::overview(&s.ctx, false, CONTROL_TIMEOUT).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!("/metrics: {e:#}");
            None
        }
    };
    let mut text = String::new();
    let encoded = encode_registry(&mut text, s.ctx.telemetry.registry())
        .and_then(|_| encode_registry(&mut text, &control(overview.as_ref())))
        .and_then(|_| encode_eof(&mut text));
    match encoded {
        Ok(()) => ([(CONTENT_TYPE, CONTENT)], text).into_response(),
        Err(e) => {
            tracing::error!("/metrics: encoding: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// True when the request's `Authorization` is `Bearer <token>`. The
/// comparison is of SHA-256 digests in constant time, so neither the
/// token's bytes nor its length leak through timing.
fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let Some(given) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (Sha256::digest(given.trim().as_bytes()), Sha256::digest(token.as_bytes()));
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Database {
    database: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Health {
    database: String,
    status: String,
}

/// The series read from the control database for one scrape (a registry
/// of their own, made anew, so that a dropped database's series go away):
/// only `control_up 0` when it could not be read.
fn control(overview: Option<&serde_json::Value>) -> Registry {
    let mut r = Registry::with_prefix(PREFIX);
    let up = Gauge::<i64, AtomicI64>::default();
    up.set(overview.is_some() as i64);
    r.register("control_up", "Whether this scrape could read the control database (1) or not (0)", up);
    let Some(o) = overview else { return r };

    let last = Family::<Database, Gauge<f64, AtomicU64>>::default();
    let health = Family::<Health, Gauge<i64, AtomicI64>>::default();
    for h in o["health"].as_array().into_iter().flatten() {
        let Some(database) = h["database"].as_str() else { continue };
        if let Some(at) = h["last_backup_at"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
            let seconds = at.timestamp() as f64 + f64::from(at.timestamp_subsec_micros()) / 1e6;
            last.get_or_create(&Database { database: database.into() }).set(seconds);
        }
        if let Some(status) = h["status"].as_str() {
            health.get_or_create(&Health { database: database.into(), status: status.into() }).set(1);
        }
    }
    r.register_with_unit(
        "last_success_timestamp",
        "When each database's latest completed capture finished (Unix time)",
        Unit::Seconds,
        last,
    );
    r.register(
        "database_health",
        "Each database's health() status (ok, late, failing, never) as a label, value 1",
        health,
    );
    let pending = Gauge::<i64, AtomicI64>::default();
    pending.set(o["pending"].as_i64().unwrap_or(0));
    r.register("queue_pending", "Transfers waiting for an agent (every agent's queue)", pending);
    let running = Gauge::<i64, AtomicI64>::default();
    running.set(o["running"].as_array().map_or(0, |a| a.len() as i64));
    r.register("queue_running", "Transfers running now, on any agent", running);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_databases_view_is_encoded_or_said_down() {
        let mut text = String::new();
        encode_registry(&mut text, &control(None)).unwrap();
        assert_eq!(text.matches("pgbackups_control_up 0").count(), 1, "{text}");
        assert!(!text.contains("queue_pending"), "{text}");

        let o = serde_json::json!({
            "health": [{"database": "shop", "status": "ok", "last_backup_at": "2026-11-22T19:40:00.5+00:00"},
                       {"database": "new", "status": "never", "last_backup_at": null}],
            "pending": 3,
            "running": [{"id": "b004"}],
        });
        let mut text = String::new();
        encode_registry(&mut text, &control(Some(&o))).unwrap();
        for line in [
            "pgbackups_control_up 1",
            "pgbackups_last_success_timestamp_seconds{database=\"shop\"} 1795376400.5",
            "pgbackups_database_health{database=\"new\",status=\"never\"} 1",
            "pgbackups_queue_pending 3",
            "pgbackups_queue_running 1",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(!text.contains("database=\"new\"} "), "{text}");
    }
}
