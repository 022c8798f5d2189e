//! What every part of a running agent shares: its settings, its storage, its
//! staging area and the PostgreSQL tools it found.

use crate::config::Config;
use crate::pg::bins::Bins;
use crate::staging::StagingArea;
use crate::store::storage::Storage;

pub struct Ctx {
    pub cfg: Config,
    pub storage: Storage,
    pub staging: StagingArea,
    pub bins: Bins,
}
