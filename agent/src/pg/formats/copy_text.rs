//! COPY text as pg_dump writes it: the session settings that shape it and
//! a COPY's column list, shared by a copy's streams (which must carry every
//! value unchanged) and a verification (which must read back the text its
//! capture tallied).

use crate::pg::conn::quote;

/// pg_dump's session settings that shape COPY's text: `encoding` as the
/// client encoding (pg_dump's is the database's by default), DateStyle
/// ISO, IntervalStyle postgres, extra_float_digits 3; and no timeout of a
/// database's or role's cuts a long stream short.
pub fn session_settings(encoding: &str) -> Vec<String> {
    vec![
        format!("SET client_encoding = {}", quote::literal(encoding)),
        "SET DateStyle = ISO".into(),
        "SET IntervalStyle = postgres".into(),
        "SET extra_float_digits = 3".into(),
        "SET statement_timeout = 0".into(),
        "SET lock_timeout = 0".into(),
        "SET idle_in_transaction_session_timeout = 0".into(),
    ]
}

/// ` (a, b)` for quoted, comma-joined `columns`, or nothing for a table
/// without columns (COPY takes no `()`).
pub fn column_list(columns: &str) -> String {
    if columns.is_empty() {
        String::new()
    } else {
        format!(" ({columns})")
    }
}
