//! Steps that several kinds share: reading a source (`source`: its
//! connection, pg_dump with Heroku's flags), a capture's dumps (`dump`,
//! `parallel_dump`, `selective`), bringing a backup back (`fetch`, `remote`,
//! `streamed`, `load`), and applying an archive where it goes (`apply`,
//! `destination`).

pub mod apply;
pub mod destination;
pub mod dump;
pub mod fetch;
pub mod load;
pub mod parallel_dump;
pub mod remote;
pub mod selective;
pub mod source;
pub mod streamed;
