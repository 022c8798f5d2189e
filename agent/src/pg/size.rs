//! How much data a database holds: the estimate a capture's or a copy's
//! percentage is measured against (`list()`'s progress).

use anyhow::Result;

/// The bytes of every table outside the system schemas, TOAST included:
/// close to what its COPY text comes to (indexes and free space aside).
/// Sizes need no privilege, so this counts tables the role cannot read.
pub async fn table_bytes(c: &tokio_postgres::Client) -> Result<u64> {
    let bytes: i64 = c
        .query_one(
            "SELECT coalesce(sum(pg_catalog.pg_table_size(c.oid)), 0)::bigint
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'",
            &[],
        )
        .await?
        .get(0);
    Ok(bytes.max(0) as u64)
}
