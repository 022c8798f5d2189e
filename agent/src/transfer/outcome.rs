//! How a transfer ended, in one type: what the work reports when it
//! finishes (`Completion`), and the `Outcome` of an attempt that the
//! supervisor records (`report`), counts (`telemetry`) and tells the
//! webhooks of (`webhook`), each taking it by reference.

use crate::pg::formats::contents::Contents;
use crate::webhook;

/// What a kind's work reports when it finished.
#[derive(Debug, Clone)]
pub enum Completion {
    /// A capture: stored, with its checksum recorded.
    Backup { processed: u64, stored: u64, checksum: String, contents: Option<Contents> },
    /// A restore, a copy or a verification: `warnings` errors pg_restore
    /// ignored.
    Applied { processed: u64, warnings: i32 },
}

/// How an attempt of a transfer ended, as this agent knows it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The work finished.
    Completed(Completion),
    /// The work failed: why.
    Failed(String),
    /// A cancel was asked, and the work stopped.
    Cancelled,
    /// The agent is stopping: the transfer goes back to the queue, and this
    /// attempt does not count against its three.
    HandedBack,
    /// The table says another attempt owns it now (the worker requeued it
    /// after missed heartbeats).
    Lost,
}

impl Outcome {
    /// Its name, as the metrics label it: `completed`, `failed`,
    /// `cancelled`, `handed_back`, `lost`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Completed(_) => "completed",
            Outcome::Failed(_) => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::HandedBack => "handed_back",
            Outcome::Lost => "lost",
        }
    }

    /// The status the table ends it with, for the endings this attempt
    /// records (a hand back or a lost transfer is another attempt's to end).
    pub fn status(&self) -> Option<&'static str> {
        match self {
            Outcome::Completed(_) | Outcome::Failed(_) | Outcome::Cancelled => Some(self.label()),
            Outcome::HandedBack | Outcome::Lost => None,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Bytes processed: what a completed work reported, else `so_far`.
    pub fn processed(&self, so_far: u64) -> u64 {
        match self {
            Outcome::Completed(Completion::Backup { processed, .. } | Completion::Applied { processed, .. }) => {
                *processed
            }
            _ => so_far,
        }
    }

    /// What the webhooks are told of it: the final statuses only (a
    /// transfer handed back or lost is another attempt's to end).
    pub fn told(&self) -> Option<webhook::Status> {
        match self {
            Outcome::Completed(_) => Some(webhook::Status::Completed),
            Outcome::Failed(_) => Some(webhook::Status::Failed),
            Outcome::Cancelled => Some(webhook::Status::Cancelled),
            Outcome::HandedBack | Outcome::Lost => None,
        }
    }

    /// Bytes a completed capture stored.
    pub fn stored(&self) -> Option<u64> {
        match self {
            Outcome::Completed(Completion::Backup { stored, .. }) => Some(*stored),
            _ => None,
        }
    }
}
