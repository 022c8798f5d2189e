//! How much data a database holds: the estimate a capture's or a copy's
//! percentage is measured against (`list()`'s progress).

use anyhow::Result;
use tokio_postgres::Client;

use crate::pg::conn;

/// Every table outside the system schemas, TOAST included: close to what
/// its COPY text comes to (indexes and free space aside). Sizes need no
/// privilege, so this counts tables the role cannot read.
const EXACT: &str = "SELECT coalesce(sum(pg_catalog.pg_table_size(c.oid)), 0)::bigint
                       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'";

/// The same from the planner's page counts: takes no lock, as fresh as the
/// last VACUUM or ANALYZE.
const ESTIMATE: &str = "SELECT (coalesce(sum(greatest(c.relpages, 0) + coalesce(greatest(t.relpages, 0), 0)), 0)
                               * pg_catalog.current_setting('block_size')::bigint)::bigint
                          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                          LEFT JOIN pg_catalog.pg_class t ON t.oid = c.reltoastrelid
                         WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'";

/// The bytes of the database's tables. pg_table_size takes each table's
/// ACCESS SHARE lock, so a table someone holds ACCESS EXCLUSIVE would keep
/// the transfer waiting here, before pg_dump and its `--lock-wait-timeout`:
/// it may wait a second, then the planner's estimate is taken instead.
/// `in_transaction`: `c` is in a transaction that must survive this (a
/// copy's snapshot), so a savepoint bounds the wait instead.
pub async fn table_bytes(c: &Client, in_transaction: bool) -> Result<u64> {
    let (begin, end, undo) = if in_transaction {
        (
            "SAVEPOINT pgbackups_size; SELECT pg_catalog.set_config('lock_timeout', '1s', true)",
            "RELEASE SAVEPOINT pgbackups_size",
            "ROLLBACK TO SAVEPOINT pgbackups_size; RELEASE SAVEPOINT pgbackups_size",
        )
    } else {
        ("BEGIN; SET LOCAL lock_timeout = '1s'", "COMMIT", "ROLLBACK")
    };
    // (A savepoint's SET LOCAL would outlive its RELEASE: the old value
    // comes back with the rollback or is put back by hand.)
    let before: String = c.query_one("SELECT pg_catalog.current_setting('lock_timeout')", &[]).await?.get(0);
    c.batch_execute(begin).await?;
    let bytes = match c.query_one(EXACT, &[]).await {
        Ok(row) => {
            if in_transaction {
                c.execute("SELECT pg_catalog.set_config('lock_timeout', $1, true)", &[&before]).await?;
            }
            c.batch_execute(end).await?;
            row.get::<_, i64>(0)
        }
        Err(e) => {
            tracing::debug!("table sizes: {e}; using the planner's estimate");
            c.batch_execute(undo).await?;
            c.query_one(ESTIMATE, &[]).await?.get(0)
        }
    };
    Ok(bytes.max(0) as u64)
}

/// [`table_bytes`] on a connection of its own, in the background: an
/// estimate must neither hold the transfer (a table someone has locked, a
/// slow catalog) nor fail it. `then` gets the bytes if they came.
pub fn table_bytes_later(url: String, then: impl FnOnce(u64) + Send + 'static) {
    tokio::spawn(async move {
        match async { table_bytes(&conn::connect(&url).await?, false).await }.await {
            Ok(bytes) => then(bytes),
            Err(e) => tracing::debug!("no size estimate: {e:#}"),
        }
    });
}
