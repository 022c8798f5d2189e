//! SQL quoting for the statements the agent builds from names it did not
//! choose (database, role and setting names, comments): any name, with any
//! quote in it, stays one identifier or one literal.

/// `s` as a quoted SQL identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `s` as an SQL string literal (standard_conforming_strings is on in the
/// agent's sessions, as it is by default).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
