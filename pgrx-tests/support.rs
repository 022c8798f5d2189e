// Helpers shared by the in-database tests (included into `mod tests`).

#[allow(unused_imports)]
use pgrx::prelude::*;

/// One value from a query that must return one.
#[allow(dead_code)]
fn one<T: pgrx::FromDatum + pgrx::IntoDatum>(sql: &str) -> T {
    Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).unwrap_or_else(|| panic!("{sql}: NULL"))
}

#[allow(dead_code)]
fn run(sql: &str) {
    Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Called by the client tests to make sure the test cluster is up.
#[pg_extern]
fn ready() -> bool {
    true
}
