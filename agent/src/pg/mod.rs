//! PostgreSQL as the agent touches it, one folder per subsystem: its
//! connections and their TLS (`conn`), the client programs it runs and
//! which major's (`tools`), the archive formats it reads as they stream
//! (`formats`), and the customer's cluster it changes: the databases it
//! replaces, the shadows and scratch databases it makes, the throwaway
//! logins that apply archives, and what it leaves to drop (`cluster`).

pub mod cluster;
pub mod conn;
pub mod formats;
pub mod tools;
