//! The docs stay true where a test can tell: every guarantee in
//! docs/guarantees.md names tests that exist.

use std::path::Path;

/// Whether `code` has a test function `name`: `fn name(` right under a
/// `#[test]` or `#[pg_test...]` attribute (other attributes between).
fn has_test(code: &str, name: &str) -> bool {
    let lines: Vec<&str> = code.lines().collect();
    lines.iter().enumerate().any(|(i, l)| {
        let l = l.trim_start();
        (l.starts_with(&format!("fn {name}(")) || l.starts_with(&format!("async fn {name}(")))
            && lines[..i]
                .iter()
                .rev()
                .map(|a| a.trim())
                .take_while(|a| a.starts_with("#[") || a.starts_with("//"))
                .any(|a| a.starts_with("#[test]") || a.starts_with("#[pg_test"))
    })
}

/// `[`module::test`](../tests/tests/e2e/module.rs)`, pgrx `name`s and
/// "unit tests in `path`"; every row names at least one.
#[test]
fn every_guarantee_names_tests_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("docs/guarantees.md")).unwrap();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let pgrx: String =
        std::fs::read_dir(root.join("pgrx-tests")).unwrap().flatten().map(|e| read(&e.path()) + "\n").collect();
    let mut missing = Vec::new();
    let mut named = 0;
    for row in text.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| promise")) {
        let proof = row.rsplit('|').nth(1).unwrap_or_default();
        // e2e tests: [`module::name`](../tests/tests/e2e/module.rs)
        for part in proof.split("[`").skip(1) {
            let Some((name, _)) = part.split_once('`') else { continue };
            if proof.contains(&format!("pgrx [`{name}`]")) {
                named += 1;
                let test = name.rsplit("::").next().unwrap_or(name);
                if !has_test(&pgrx, test) {
                    missing.push(format!("pgrx {name}"));
                }
            } else if let Some((module, test)) = name.split_once("::") {
                let file = root.join(format!("tests/tests/e2e/{module}.rs"));
                named += 1;
                if !file.exists() || !has_test(&read(&file), test) {
                    missing.push(name.to_string());
                }
            }
        }
        // Unit tests: "unit tests in `path`", a file that has some.
        for part in proof.split("unit tests in `").skip(1) {
            let path = part.split('`').next().unwrap_or_default();
            named += 1;
            let file = root.join(path);
            if !file.exists() || !read(&file).contains("#[cfg(test)]") {
                missing.push(format!("unit tests in {path}"));
            }
        }
        if !proof.contains("[`") && !proof.contains("unit tests in `") {
            missing.push(format!("a row that names no test: {}", &row[..row.len().min(60)]));
        }
    }
    assert!(named > 50, "found only {named} tests named");
    assert!(missing.is_empty(), "docs/guarantees.md names tests that do not exist: {missing:?}");
}
