//! The agent's source layout keeps its promise: no file imports (through
//! `crate::...` paths) a file that imports it back, however indirectly, and
//! every file says in its first line why it exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`transfer::capture`) -> source text, without its unit tests.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(&root).unwrap().with_extension("");
                let mut name = rel.to_string_lossy().replace('/', "::");
                if let Some(m) = name.strip_suffix("::mod") {
                    name = m.to_string();
                }
                let text = std::fs::read_to_string(&p).unwrap();
                let code = match text.find("#[cfg(test)]\nmod tests") {
                    Some(i) => text[..i].to_string(),
                    None => text,
                };
                out.insert(if name == "main" { String::new() } else { name }, code);
            }
        }
    }
    out
}

/// The modules `code` names through `crate::` paths, resolved to files.
fn imports(code: &str, files: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        let mut targets = vec![path.trim_end_matches(':').to_string()];
        // `crate::transfer::{capture, copy}`
        if let Some(group) = rest[path.len()..].strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(0)];
            for item in group.split(',') {
                let item = item.split_whitespace().next().unwrap_or("");
                targets.push(format!("{}{}", path, item));
            }
        }
        for t in targets {
            let parts: Vec<&str> = t.split("::").filter(|p| !p.is_empty()).collect();
            if let Some(m) = (1..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|m| files.contains_key(m)) {
                out.insert(m);
            }
        }
    }
    out
}

#[test]
fn no_file_imports_one_that_imports_it() {
    let files = modules();
    let graph: BTreeMap<&String, BTreeSet<String>> =
        files.iter().map(|(m, code)| (m, imports(code, &files).into_iter().filter(|t| t != m).collect())).collect();
    // Depth-first search for a back edge.
    fn visit<'a>(
        m: &'a String,
        graph: &'a BTreeMap<&'a String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a String, u8>,
        path: &mut Vec<&'a String>,
    ) -> Option<String> {
        state.insert(m, 1);
        path.push(m);
        for t in &graph[m] {
            match state.get(t) {
                Some(1) => {
                    let from = path.iter().position(|p| *p == t).unwrap();
                    let cycle: Vec<&str> = path[from..].iter().map(|s| s.as_str()).chain([t.as_str()]).collect();
                    return Some(cycle.join(" -> "));
                }
                None => {
                    let (key, _) = graph.get_key_value(t).unwrap();
                    if let Some(c) = visit(key, graph, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(m, 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if !state.contains_key(m) {
            if let Some(cycle) = visit(m, &graph, &mut state, &mut Vec::new()) {
                panic!("import cycle: {cycle}");
            }
        }
    }
    assert!(files.len() > 20, "found only {} files", files.len());
}

#[test]
fn every_file_says_why_it_exists() {
    for (m, code) in modules() {
        assert!(code.starts_with("//! "), "{m:?} does not start with a //! line");
    }
}

/// The map at the top of main.rs names every module (the last part of its
/// path, as a word), so that it never falls behind the tree.
#[test]
fn the_map_names_every_module() {
    let files = modules();
    let map: String = files[""].lines().take_while(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
    let words: BTreeSet<&str> =
        map.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
    let missing: Vec<&String> =
        files.keys().filter(|m| !m.is_empty()).filter(|m| !words.contains(m.rsplit("::").next().unwrap())).collect();
    assert!(missing.is_empty(), "the map at the top of main.rs does not name {missing:?}");
}

/// The layers hold: what talks to PostgreSQL (`pg`) and to storage
/// (`store`) never reaches up into transfers or what is served, and the
/// settings (`config`) into neither.
#[test]
fn the_layers_hold() {
    let files = modules();
    let mut broken = Vec::new();
    for (m, code) in &files {
        let low = m.starts_with("pg") || m.starts_with("store") || m == "config";
        if !low {
            continue;
        }
        for t in imports(code, &files) {
            if t.starts_with("transfer") || t.starts_with("serve") || t == "agent" {
                broken.push(format!("{m} imports {t}"));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:?}");
}

/// No statement that changes a customer's cluster is written outside
/// `pg/cluster/` (its `Cluster` owns them): no DDL literal in `transfer/`.
#[test]
fn transfers_send_the_cluster_no_ddl_of_their_own() {
    let files = modules();
    let mut found = Vec::new();
    for (m, code) in files.iter().filter(|(m, _)| m.starts_with("transfer")) {
        for verb in ["CREATE ", "DROP ", "ALTER ", "GRANT ", "REVOKE ", "COMMENT ON"] {
            if code.contains(&format!("\"{verb}")) {
                found.push(format!("{m}: {verb}"));
            }
        }
    }
    assert!(found.is_empty(), "DDL outside pg/cluster: {found:?}");
}
