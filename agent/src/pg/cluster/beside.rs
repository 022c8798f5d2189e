//! The one transaction a table restore makes its tables in, beside the
//! live ones: on the throwaway login's connection (`applier`), acting as
//! the database's owner with pg_restore's session settings, the schema
//! made if it is not there, then the statements and COPYs of the plan
//! (`pg/formats/relocate.rs`); nothing is visible until `commit`, and a
//! connection that goes away (a failure, a cancel, a killed agent) leaves
//! nothing. Its errors are said in the user's terms.

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, CopyInSink};

use crate::pg::conn::quote::{ident, literal};

/// The open transaction, in schema `into` of database `db`.
pub struct Beside {
    client: Client,
    into: String,
    db: String,
    owner: String,
}

impl Beside {
    /// Whether schema `into` says that transfer `mark` made it: an earlier
    /// attempt committed (the agent was stopped after its COMMIT, before
    /// the control database heard of it).
    pub async fn made_by(client: &Client, into: &str, mark: &str) -> Result<bool> {
        let said: Option<String> = client
            .query_opt(
                "SELECT pg_catalog.obj_description(n.oid, 'pg_namespace') FROM pg_catalog.pg_namespace n \
                 WHERE n.nspname = $1",
                &[&into],
            )
            .await?
            .and_then(|r| r.get(0));
        Ok(said.is_some_and(|s| s.starts_with(mark)))
    }

    /// Begin on `client` (the applier's login) as `owner`, with the COPY
    /// text's `encoding`, and make schema `into` unless it is there; one it
    /// makes says so in its comment, which starts with `mark`.
    pub async fn begin(
        client: Client,
        owner: &str,
        encoding: &str,
        into: &str,
        db: &str,
        mark: &str,
    ) -> Result<Beside> {
        let session = [
            format!("SET ROLE {}", ident(owner)),
            format!("SET client_encoding = {}", literal(encoding)),
            "SET statement_timeout = 0".into(),
            "SET lock_timeout = 0".into(),
            "SET idle_in_transaction_session_timeout = 0".into(),
            "SET standard_conforming_strings = on".into(),
            "SELECT pg_catalog.set_config('search_path', '', false)".into(),
            "SET check_function_bodies = false".into(),
            "SET xmloption = content".into(),
            "SET client_min_messages = warning".into(),
            "SET row_security = off".into(),
            "SET synchronous_commit = on".into(),
            "BEGIN".into(),
        ];
        client.batch_execute(&session.join("; ")).await.context("setting up the session")?;
        let b = Beside { client, into: into.to_string(), db: db.to_string(), owner: owner.to_string() };
        let there = b
            .client
            .query_opt("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1", &[&into])
            .await
            .map_err(|e| b.worded(e))?
            .is_some();
        if !there {
            b.run(&format!("CREATE SCHEMA {}", ident(into))).await?;
            b.run(&format!("COMMENT ON SCHEMA {} IS {}", ident(into), literal(mark))).await?;
        }
        Ok(b)
    }

    /// One statement of the plan.
    pub async fn run(&self, sql: &str) -> Result<()> {
        self.client.batch_execute(sql).await.map_err(|e| self.worded(e))
    }

    /// A COPY ... FROM stdin of the plan, to be fed and finished.
    pub async fn copy_in(&self, stmt: &str) -> Result<CopyInSink<Bytes>> {
        self.client.copy_in(stmt).await.map_err(|e| self.worded(e))
    }

    /// Make it all visible at once.
    pub async fn commit(self) -> Result<()> {
        self.client.batch_execute("COMMIT").await.context("committing the restored tables")
    }

    /// An error of a statement of the plan, said in the user's terms.
    pub fn worded(&self, e: tokio_postgres::Error) -> anyhow::Error {
        let (into, db) = (ident(&self.into), ident(&self.db));
        let Some(d) = e.as_db_error() else { return e.into() };
        let msg = d.message();
        if *d.code() == SqlState::DUPLICATE_TABLE || *d.code() == SqlState::DUPLICATE_OBJECT {
            return anyhow!(
                "schema {into} of {db} already holds what this restore would create ({msg}): nothing was restored. \
                 Pass into_schema => 'another_schema', or drop or rename what is there first"
            );
        }
        if *d.code() == SqlState::INSUFFICIENT_PRIVILEGE {
            return anyhow!(
                "{msg}: a table restore acts as {db}'s owner, {owner}, who may not do that: nothing was restored. \
                 Leave into_schema out (a new schema is made), or GRANT CREATE ON SCHEMA {into} TO {owner}",
                owner = ident(&self.owner)
            );
        }
        if *d.code() == SqlState::UNDEFINED_OBJECT && msg.starts_with("type ") {
            return anyhow!(
                "a restored table uses a {msg} in database {db}: nothing was restored. Create the type first (its \
                 definition is in the backup: restore the whole backup into another database, or read it with \
                 pg_restore --schema-only from the backup's link), then run restore_tables() again"
            );
        }
        if *d.code() == SqlState::UNDEFINED_FUNCTION {
            return anyhow!(
                "a restored table needs a function database {db} does not have ({msg}): nothing was restored. \
                 Create it first, then run restore_tables() again"
            );
        }
        anyhow::Error::from(e).context("recreating the tables: nothing was restored")
    }
}
