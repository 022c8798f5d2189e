//! What every part of a running agent shares: its settings, its storage and
//! its staging area.

use crate::config::Config;
use crate::staging::StagingArea;
use crate::store::storage::Storage;

pub struct Ctx {
    pub cfg: Config,
    pub storage: Storage,
    pub staging: StagingArea,
}
