//! Transfer names, as Heroku has them: a letter for the kind and a number of
//! at least three digits: `b001` manual backup, `a001` scheduled backup,
//! `r001` restore, `c001` copy; and ours, `v001` verification. Which letter
//! names which kind is the extension's (`backups.kinds`, each kind's SQL
//! file registers its own).

/// `format_name('b', 7) == "b007"`; `format_name('b', 1234) == "b1234"`.
pub fn format_name(prefix: char, number: i64) -> String {
    format!("{prefix}{number:03}")
}

/// Whether `s` looks like a transfer name (`b001`, `a1234`): a lowercase
/// letter, then three digits or more.
pub fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase()) && s.len() >= 4 && chars.all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_digits_then_more() {
        assert_eq!(format_name('b', 1), "b001");
        assert_eq!(format_name('a', 42), "a042");
        assert_eq!(format_name('r', 999), "r999");
        assert_eq!(format_name('c', 1000), "c1000");
    }

    #[test]
    fn recognises_names() {
        assert!(is_name("b001") && is_name("a1234") && is_name("r010") && is_name("c999"));
        assert!(!is_name("b01") && !is_name("B001") && !is_name("b00a") && !is_name("") && !is_name("https://x"));
        assert!(!is_name("/") && !is_name("b0/1") && !is_name("é001"));
    }
}
