//! The PostgreSQL client programs the agent runs: which major's (`bins`),
//! and each as a process group of its own (`tool`).

pub mod bins;
pub mod tool;
