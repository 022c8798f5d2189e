//! The queue in the control database: claim pending transfers with
//! `FOR UPDATE SKIP LOCKED` (so two agents never run the same one), and
//! report on a claimed one. Every write about a claimed transfer is fenced
//! on (agent, attempt, running): if the worker requeued it because this agent
//! went silent, and another agent took it, this agent's writes match no row
//! and it stops instead of overwriting the other's work.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::db;

#[derive(Debug, Clone)]
pub struct Transfer {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub database: String,
    pub source: Option<String>,
    pub target: Option<String>,
    pub options: serde_json::Value,
    pub attempt: i32,
}

impl Transfer {
    pub fn jobs(&self) -> Option<u32> {
        self.options.get("jobs").and_then(|j| j.as_u64()).map(|j| j as u32)
    }
}

/// The kinds this agent can run.
pub const KINDS: &[&str] = &["capture", "restore", "copy"];

/// Claim the oldest pending transfer this agent can run, if any. A capture
/// from a named source goes to an agent that knows the name; when no live
/// agent does, any agent claims it, and fails it with a clear message.
pub async fn claim(client: &Client, agent_id: &str, sources: &[String]) -> Result<Option<Transfer>> {
    let kinds: Vec<String> = KINDS.iter().map(|k| k.to_string()).collect();
    let row = client
        .query_opt(
            "UPDATE backups.transfers t
                SET status = 'running', agent_id = $1, attempts = t.attempts + 1,
                    started_at = now(), heartbeat_at = now(), finished_at = NULL,
                    processed_bytes = 0, current_object = NULL, error = NULL
              WHERE t.id = (SELECT p.id FROM backups.transfers p
                             WHERE p.status = 'pending' AND NOT p.cancel_requested AND p.kind = ANY ($2)
                               AND (p.kind <> 'capture' OR p.source IS NULL OR p.source = ANY ($3)
                                    OR NOT EXISTS (SELECT 1 FROM backups.agents a
                                                    WHERE p.source = ANY (a.sources)
                                                      AND a.last_seen_at > now() - interval '1 minute'))
                             ORDER BY p.id FOR UPDATE SKIP LOCKED LIMIT 1)
          RETURNING t.id, t.name, t.kind, t.database::text, t.source, t.target, t.options, t.attempts",
            &[&agent_id, &kinds, &sources],
        )
        .await
        .context("claiming a transfer")?;
    Ok(row.map(|r| Transfer {
        id: r.get(0),
        name: r.get(1),
        kind: r.get(2),
        database: r.get(3),
        source: r.get(4),
        target: r.get(5),
        options: r.get(6),
        attempt: r.get(7),
    }))
}

/// What a heartbeat learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    Continue,
    CancelRequested,
}

#[derive(Debug, thiserror::Error)]
#[error("{0} is no longer ours: the worker requeued it after missed heartbeats")]
pub struct Lost(pub String);

/// Reports on one claimed transfer over its own connection, reconnecting
/// when the control database goes away for a while.
pub struct Reporter {
    url: String,
    client: Mutex<Client>,
    pub transfer: Transfer,
    agent_id: String,
}

const RECONNECT_PATIENCE: Duration = Duration::from_secs(30);

impl Reporter {
    pub async fn new(url: &str, transfer: Transfer, agent_id: &str) -> Result<Self> {
        let client = db::connect_with_retry(url, RECONNECT_PATIENCE).await?;
        Ok(Reporter { url: url.to_string(), client: Mutex::new(client), transfer, agent_id: agent_id.to_string() })
    }

    /// Run a fenced UPDATE (its WHERE must end with the fence placeholders
    /// $1, $2, $3 = id, agent, attempt); Err(Lost) when no row matched.
    async fn fenced(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<tokio_postgres::Row>> {
        let mut all: Vec<&(dyn ToSql + Sync)> = vec![&self.transfer.id, &self.agent_id, &self.transfer.attempt];
        all.extend_from_slice(params);
        let row = self.query_opt(sql, &all).await?;
        match row {
            Some(r) => Ok(Some(r)),
            None => Err(Lost(self.transfer.name.clone()).into()),
        }
    }

    async fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<tokio_postgres::Row>> {
        let mut client = self.client.lock().await;
        match client.query_opt(sql, params).await {
            Ok(r) => Ok(r),
            Err(e) if client.is_closed() => {
                tracing::warn!("control connection lost ({e}); reconnecting");
                *client = db::connect_with_retry(&self.url, RECONNECT_PATIENCE).await?;
                Ok(client.query_opt(sql, params).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    const FENCE: &'static str = "id = $1 AND agent_id = $2 AND attempts = $3 AND status = 'running'";

    /// Heartbeat with progress; learns whether a cancel was requested.
    pub async fn heartbeat(&self, processed: i64, current: Option<&str>) -> Result<Beat> {
        let sql = format!(
            "UPDATE backups.transfers SET heartbeat_at = now(), processed_bytes = $4, current_object = $5
              WHERE {} RETURNING cancel_requested",
            Self::FENCE
        );
        let row = self.fenced(&sql, &[&processed, &current]).await?.expect("fenced returns a row");
        Ok(if row.get::<_, bool>(0) { Beat::CancelRequested } else { Beat::Continue })
    }

    /// Record facts known at the start (sizes, format, versions, key).
    pub async fn started(
        &self,
        source_size: Option<i64>,
        format: &str,
        object_key: &str,
        tool_versions: &serde_json::Value,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE backups.transfers SET source_size = $4, format = $5, object_key = $6, tool_versions = $7
              WHERE {} RETURNING id",
            Self::FENCE
        );
        self.fenced(&sql, &[&source_size, &format, &object_key, tool_versions]).await?;
        Ok(())
    }

    pub async fn log(&self, level: &str, message: &str) {
        self.log_many(&[(level.to_string(), message.to_string())]).await
    }

    /// Append log lines; a failure to log never fails the transfer.
    pub async fn log_many(&self, lines: &[(String, String)]) {
        if lines.is_empty() {
            return;
        }
        let levels: Vec<&str> = lines.iter().map(|l| l.0.as_str()).collect();
        let messages: Vec<&str> = lines.iter().map(|l| l.1.as_str()).collect();
        let res = self
            .query_opt(
                "INSERT INTO backups.transfer_logs (transfer_id, level, message)
                 SELECT $1, l, m FROM unnest($2::text[], $3::text[]) AS x(l, m)",
                &[&self.transfer.id, &levels, &messages],
            )
            .await;
        if let Err(e) = res {
            tracing::warn!("could not write log lines of {}: {e:#}", self.transfer.name);
        }
    }

    /// Completed: only once the upload is complete and its checksum known.
    pub async fn completed(&self, processed: i64, stored_size: i64, checksum: &str, warnings: i32) -> Result<()> {
        let sql = format!(
            "UPDATE backups.transfers SET status = 'completed', finished_at = now(), heartbeat_at = now(),
                    processed_bytes = $4, stored_size = $5, checksum = $6, warnings = $7, current_object = NULL
              WHERE {} RETURNING id",
            Self::FENCE
        );
        self.fenced(&sql, &[&processed, &stored_size, &checksum, &warnings]).await?;
        Ok(())
    }

    pub async fn failed(&self, error: &str) -> Result<()> {
        let sql = format!(
            "UPDATE backups.transfers SET status = 'failed', finished_at = now(), error = $4, current_object = NULL
              WHERE {} RETURNING id",
            Self::FENCE
        );
        self.fenced(&sql, &[&error]).await?;
        Ok(())
    }

    pub async fn cancelled(&self) -> Result<()> {
        let sql = format!(
            "UPDATE backups.transfers SET status = 'cancelled', finished_at = now(), current_object = NULL
              WHERE {} RETURNING id",
            Self::FENCE
        );
        self.fenced(&sql, &[]).await?;
        Ok(())
    }

    /// Give the transfer back to the queue (agent shutting down): another
    /// agent picks it up; this attempt does not count.
    pub async fn hand_back(&self, why: &str) -> Result<()> {
        let sql = format!(
            "UPDATE backups.transfers SET status = 'pending', agent_id = NULL, attempts = attempts - 1,
                    started_at = NULL, heartbeat_at = NULL, processed_bytes = 0, current_object = NULL
              WHERE {} RETURNING id",
            Self::FENCE
        );
        self.fenced(&sql, &[]).await?;
        self.log("warning", &format!("handed back to the queue: {why}")).await;
        let _ = self.query_opt("SELECT pg_notify('pg_backups', $1)", &[&self.transfer.name]).await;
        Ok(())
    }
}

/// Announce this agent and its source names (and keep announcing: last_seen_at).
pub async fn announce(client: &Client, agent_id: &str, sources: &[String]) -> Result<()> {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    client
        .execute(
            "INSERT INTO backups.agents (agent_id, hostname, version, sources) VALUES ($1, $2, $3, $4)
             ON CONFLICT (agent_id) DO UPDATE SET last_seen_at = now(), sources = excluded.sources",
            &[&agent_id, &host, &env!("CARGO_PKG_VERSION"), &sources],
        )
        .await
        .context("announcing the agent (is the pg_backups extension installed in this database?)")?;
    Ok(())
}
