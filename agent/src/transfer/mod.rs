//! Transfers: the typed job a claim decodes into, the one supervisor that
//! runs every kind, and the kinds themselves (capture, parallel capture,
//! restore, copy), each a plain async function returning a `Completion`.

pub mod apply;
pub mod capture;
pub mod copy;
pub mod destination;
pub mod job;
pub mod parallel;
pub mod progress;
pub mod queue;
pub mod remote;
pub mod report;
pub mod restore;
pub mod selective;
pub mod streamed;
pub mod supervisor;
pub mod task;
pub mod verify;
