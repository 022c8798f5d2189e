//! The customer's cluster, as the agent changes it: the target a restore or
//! copy replaces (`target`, with its properties, `database`), the shadow it
//! fills and swaps in (`shadow`), the throwaway login that applies an
//! archive (`applier`), a verification's scratch database (`scratch`), the
//! table sizes a progress estimate reads (`size`), what a transfer leaves
//! to drop (`teardown`), and what killed agents left (`leftovers`).

pub mod applier;
pub mod database;
pub mod leftovers;
pub mod scratch;
pub mod shadow;
pub mod size;
pub mod target;
pub mod teardown;
