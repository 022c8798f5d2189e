//! The formats the agent reads as they stream: pg_dump's archives (the
//! custom format's framing, `custom`; the extensions a table of contents
//! names, `archive`), COPY text as pg_dump writes it (`copy_text`), and what
//! a backup holds, tallied from it (`contents`); tables of an archive moved
//! to another schema (`relocate`).

pub mod archive;
pub mod contents;
pub mod copy_text;
pub mod custom;
pub mod relocate;
