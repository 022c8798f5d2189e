//! Commands a person runs beside the agent.

pub mod download;
