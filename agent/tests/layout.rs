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

/// The paths a `use` group names: `a, b::{c, d}` under `x::` is `x::a`,
/// `x::b::c`, `x::b::d` (groups nest).
fn expand(prefix: &str, group: &str) -> Vec<String> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, ch) in group.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    let mut out = Vec::new();
    for item in items.into_iter().map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('{') {
            Some((head, rest)) => {
                out.extend(expand(&format!("{prefix}{head}"), rest.strip_suffix('}').unwrap_or(rest)))
            }
            None => out.push(format!("{prefix}{}", item.split_whitespace().next().unwrap_or(""))),
        }
    }
    out
}

/// The modules the code of module `module` names through `crate::`,
/// `super::` and `self::` paths, resolved to files.
fn imports(module: &str, code: &str, files: &BTreeMap<String, String>) -> BTreeSet<String> {
    let parent = |m: &str| m.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_string());
    let mut out = BTreeSet::new();
    let mut rest = code;
    loop {
        let next = ["crate::", "super::", "self::"]
            .iter()
            .filter_map(|k| {
                rest.match_indices(k)
                    .find(|(i, _)| !rest[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':'))
                    .map(|(i, _)| (i, *k))
            })
            .min();
        let Some((i, keyword)) = next else { break };
        rest = &rest[i + keyword.len()..];
        let mut base = match keyword {
            "crate::" => String::new(),
            "super::" => parent(module),
            _ => module.to_string(),
        };
        while let Some(r) = rest.strip_prefix("super::") {
            base = parent(&base);
            rest = r;
        }
        let local: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        let after = &rest[local.len()..];
        let path = if base.is_empty() { local.clone() } else { format!("{base}::{local}") };
        let mut targets = vec![path.trim_end_matches(':').to_string()];
        // `crate::transfer::{kinds::{Job, Row}, job}`
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, ch)| {
                    depth += match ch {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            targets.extend(expand(&path, &group[..end]));
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
fn imports_are_read_through_nested_groups_and_relative_paths() {
    let files: BTreeMap<String, String> =
        ["transfer", "transfer::kinds", "transfer::job", "pg::conn", "pg::conn::quote"]
            .map(|m| (m.to_string(), String::new()))
            .into();
    let code = "use crate::transfer::{kinds::{Job, Row}, job::Claimed};\nuse crate::pg::conn::{self, quote::ident};";
    assert_eq!(
        imports("x", code, &files).into_iter().collect::<Vec<_>>(),
        ["pg::conn", "pg::conn::quote", "transfer", "transfer::job", "transfer::kinds"]
    );
    // Relative paths: from `transfer::kinds::copy`, and from `pg::conn`.
    assert_eq!(
        imports("transfer::kinds::copy", "use super::Job; use super::super::job;", &files)
            .into_iter()
            .collect::<Vec<_>>(),
        ["transfer::job", "transfer::kinds"]
    );
    assert_eq!(
        imports("pg::conn", "self::quote::ident(x)", &files).into_iter().collect::<Vec<_>>(),
        ["pg::conn::quote"]
    );
}

#[test]
fn no_file_imports_one_that_imports_it() {
    let files = modules();
    let graph: BTreeMap<&String, BTreeSet<String>> =
        files.iter().map(|(m, code)| (m, imports(m, code, &files).into_iter().filter(|t| t != m).collect())).collect();
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

/// The map at the top of main.rs names every module in its folder's entry
/// (a file by the last part of its path, as a word; a folder by its own
/// entry, `name/`), so that it never falls behind the tree.
#[test]
fn the_map_names_every_module() {
    let files = modules();
    let map: Vec<&str> = files[""]
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();
    // Folder ("pg/cluster/"; "" for the files at the top) -> its entry.
    let mut entries: BTreeMap<String, String> = BTreeMap::new();
    let (mut top, mut current) = (String::new(), String::new());
    for line in map {
        let first = line.split_whitespace().next().unwrap_or("");
        if !line.starts_with(' ') {
            top = if first.ends_with('/') { first.to_string() } else { String::new() };
            current = top.clone();
        } else if line.starts_with("  ") && !line.starts_with("   ") && first.ends_with('/') {
            current = format!("{top}{first}");
        }
        let entry = entries.entry(current.clone()).or_default();
        entry.push_str(line);
        entry.push('\n');
    }
    let words = |text: &str| -> BTreeSet<String> {
        text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .map(|w| w.trim_end_matches('.').to_string())
            .chain(text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')).map(str::to_string))
            .collect()
    };
    let mut missing = Vec::new();
    for m in files.keys().filter(|m| !m.is_empty()) {
        let parts: Vec<&str> = m.split("::").collect();
        let folder_module = files.keys().any(|o| o.starts_with(&format!("{m}::")));
        let ok = if folder_module {
            entries.contains_key(&format!("{}/", parts.join("/")))
        } else {
            let folder: String = parts[..parts.len() - 1].iter().map(|p| format!("{p}/")).collect();
            let name = parts[parts.len() - 1];
            let shown = if folder.is_empty() { format!("{name}.rs") } else { name.to_string() };
            entries.get(&folder).is_some_and(|e| words(e).contains(&shown))
        };
        if !ok {
            missing.push(m.clone());
        }
    }
    assert!(missing.is_empty(), "the map at the top of main.rs does not name {missing:?} in its folder's entry");
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
        for t in imports(m, code, &files) {
            if t.starts_with("transfer") || t.starts_with("serve") || t == "agent" {
                broken.push(format!("{m} imports {t}"));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:?}");
}

/// The statements in `code`'s strings that change a cluster: a string,
/// or a statement after a `;` or in a quoted `EXECUTE '...'`, that starts
/// with DDL, in any case or after any whitespace (raw strings too).
/// Comment lines are left out.
fn ddl_in(code: &str) -> Vec<String> {
    const VERBS: [&str; 11] = [
        "create ",
        "drop ",
        "alter ",
        "grant ",
        "revoke ",
        "comment on",
        "reassign ",
        "security label",
        "truncate ",
        "reindex ",
        "lock table",
    ];
    let code: String =
        code.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| l.to_lowercase() + "\n").collect();
    let mut found = Vec::new();
    let starts = code.match_indices('"').chain(code.match_indices(';')).chain(code.match_indices("execute '"));
    for (i, m) in starts {
        let text = code[i + m.len()..].trim_start();
        if VERBS.iter().any(|v| text.starts_with(v)) {
            found.push(text.chars().take(40).collect());
        }
    }
    found
}

/// No statement that changes a customer's cluster is written outside
/// `pg/cluster/` (its `Cluster` owns them).
#[test]
fn nothing_outside_pg_cluster_sends_the_cluster_ddl() {
    let found: Vec<String> = modules()
        .iter()
        .filter(|(m, _)| !m.starts_with("pg::cluster"))
        // It reads an archive's CREATE EXTENSION lines; it sends nothing.
        .filter(|(m, _)| *m != "pg::formats::archive")
        .flat_map(|(m, code)| ddl_in(code).into_iter().map(move |d| format!("{m}: {d}")))
        .collect();
    assert!(found.is_empty(), "DDL outside pg/cluster: {found:?}");
}

#[test]
fn the_ddl_check_sees_ddl_however_written() {
    for code in ["x(\"DROP DATABASE {}\")", "x(r#\"\n   grant all on\"#)", "x(\" Create role\")", "x(\"COMMENT ON x\")"]
    {
        assert_eq!(ddl_in(code).len(), 1, "{code}");
    }
    for code in [
        "x(\"BEGIN; DROP DATABASE x\")",
        "x(\"DO $$ BEGIN EXECUTE 'GRANT x TO y'; END $$\")",
        "x(\"SET a = 1;\n truncate t\")",
    ] {
        assert_eq!(ddl_in(code).len(), 1, "{code}");
    }
    assert!(ddl_in("x(\"dropping {name}\"); y(\"SELECT 1\")").is_empty());
    assert!(ddl_in("// a comment's \" quote\nx(\"SELECT 1\")").is_empty());
}
