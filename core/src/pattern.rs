//! pg_dump name patterns, as a selective capture passes them to
//! `--exclude-table-data` and `--exclude-schema`: which ones are accepted,
//! and the anchored regular expressions pg_dump itself matches them with
//! (fe_utils' `processSQLNamePattern`), so that the extension and the agent
//! can tell a pattern that matches nothing before pg_dump silently ignores it.

/// What a pattern names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `name` or `schema.name`: tables, views, sequences... (`--exclude-table-data`).
    Table,
    /// `name`, without dots (`--exclude-schema`).
    Schema,
}

/// A pattern as the server's regular expression operator (`~`) takes it:
/// `schema` is `None` for an unqualified table pattern, which pg_dump
/// matches against the tables visible on the default search_path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regexes {
    pub schema: Option<String>,
    pub name: String,
}

/// Longer than any schema-qualified, quoted pair of names (63 bytes each)
/// needs to be; the limit keeps pg_dump's command line small.
pub const MAX_LEN: usize = 1000;

/// The syntax, for HINTs and error messages.
pub const SYNTAX: &str =
    "Patterns follow pg_dump's -t/-n rules: a name, or schema.name for table data; unquoted letters are \
     lower-cased, * matches any run of characters and ? any one; write a name with capitals, spaces, dots or \
     other special characters in double quotes (\"My Table\", or public.\"Order.Lines\"), doubling a \" inside \
     them. No element may be empty, start with -, or hold a control character such as a newline.";

/// Check `pattern` and turn it into the regular expressions pg_dump uses.
pub fn regexes(pattern: &str, kind: Kind) -> Result<Regexes, String> {
    if pattern.trim().is_empty() {
        return Err("an empty pattern".into());
    }
    if pattern.chars().count() > MAX_LEN {
        return Err(format!("a pattern of more than {MAX_LEN} characters"));
    }
    if pattern.starts_with('-') {
        return Err(format!("{pattern:?} starts with -"));
    }
    if pattern.chars().any(|c| c.is_control()) {
        return Err(format!("{pattern:?} holds a control character (a newline, tab or NUL)"));
    }
    // Parts between unquoted dots, each already in regular expression form,
    // and whether each held anything at all.
    let mut parts: Vec<(String, bool)> = vec![(String::new(), false)];
    let mut in_quotes = false;
    let mut chars = pattern.chars().peekable();
    while let Some(ch) = chars.next() {
        let (buf, nonempty) = parts.last_mut().expect("one part at least");
        match ch {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                chars.next();
                buf.push('"');
                *nonempty = true;
            }
            '"' => in_quotes = !in_quotes,
            '.' if !in_quotes => {
                parts.push((String::new(), false));
                continue;
            }
            c if !in_quotes && c.is_whitespace() => {
                return Err(format!("{pattern:?} holds a space outside double quotes"));
            }
            c if !in_quotes && c.is_ascii_uppercase() => {
                buf.push(c.to_ascii_lowercase());
                *nonempty = true;
            }
            '*' if !in_quotes => {
                buf.push_str(".*");
                *nonempty = true;
            }
            '?' if !in_quotes => {
                buf.push('.');
                *nonempty = true;
            }
            '$' => {
                buf.push_str("\\$");
                *nonempty = true;
            }
            c => {
                // Inside quotes every regular expression character is
                // literal; outside, only the [] of an array type name.
                if (in_quotes && "|*+?()[]{}.^$\\".contains(c)) || (c == '[' && chars.peek() == Some(&']')) {
                    buf.push('\\');
                }
                buf.push(c);
                *nonempty = true;
            }
        }
    }
    if in_quotes {
        return Err(format!("{pattern:?} has an unterminated double quote"));
    }
    if parts.iter().any(|(_, nonempty)| !nonempty) {
        return Err(format!("{pattern:?} has an empty name (two dots in a row, a dot at an end, or \"\")"));
    }
    let anchored = |s: &str| format!("^({s})$");
    match (kind, parts.len()) {
        (Kind::Table, 1) | (Kind::Schema, 1) => Ok(Regexes { schema: None, name: anchored(&parts[0].0) }),
        (Kind::Table, 2) => Ok(Regexes { schema: Some(anchored(&parts[0].0)), name: anchored(&parts[1].0) }),
        (Kind::Schema, _) => Err(format!("{pattern:?} is not a schema name: it has an unquoted dot")),
        (Kind::Table, _) => Err(format!("{pattern:?} has too many dotted names: name a table as name or schema.name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: &str) -> Regexes {
        regexes(p, Kind::Table).unwrap()
    }

    #[test]
    fn names_and_wildcards_become_pg_dumps_regexes() {
        assert_eq!(t("Orders"), Regexes { schema: None, name: "^(orders)$".into() });
        assert_eq!(t("public.log_*"), Regexes { schema: Some("^(public)$".into()), name: "^(log_.*)$".into() });
        assert_eq!(t("a?c"), Regexes { schema: None, name: "^(a.c)$".into() });
        // Quoted: case kept, regular expression characters escaped, "" is one quote.
        assert_eq!(t("\"My.Table*\""), Regexes { schema: None, name: "^(My\\.Table\\*)$".into() });
        assert_eq!(t("\"a\"\"b\""), Regexes { schema: None, name: "^(a\"b)$".into() });
        assert_eq!(
            t("\"Sales\".\"Q1 2026\""),
            Regexes { schema: Some("^(Sales)$".into()), name: "^(Q1 2026)$".into() }
        );
        // $ is always literal; quotes, %, # and unicode are ordinary characters.
        assert_eq!(t("a$b").name, "^(a\\$b)$");
        assert_eq!(t("o'neil%#").name, "^(o'neil%#)$");
        assert_eq!(t("ÉtéÜ").name, "^(ÉtéÜ)$");
        // Outside quotes, regular expressions pass through, except the [] of an array type.
        assert_eq!(t("log_(a|b)").name, "^(log_(a|b))$");
        assert_eq!(t("int[]").name, "^(int\\[])$");
        assert_eq!(regexes("Audit", Kind::Schema).unwrap(), Regexes { schema: None, name: "^(audit)$".into() });
        assert_eq!(regexes("\"a.b\"", Kind::Schema).unwrap().name, "^(a\\.b)$");
    }

    #[test]
    fn what_could_be_an_option_or_is_malformed_is_refused() {
        for (p, kind) in [
            ("", Kind::Table),
            ("  ", Kind::Table),
            ("-t", Kind::Table),
            ("--format=plain", Kind::Schema),
            ("a\nb", Kind::Table),
            ("a\0b", Kind::Table),
            ("\"a\tb\"", Kind::Table),
            ("a b", Kind::Table),
            ("\"open", Kind::Table),
            ("a.", Kind::Table),
            (".a", Kind::Table),
            ("a..b", Kind::Table),
            ("\"\"", Kind::Table),
            ("db.s.t", Kind::Table),
            ("s.t", Kind::Schema),
            (&"x".repeat(MAX_LEN + 1), Kind::Table),
        ] {
            assert!(regexes(p, kind).is_err(), "{p:?} accepted as {kind:?}");
        }
        // A leading - is fine inside quotes, not as the first character.
        assert!(regexes("\"-t\"", Kind::Table).is_ok());
    }
}
