//! What every kind of transfer is (`Kind`), and the claimed row it is
//! decoded from; apart from the list of kinds (`kinds/mod.rs`), which
//! names each of them, so that no kind imports a file that imports it.

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::ctx::Ctx;
use crate::store::layout::Keys;
use crate::transfer::outcome::Completion;
use crate::transfer::task::Task;

/// What every kind is.
pub trait Kind: Sized + std::fmt::Debug + Clone + Send + Sync + 'static {
    /// Its name in `backups.kinds` (and `transfers.kind`).
    const NAME: &'static str;

    /// What a claimed row of this kind asks for, or why it cannot be run.
    fn decode(row: &Row) -> Result<Self>;

    /// The work, from the claim to its completion.
    fn run<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Completion>>;

    /// The keys attempt `attempt` of transfer `name` may write to in
    /// storage, removed unless it completes; none for a kind that stores
    /// nothing.
    fn stores(&self, _ctx: &Ctx, _name: &str, _attempt: i32) -> Option<Keys> {
        None
    }
}

/// A claimed row of the transfers table, as the claim returns it.
pub struct Row {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub database: String,
    pub source: Option<String>,
    pub target: Option<String>,
    pub options: serde_json::Value,
    pub attempt: i32,
    /// `_record_swap`'s database, from an earlier attempt.
    pub swapped: Option<u32>,
    /// The cluster folder a capture stores under (`layout::Place`).
    pub stored_under: Option<String>,
}

impl Row {
    /// A restore's or copy's target (its database, when not set apart).
    pub fn target(&self) -> String {
        self.target.clone().unwrap_or_else(|| self.database.clone())
    }
}

/// A row's options as a kind's options struct (`deny_unknown_fields`): an
/// option this agent does not know is an error, never silently ignored.
pub fn options<T: DeserializeOwned>(row: &Row) -> Result<T> {
    serde_json::from_value(row.options.clone()).with_context(|| format!("invalid options {}", row.options))
}
