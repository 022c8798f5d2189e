//! The docs stay true where a test can tell: every guarantee in
//! docs/guarantees.md names tests that exist.

use std::path::Path;

/// `[`module::test`](../tests/tests/e2e/module.rs)` and pgrx `name`s.
#[test]
fn every_guarantee_names_tests_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("docs/guarantees.md")).unwrap();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let pgrx: String = std::fs::read_dir(root.join("pgrx-tests")).unwrap().flatten().map(|e| read(&e.path())).collect();
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
                if !pgrx.contains(&format!("fn {test}(")) {
                    missing.push(format!("pgrx {name}"));
                }
            } else if let Some((module, test)) = name.split_once("::") {
                let file = root.join(format!("tests/tests/e2e/{module}.rs"));
                named += 1;
                if !file.exists() || !read(&file).contains(&format!("fn {test}(")) {
                    missing.push(name.to_string());
                }
            }
        }
    }
    assert!(named > 50, "found only {named} tests named");
    assert!(missing.is_empty(), "docs/guarantees.md names tests that do not exist: {missing:?}");
}
