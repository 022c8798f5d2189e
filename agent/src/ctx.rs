//! What every part of a running agent shares: its settings and its storage.

use crate::config::Config;
use crate::store::storage::Storage;

pub struct Ctx {
    pub cfg: Config,
    pub storage: Storage,
}
