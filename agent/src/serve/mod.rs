//! What the agent serves over HTTP (`--listen`): signed download links.

pub mod links;
