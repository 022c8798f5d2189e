//! A claimed transfer: its row as the supervisor needs it, and the job its
//! kind decoded it into once, at the claim (`transfer::kinds::Job`).

use crate::transfer::kinds::Job;

/// A transfer this agent claimed: attempt `attempt` of `name`, and what it
/// asks for, or why this agent cannot tell (the supervisor fails it so).
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub name: String,
    pub attempt: i32,
    /// How long without a heartbeat before the worker requeues it.
    pub lease: std::time::Duration,
    /// Its row's kind and database, as the table has them (for metrics and
    /// webhooks, also when the job cannot be decoded).
    pub kind: String,
    pub database: String,
    pub job: std::result::Result<Job, String>,
}
