//! The docs stay true where a test can tell: every guarantee in
//! docs/guarantees.md names tests that exist.

use std::path::{Path, PathBuf};

/// Whether `code` has a test function `name`: `fn name(` right under a
/// `#[test]`, `#[tokio::test]` or `#[pg_test...]` attribute (other attributes and comments
/// between), and not `#[ignore]`d.
fn has_test(code: &str, name: &str) -> bool {
    let lines: Vec<&str> = code.lines().collect();
    lines.iter().enumerate().any(|(i, l)| {
        let l = l.trim_start();
        let attrs: Vec<&str> = lines[..i]
            .iter()
            .rev()
            .map(|a| a.trim())
            .take_while(|a| a.starts_with("#[") || a.starts_with("//") || a.starts_with(')'))
            .collect();
        (l.starts_with(&format!("fn {name}(")) || l.starts_with(&format!("async fn {name}(")))
            && attrs
                .iter()
                .any(|a| a.starts_with("#[test]") || a.starts_with("#[tokio::test") || a.starts_with("#[pg_test"))
            && !attrs.iter().any(|a| a.starts_with("#[ignore"))
    })
}

/// What a guarantee's proof cell names that does not exist: e2e tests
/// (`[`module::test`](../tests/tests/e2e/module.rs)`, or a whole
/// module: `[`module`](...)`), pgrx tests (`pgrx [`name`](../pgrx-tests/)`),
/// bare `name`s (more tests of the link before them), and files of unit
/// tests ("unit tests in `a`, `b` and `c`"). Also how many it names.
fn missing_in(proof: &str, root: &Path, pgrx: &str) -> (Vec<String>, usize) {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let parts: Vec<&str> = proof.split('`').collect();
    let (mut missing, mut named) = (Vec::new(), 0);
    // Where the bare names that follow a link are looked for.
    let mut context: Option<String> = None;
    let mut unit_files = false;
    for i in (1..parts.len()).step_by(2) {
        let (before, span, after) = (parts[i - 1], parts[i], parts.get(i + 1).copied().unwrap_or(""));
        named += 1;
        if before.contains("unit tests in") {
            unit_files = true;
        } else if before.contains('[') {
            unit_files = false;
        }
        if let Some(link) = after.strip_prefix("](") {
            let link = &link[..link.find(')').unwrap_or(link.len())];
            if link.contains("pgrx-tests") {
                context = Some(pgrx.to_string());
                if !has_test(pgrx, span.rsplit("::").next().unwrap_or(span)) {
                    missing.push(format!("pgrx {span}"));
                }
                continue;
            }
            let file: PathBuf = root.join("docs").join(link);
            let code = read(&file);
            context = Some(code.clone());
            let ok = match span.split_once("::") {
                Some((module, test)) => link.ends_with(&format!("/{module}.rs")) && has_test(&code, test),
                None => link.ends_with(&format!("/{span}.rs")) && code.contains("#[test]"),
            };
            if !ok {
                missing.push(format!("{span} ({link})"));
            }
        } else if unit_files {
            let code = read(&root.join(span));
            if !(code.contains("#[test]") || code.contains("#[tokio::test]")) {
                missing.push(format!("unit tests in {span}"));
            }
        } else {
            match &context {
                Some(code) if has_test(code, span) => {}
                _ => missing.push(format!("{span} (after the link before it)")),
            }
        }
    }
    (missing, named)
}

#[test]
fn every_guarantee_names_tests_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("docs/guarantees.md")).unwrap();
    let pgrx: String = std::fs::read_dir(root.join("pgrx-tests"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap() + "\n")
        .collect();
    let mut missing = Vec::new();
    let mut total = 0;
    for row in text.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| promise")) {
        let proof = row.rsplit('|').nth(1).unwrap_or_default();
        let (m, named) = missing_in(proof, &root, &pgrx);
        if named == 0 {
            missing.push(format!("a row that names no test: {}", &row[..row.len().min(60)]));
        }
        missing.extend(m);
        total += named;
    }
    assert!(total > 80, "found only {total} tests named");
    assert!(missing.is_empty(), "docs/guarantees.md names tests that do not exist: {missing:#?}");
}

#[test]
fn the_check_tells_a_test_from_what_is_not_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pgrx = "#[pg_test]\nfn real() {}\nfn helper() {}\n#[pg_test]\n#[ignore]\nfn ignored() {}\n";
    let (m, n) = missing_in("pgrx [`real`](../pgrx-tests/), `helper`, `ignored`", &root, pgrx);
    assert_eq!(
        (m, n),
        (vec!["helper (after the link before it)".to_string(), "ignored (after the link before it)".into()], 3)
    );
    let (m, _) =
        missing_in("[`nosuch::test`](../tests/tests/e2e/nosuch.rs), unit tests in `agent/src/nosuch.rs`", &root, pgrx);
    assert_eq!(m.len(), 2, "{m:?}");
    let (m, _) = missing_in("[`capture`](../tests/tests/e2e/restore.rs)", &root, pgrx);
    assert_eq!(m.len(), 1, "a link to another file than its name says: {m:?}");
}
