//! Transfers: the claimed job (`job`), the one supervisor that runs every
//! kind and records how it ended (`supervisor`, `outcome`, `report`), what
//! every kind is (`kind`), and the kinds themselves (`kinds`: listed once,
//! one file each), built from shared steps (`steps`).

pub mod job;
pub mod kind;
pub mod kinds;
pub mod outcome;
pub mod progress;
pub mod queue;
pub mod report;
pub mod steps;
pub mod supervisor;
pub mod task;
