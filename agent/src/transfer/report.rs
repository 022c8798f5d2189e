//! The supervisor's line to the control database about one claimed
//! transfer, on a connection of its own. Every call is one of the lifecycle
//! functions of `sql/lifecycle.sql`, fenced there on (agent, attempt). A
//! dropped connection is reopened; a finish is retried until its outcome is
//! known, which is safe because `_finish` is idempotent: a retry after a
//! lost reply finds the row already finished by this attempt and says so.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::pg::conn;
use crate::transfer::job::Claimed;
use crate::transfer::outcome::{Completion, Outcome};
use crate::transfer::progress::Level;

/// How long a lost control connection is waited for, per call.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(15);
/// How long one call may take before its connection is taken for dead (a
/// half-open TCP connection would otherwise hang it for many minutes). A
/// call, its reconnect and its second try stay within the default 60 s
/// without a heartbeat after which the worker requeues a transfer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a finish keeps trying before its outcome is called unknown.
const FINISH_PATIENCE: Duration = Duration::from_secs(120);

/// What a heartbeat learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    Run,
    CancelRequested,
    /// No longer ours: the worker requeued it after missed heartbeats.
    Lost,
}

pub struct Reporter {
    url: String,
    client: Mutex<Option<Client>>,
    id: i64,
    name: String,
    agent: String,
    attempt: i32,
}

impl Reporter {
    /// Report on `claimed` over `client`, a connection opened before the
    /// claim (so that nothing is claimed without a line to report on it).
    pub fn new(url: &str, client: Client, claimed: &Claimed, agent: &str) -> Self {
        Reporter {
            url: url.to_string(),
            client: Mutex::new(Some(client)),
            id: claimed.id,
            name: claimed.name.clone(),
            agent: agent.to_string(),
            attempt: claimed.attempt,
        }
    }

    /// One query; on a lost or hung connection, reconnect and try once more.
    async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row> {
        let mut guard = self.client.lock().await;
        for retry in [false, true] {
            if guard.as_ref().is_none_or(|c| c.is_closed()) {
                *guard = Some(conn::connect_with_retry(&self.url, RECONNECT_PATIENCE).await?);
            }
            let client = guard.as_ref().expect("connected");
            match tokio::time::timeout(CALL_TIMEOUT, client.query_one(sql, params)).await {
                Ok(Ok(row)) => return Ok(row),
                Ok(Err(e)) if client.is_closed() && !retry => {
                    tracing::warn!("control connection lost ({e}); reconnecting");
                    *guard = None;
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) if !retry => {
                    tracing::warn!("no answer from the control database within {CALL_TIMEOUT:?}; reconnecting");
                    *guard = None;
                }
                Err(_) => anyhow::bail!("no answer from the control database within {CALL_TIMEOUT:?}"),
            }
        }
        unreachable!("the second try returns")
    }

    /// Alive, with progress; learns whether a cancel was requested.
    pub async fn heartbeat(&self, processed: u64, current: Option<&str>, expected: Option<u64>) -> Result<Beat> {
        let expected = expected.map(|e| e as i64);
        let row = self
            .query_one(
                "SELECT backups._heartbeat($1, $2, $3, $4, $5, $6)",
                &[&self.id, &self.agent, &self.attempt, &(processed as i64), &current, &expected],
            )
            .await?;
        Ok(match row.get::<_, String>(0).as_str() {
            "run" => Beat::Run,
            "cancel" => Beat::CancelRequested,
            _ => Beat::Lost,
        })
    }

    /// Facts known once the work started. False when no longer ours.
    pub async fn record_start(
        &self,
        source_size: Option<i64>,
        format: Option<&str>,
        object_key: Option<&str>,
        tool_versions: &serde_json::Value,
        encrypted_to: &[String],
    ) -> Result<bool> {
        let row = self
            .query_one(
                "SELECT backups._record_start($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &self.id,
                    &self.agent,
                    &self.attempt,
                    &source_size,
                    &format,
                    &object_key,
                    tool_versions,
                    &encrypted_to,
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Append log lines; a failure to log never fails the transfer.
    pub async fn log(&self, lines: &[(Level, String)]) {
        if lines.is_empty() {
            return;
        }
        let levels: Vec<&str> = lines.iter().map(|l| l.0.as_str()).collect();
        let messages: Vec<&str> = lines.iter().map(|l| l.1.as_str()).collect();
        let res =
            self.query_one("SELECT 1 FROM backups._agent_log($1, $2, $3) x", &[&self.id, &levels, &messages]).await;
        if let Err(e) = res {
            tracing::warn!("could not write log lines of {}: {e:#}", self.name);
        }
    }

    /// Record how this attempt ended (a completion, a failure or a cancel;
    /// `processed` bytes so far, `warnings` the tools printed, `facts` the
    /// work learnt). `Ok(true)`: recorded (now, or by an earlier try whose
    /// reply was lost); `Ok(false)`: the transfer is no longer ours; `Err`:
    /// the outcome could not be learnt.
    pub async fn finish(
        &self,
        outcome: &Outcome,
        processed: u64,
        warnings: i32,
        facts: Option<&serde_json::Value>,
    ) -> Result<bool> {
        let status = outcome.status().context("only a completion, a failure or a cancel is recorded")?;
        let processed = outcome.processed(processed);
        let (stored, checksum, warnings, contents) = match outcome {
            Outcome::Completed(Completion::Backup { stored, checksum, contents, .. }) => (
                Some(*stored as i64),
                Some(checksum.as_str()),
                warnings,
                contents.as_ref().and_then(|c| serde_json::to_value(&c.tables).ok()),
            ),
            Outcome::Completed(Completion::Applied { warnings, .. }) => (None, None, *warnings, None),
            _ => (None, None, 0, None),
        };
        let error = outcome.error();
        let processed = processed as i64;
        let deadline = tokio::time::Instant::now() + FINISH_PATIENCE;
        loop {
            let res = self
                .query_one(
                    "SELECT backups._finish($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    &[
                        &self.id,
                        &self.agent,
                        &self.attempt,
                        &status,
                        &processed,
                        &stored,
                        &checksum,
                        &warnings,
                        &error,
                        &contents,
                        &facts,
                    ],
                )
                .await;
            match res {
                Ok(row) => return Ok(row.get(0)),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!("recording {} as {status}: {e:#}; trying again", self.name);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("recording {} as {status}", self.name)),
            }
        }
    }

    /// Give the transfer back to the queue; false when no longer ours.
    pub async fn hand_back(&self, why: &str) -> Result<bool> {
        let row = self
            .query_one("SELECT backups._hand_back($1, $2, $3, $4)", &[&self.id, &self.agent, &self.attempt, &why])
            .await?;
        Ok(row.get(0))
    }
}
