//! What every part of a running agent shares: its settings, its storage, its
//! staging area, the PostgreSQL tools it found, its counters and its
//! webhooks' queue.

use crate::config::Config;
use crate::pg::tools::bins::Bins;
use crate::staging::StagingArea;
use crate::store::storage::Storage;
use crate::telemetry::Telemetry;
use crate::webhook::Hooks;

pub struct Ctx {
    pub cfg: Config,
    pub storage: Storage,
    pub staging: StagingArea,
    pub bins: Bins,
    /// What /metrics shows of this process.
    pub telemetry: Telemetry,
    /// Where status changes go for the webhooks.
    pub hooks: Hooks,
}
