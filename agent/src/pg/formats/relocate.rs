//! Tables of an archive recreated in another schema, beside the live ones
//! (`restore_tables`): which entries of the table of contents come with
//! the chosen tables (their partitions, sequences, defaults, indexes and
//! constraints; not foreign keys, triggers or policies), and their SQL
//! with every name of what moves rewritten to the new schema. pg_dump
//! qualifies every name it writes, so the rewrite is on tokens (quoted
//! and unquoted identifiers, string literals, comments), never on text:
//! a type, function or table that does not move keeps its name.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{bail, Result};

use crate::pg::conn::quote;
use crate::pg::formats::custom::Entry;

/// What recreating the chosen tables runs, in order.
#[derive(Debug, Default)]
pub struct Plan {
    /// Before the data: tables, sequences, defaults, partitions attached.
    pub before: Vec<String>,
    /// The data: one per table with rows in the archive.
    pub data: Vec<Load>,
    /// After it: indexes, constraints, sequence values, comments.
    pub after: Vec<String>,
    /// The tables, as `schema.table` of the archive.
    pub tables: Vec<String>,
    /// What is not recreated, as `KIND name` (foreign keys, triggers...).
    pub left_out: Vec<String>,
}

/// One table's data: its entry, and the COPY that loads it in its new place.
#[derive(Debug)]
pub struct Load {
    pub id: i32,
    pub label: String,
    pub copy: String,
}

/// Entry types recreated before the data.
const BEFORE: &[&str] = &["TABLE", "SEQUENCE", "SEQUENCE OWNED BY", "DEFAULT", "TABLE ATTACH"];
/// Entry types recreated after it.
const AFTER: &[&str] = &["INDEX", "CONSTRAINT", "CHECK CONSTRAINT", "INDEX ATTACH", "SEQUENCE SET", "COMMENT"];
/// Entry types of a table that are left out, and said so.
const LEFT_OUT: &[&str] = &["FK CONSTRAINT", "TRIGGER", "POLICY", "ROW SECURITY", "RULE"];

/// The plan for TABLE entries `chosen` (partitions of a partitioned one
/// come with it) moved to schema `into`.
pub fn plan(entries: &[Entry], chosen: &HashSet<i32>, into: &str) -> Result<Plan> {
    let ids: HashMap<i32, &Entry> = entries.iter().map(|e| (e.id, e)).collect();
    let by_id = |id: i32| ids.get(&id).copied();
    let named: HashMap<(&str, &str), i32> =
        entries.iter().filter(|e| e.desc == "TABLE").map(|e| ((e.namespace.as_str(), e.tag.as_str()), e.id)).collect();
    let table_named = |s: &str, n: &str| named.get(&(s, n)).copied();
    // Partitions attached by a TABLE ATTACH entry (pg_dump 14 and later),
    // or by an ATTACH PARTITION inside the partition's own TABLE entry
    // (pg_dump 12 and 13): (parent, partition).
    let attached: Vec<(i32, i32)> = entries
        .iter()
        .filter(|e| e.desc == "TABLE ATTACH" || e.desc == "TABLE")
        .flat_map(|e| statements(e.defn.as_deref().unwrap_or_default()))
        .filter_map(|sql| attach_names(&sql))
        .filter_map(|((ps, pn), (cs, cn))| Some((table_named(&ps, &pn)?, table_named(&cs, &cn)?)))
        .collect();
    let mut tables: HashSet<i32> = chosen.clone();
    // A partitioned table brings its partitions, at any depth.
    loop {
        let before = tables.len();
        for &(parent, child) in &attached {
            if tables.contains(&parent) {
                tables.insert(child);
            }
        }
        for e in entries.iter().filter(|e| e.desc == "TABLE") {
            // pg_dump before 12: `CREATE TABLE p1 PARTITION OF p ...`.
            if !tables.contains(&e.id) && e.deps.iter().any(|d| tables.contains(d)) && partition_of(e).is_some() {
                tables.insert(e.id);
            }
        }
        if tables.len() == before {
            break;
        }
    }
    // Everything of theirs that comes along.
    let mut with: HashSet<i32> = tables.clone();
    for e in entries {
        let on_table = e.deps.iter().any(|d| tables.contains(d));
        let take = match e.desc.as_str() {
            "TABLE DATA" | "DEFAULT" | "INDEX" | "CONSTRAINT" | "CHECK CONSTRAINT" => on_table,
            // An identity column's sequence (`ALTER TABLE ... ADD GENERATED`).
            "SEQUENCE" => on_table,
            "SEQUENCE OWNED BY" => on_table,
            "TABLE ATTACH" => e.deps.iter().all(|d| tables.contains(d)) && !e.deps.is_empty(),
            _ => false,
        };
        if take {
            with.insert(e.id);
        }
    }
    // A serial column's sequence, owned by the table.
    let owned: Vec<i32> = entries
        .iter()
        .filter(|e| e.desc == "SEQUENCE OWNED BY" && with.contains(&e.id))
        .flat_map(|e| e.deps.iter().copied())
        .filter(|d| by_id(*d).is_some_and(|s| s.desc == "SEQUENCE"))
        .collect();
    with.extend(owned);
    loop {
        let before = with.len();
        for e in entries {
            let all_in = !e.deps.is_empty() && e.deps.iter().all(|d| with.contains(d));
            let take = match e.desc.as_str() {
                "SEQUENCE SET" | "INDEX ATTACH" | "SEQUENCE OWNED BY" => all_in,
                "COMMENT" => e.deps.iter().any(|d| with.contains(d)) && all_in,
                _ => false,
            };
            if take {
                with.insert(e.id);
            }
        }
        if with.len() == before {
            break;
        }
    }

    // The names that move: every relation, and every constraint (whose
    // index an INDEX ATTACH names).
    let mut moved: HashSet<(String, String)> = HashSet::new();
    for e in entries.iter().filter(|e| with.contains(&e.id)) {
        match e.desc.as_str() {
            "TABLE" | "SEQUENCE" | "INDEX" => {
                let name = if e.desc == "SEQUENCE" && !e.namespace.is_empty() {
                    sequence_name(e).unwrap_or_else(|| e.tag.clone())
                } else {
                    e.tag.clone()
                };
                moved.insert((e.namespace.clone(), name));
            }
            "CONSTRAINT" => {
                if let Some(name) = constraint_name(e) {
                    moved.insert((e.namespace.clone(), name));
                }
            }
            _ => {}
        }
    }

    let mut plan = Plan::default();
    let mut seen_tables = BTreeSet::new();
    for e in entries {
        if with.contains(&e.id) {
            let defn = e.defn.as_deref().unwrap_or_default();
            if e.desc == "TABLE" {
                seen_tables.insert(e.label.clone());
                check_parents(e, entries, &tables)?;
            }
            if e.desc == "TABLE DATA" {
                if let Some(copy) = &e.copy_stmt {
                    let copy = rewrite(copy, &moved, into, false);
                    let copy = copy.trim_end().trim_end_matches(';').to_string();
                    plan.data.push(Load { id: e.id, label: e.label.clone(), copy });
                }
                continue;
            }
            if defn.trim().is_empty() {
                continue;
            }
            for statement in statements(defn) {
                // A partition restored without its parent is a table of its
                // own: its ATTACH (pg_dump 12 and 13 write it in the
                // partition's entry) would join the live parent.
                if let Some(((ps, pn), _)) = attach_names(&statement) {
                    if !moved.contains(&(ps, pn)) {
                        continue;
                    }
                }
                let sql = rewrite(&statement, &moved, into, true);
                check_target(&sql, into, &e.label)?;
                if BEFORE.contains(&e.desc.as_str()) {
                    plan.before.push(sql);
                } else if AFTER.contains(&e.desc.as_str()) {
                    plan.after.push(sql);
                }
            }
        } else if LEFT_OUT.contains(&e.desc.as_str()) && e.deps.iter().any(|d| tables.contains(d)) {
            plan.left_out.push(format!("{} {}", e.desc, e.label));
        }
    }
    plan.tables = seen_tables.into_iter().collect();
    Ok(plan)
}

/// A table that inherits from, or is a partition (pg_dump before 12) of,
/// a table that does not move would join the live one: refuse.
fn check_parents(e: &Entry, entries: &[Entry], tables: &HashSet<i32>) -> Result<()> {
    let toks = tokens(e.defn.as_deref().unwrap_or_default());
    let mut parents = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if t.is_word("INHERITS") {
            let mut j = i + 1;
            while j < toks.len() && !toks[j].is_punct(')') {
                if let Some((s, n, _)) = qualified(&toks, j) {
                    parents.push((s, n));
                    j += 3;
                } else {
                    j += 1;
                }
            }
        }
    }
    if let Some(p) = partition_of(e) {
        parents.push(p);
    }
    for (s, n) in parents {
        let parent = entries.iter().find(|x| x.desc == "TABLE" && x.namespace == s && x.tag == n);
        if !parent.is_some_and(|p| tables.contains(&p.id)) {
            bail!(
                "{} inherits from {s}.{n}, which is not among the tables to restore: restored alone it would join the \
                 live {s}.{n}. Add {s}.{n} to the tables (its children come with it only if they match too)",
                e.label
            );
        }
    }
    Ok(())
}

/// `CREATE TABLE s.t PARTITION OF s.p ...`: the parent.
fn partition_of(e: &Entry) -> Option<(String, String)> {
    let toks = tokens(e.defn.as_deref()?);
    let i = toks.windows(2).position(|w| w[0].is_word("PARTITION") && w[1].is_word("OF"))?;
    qualified(&toks, i + 2).map(|(s, n, _)| (s, n))
}

/// `ALTER TABLE ONLY s.p ATTACH PARTITION s.c ...`: the parent's and the
/// partition's names.
fn attach_names(sql: &str) -> Option<((String, String), (String, String))> {
    let toks = tokens(sql);
    if !(toks.first()?.is_word("ALTER") && toks.get(1)?.is_word("TABLE")) {
        return None;
    }
    let at = toks.windows(2).position(|w| w[0].is_word("ATTACH") && w[1].is_word("PARTITION"))?;
    let only = toks.iter().position(|t| t.is_word("ONLY")).filter(|&i| i < at)?;
    let (ps, pn, _) = qualified(&toks, only + 1)?;
    let (cs, cn, _) = qualified(&toks, at + 2)?;
    Some(((ps, pn), (cs, cn)))
}

/// `sql` split into its statements, at the semicolons that end them.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    for t in tokens(sql) {
        if t.is_punct(';') {
            let s = sql[start..t.end].trim();
            if s.len() > 1 {
                out.push(s.to_string());
            }
            start = t.end;
        }
    }
    let rest = sql[start..].trim();
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// The last line of defence: every statement of the plan changes only
/// what is in schema `into` (the relation it creates, alters, comments on
/// or sets the value of). Anything else is refused before it runs.
fn check_target(sql: &str, into: &str, label: &str) -> Result<()> {
    let toks = tokens(sql);
    let words: Vec<String> = toks
        .iter()
        .take(4)
        .filter_map(|t| match &t.kind {
            Kind::Word(w) => Some(w.to_uppercase()),
            _ => None,
        })
        .collect();
    let first_in = |from: usize| -> Option<(String, String)> {
        (from..toks.len()).find_map(|i| {
            let (s, n, _) = qualified(&toks, i)?;
            (s != "pg_catalog" && !(i > 0 && toks[i - 1].is_punct('.'))).then_some((s, n))
        })
    };
    let target = match words.first().map(String::as_str) {
        // setval('s.seq', ...): the sequence in its literal.
        Some("SELECT") => toks.iter().find_map(|t| match &t.kind {
            Kind::Str(c) => qualified(&tokens(c), 0).map(|(s, n, _)| (s, n)),
            _ => None,
        }),
        Some("CREATE") if words.contains(&"INDEX".to_string()) => {
            let on = toks.iter().position(|t| t.is_word("ON"));
            on.and_then(first_in)
        }
        Some("CREATE") | Some("ALTER") | Some("COMMENT") => first_in(0),
        _ => None,
    };
    match target {
        Some((s, _)) if s == into => Ok(()),
        Some((s, n)) => bail!(
            "refusing to restore {label}: a statement of its definition would change {s}.{n}, outside schema {into}"
        ),
        None => bail!("refusing to restore {label}: a statement of its definition is not one a table restore runs"),
    }
}

/// The name a SEQUENCE entry creates: its tag, or for an identity column
/// the `SEQUENCE NAME` it gives.
fn sequence_name(e: &Entry) -> Option<String> {
    let toks = tokens(e.defn.as_deref()?);
    let i = toks.windows(2).position(|w| w[0].is_word("SEQUENCE") && w[1].is_word("NAME"))?;
    qualified(&toks, i + 2).map(|(_, n, _)| n)
}

/// `ALTER TABLE ONLY s.t ADD CONSTRAINT name ...`: the name.
fn constraint_name(e: &Entry) -> Option<String> {
    let toks = tokens(e.defn.as_deref()?);
    let i = toks.iter().position(|t| t.is_word("CONSTRAINT"))?;
    toks.get(i + 1)?.ident()
}

/// `sql` with the schema of every moved `schema.name` replaced by `into`;
/// with `literals`, also inside a string literal that is exactly such a
/// name and names a relation (`nextval('s.seq'::regclass)`,
/// `setval('s.seq', ...)`), never in one that is data.
pub fn rewrite(sql: &str, moved: &HashSet<(String, String)>, into: &str, literals: bool) -> String {
    let toks = tokens(sql);
    let mut out = String::with_capacity(sql.len() + 64);
    let mut last = 0;
    for i in 0..toks.len() {
        let t = &toks[i];
        match &t.kind {
            Kind::Ident(_) | Kind::Word(_) => {
                let after_dot = i > 0 && toks[i - 1].is_punct('.') && toks[i - 1].end == t.start;
                if after_dot {
                    continue;
                }
                if let Some((s, n, _)) = qualified(&toks, i) {
                    if moved.contains(&(s, n)) {
                        out.push_str(&sql[last..t.start]);
                        out.push_str(&quote::ident(into));
                        last = t.end;
                    }
                }
            }
            Kind::Str(content) if literals && names_a_relation(&toks, i) => {
                let inner = tokens(content);
                if inner.len() == 3 {
                    if let Some((s, n, _)) = qualified(&inner, 0) {
                        if moved.contains(&(s, n)) {
                            let renamed = rewrite(content, moved, into, false);
                            out.push_str(&sql[last..t.start]);
                            out.push_str(&quote::literal(&renamed));
                            last = t.end;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out.push_str(&sql[last..]);
    out
}

/// Whether string literal `i` names a relation: `'s.seq'::regclass`, or
/// the first argument of `setval(`.
fn names_a_relation(toks: &[Tok], i: usize) -> bool {
    // pg_dump --quote-all-identifiers writes "regclass" and "setval".
    let named = |t: Option<&Tok>, name: &str| t.and_then(Tok::ident).is_some_and(|n| n == name);
    let cast = toks.get(i + 1).is_some_and(|t| t.is_punct(':'))
        && toks.get(i + 2).is_some_and(|t| t.is_punct(':'))
        && named(toks.get(i + 3), "regclass");
    let setval = i >= 2 && toks[i - 1].is_punct('(') && named(toks.get(i - 2), "setval");
    cast || setval
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// An identifier, unquoted (as the server would read it).
    Ident(String),
    /// A keyword or identifier written without quotes, as written.
    Word(String),
    /// A string literal's content.
    Str(String),
    Punct(char),
}

#[derive(Debug, Clone)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

impl Tok {
    fn is_word(&self, w: &str) -> bool {
        matches!(&self.kind, Kind::Word(x) if x.eq_ignore_ascii_case(w))
    }
    fn is_punct(&self, c: char) -> bool {
        self.kind == Kind::Punct(c)
    }
    fn ident(&self) -> Option<String> {
        match &self.kind {
            Kind::Ident(s) => Some(s.clone()),
            Kind::Word(w) => Some(w.to_lowercase()),
            _ => None,
        }
    }
}

/// `schema . name` starting at token `i` (adjacent, as pg_dump writes it),
/// and the index after it.
fn qualified(toks: &[Tok], i: usize) -> Option<(String, String, usize)> {
    let (a, dot, b) = (toks.get(i)?, toks.get(i + 1)?, toks.get(i + 2)?);
    if !dot.is_punct('.') || a.end != dot.start || dot.end != b.start {
        return None;
    }
    Some((a.ident()?, b.ident()?, i + 3))
}

/// SQL as the server splits it, as far as names are concerned.
fn tokens(sql: &str) -> Vec<Tok> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'"' {
            let mut s = Vec::new();
            i += 1;
            while i < b.len() {
                if b[i] == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        s.push(b'"');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                s.push(b[i]);
                i += 1;
            }
            out.push(Tok { kind: Kind::Ident(String::from_utf8_lossy(&s).into_owned()), start, end: i });
        } else if c == b'\'' || ((c == b'E' || c == b'e') && b.get(i + 1) == Some(&b'\'')) {
            let escapes = c != b'\'';
            i += if escapes { 2 } else { 1 };
            let mut s = Vec::new();
            while i < b.len() {
                if escapes && b[i] == b'\\' && i + 1 < b.len() {
                    s.push(b[i + 1]);
                    i += 2;
                    continue;
                }
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        s.push(b'\'');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                s.push(b[i]);
                i += 1;
            }
            let kind = Kind::Str(String::from_utf8_lossy(&s).into_owned());
            // An E'' string is never a name to rewrite: keep it as it is.
            out.push(Tok { kind: if escapes { Kind::Punct('\'') } else { kind }, start, end: i });
        } else if c == b'$' && !out.last().is_some_and(|t: &Tok| t.end == i && matches!(t.kind, Kind::Word(_))) {
            // A dollar quote $tag$ ... $tag$, or a parameter $1.
            let mut j = i + 1;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            if j < b.len() && b[j] == b'$' && !b[i + 1..j].first().is_some_and(u8::is_ascii_digit) {
                let tag = &sql[i..=j];
                match sql[j + 1..].find(tag) {
                    Some(k) => i = j + 1 + k + tag.len(),
                    None => i = b.len(),
                }
                out.push(Tok { kind: Kind::Punct('$'), start, end: i });
            } else {
                i = j.max(i + 1);
                out.push(Tok { kind: Kind::Punct('$'), start, end: i });
            }
        } else if word(c) {
            while i < b.len() && word(b[i]) {
                i += 1;
            }
            out.push(Tok { kind: Kind::Word(sql[start..i].to_string()), start, end: i });
        } else {
            let ch = sql[i..].chars().next().unwrap_or('?');
            i += ch.len_utf8();
            out.push(Tok { kind: Kind::Punct(ch), start, end: i });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: i32, desc: &str, ns: &str, tag: &str, defn: &str, deps: &[i32]) -> Entry {
        Entry {
            id,
            had_dumper: desc == "TABLE DATA",
            desc: desc.into(),
            label: format!("{ns}.{tag}"),
            namespace: ns.into(),
            tag: tag.into(),
            copy_stmt: (desc == "TABLE DATA").then(|| format!("COPY {ns}.{tag} (id, v) FROM stdin;")),
            filename: None,
            defn: Some(defn.into()),
            deps: deps.to_vec(),
        }
    }

    #[test]
    fn names_that_move_are_rewritten_and_no_other() {
        let moved: HashSet<(String, String)> =
            [("public".into(), "orders".into()), ("public".into(), "orders_id_seq".into())].into();
        let sql =
            "CREATE TABLE public.orders (\n    id integer DEFAULT nextval('public.orders_id_seq'::regclass),\n    \
                   mood public.mood, note text DEFAULT 'public.orders', o public.orders_x,\n    \
                   CONSTRAINT c CHECK ((note <> 'public.orders'::text))\n);";
        let out = rewrite(sql, &moved, "restored_b001", false);
        assert!(out.starts_with("CREATE TABLE \"restored_b001\".orders ("), "{out}");
        assert!(out.contains("mood public.mood"), "{out}");
        assert!(out.contains("o public.orders_x"), "{out}");
        assert!(out.contains("'public.orders_id_seq'::regclass"), "literals untouched: {out}");
        let out = rewrite(
            "ALTER TABLE ONLY public.orders ALTER COLUMN id SET DEFAULT nextval('public.orders_id_seq'::regclass);",
            &moved,
            "r",
            true,
        );
        assert_eq!(
            out,
            "ALTER TABLE ONLY \"r\".orders ALTER COLUMN id SET DEFAULT nextval('\"r\".orders_id_seq'::regclass);"
        );
        let out = rewrite("ALTER SEQUENCE public.orders_id_seq OWNED BY public.orders.id;", &moved, "r", false);
        assert_eq!(out, "ALTER SEQUENCE \"r\".orders_id_seq OWNED BY \"r\".orders.id;");
        let odd: HashSet<(String, String)> = [("Odd \"S\"".into(), "T.x".into())].into();
        let out = rewrite("CREATE TABLE \"Odd \"\"S\"\"\".\"T.x\" (a int);", &odd, "new's", false);
        assert_eq!(out, "CREATE TABLE \"new's\".\"T.x\" (a int);");
    }

    #[test]
    fn a_table_brings_its_partitions_sequences_and_indexes_not_its_foreign_keys() {
        let entries = vec![
            entry(
                1,
                "TABLE",
                "public",
                "m",
                "CREATE TABLE public.m (id integer NOT NULL) PARTITION BY RANGE (id);",
                &[],
            ),
            entry(2, "TABLE", "public", "m1", "CREATE TABLE public.m1 (id integer NOT NULL);", &[]),
            entry(
                3,
                "TABLE ATTACH",
                "public",
                "m1",
                "ALTER TABLE ONLY public.m ATTACH PARTITION public.m1 FOR VALUES FROM (0) TO (10);",
                &[1, 2],
            ),
            entry(4, "SEQUENCE", "public", "m1_id_seq", "CREATE SEQUENCE public.m1_id_seq;", &[]),
            entry(
                5,
                "SEQUENCE OWNED BY",
                "public",
                "m1_id_seq",
                "ALTER SEQUENCE public.m1_id_seq OWNED BY public.m1.id;",
                &[4, 2],
            ),
            entry(6, "TABLE DATA", "public", "m1", "", &[2]),
            entry(
                7,
                "CONSTRAINT",
                "public",
                "m m_pkey",
                "ALTER TABLE ONLY public.m ADD CONSTRAINT m_pkey PRIMARY KEY (id);",
                &[1],
            ),
            entry(
                8,
                "CONSTRAINT",
                "public",
                "m1 m1_pkey",
                "ALTER TABLE ONLY public.m1 ADD CONSTRAINT m1_pkey PRIMARY KEY (id);",
                &[2],
            ),
            entry(
                9,
                "INDEX ATTACH",
                "public",
                "m1_pkey",
                "ALTER INDEX public.m_pkey ATTACH PARTITION public.m1_pkey;",
                &[7, 8],
            ),
            entry(
                10,
                "FK CONSTRAINT",
                "public",
                "m1 fk",
                "ALTER TABLE public.m1 ADD CONSTRAINT fk FOREIGN KEY (id) REFERENCES public.other(id);",
                &[2],
            ),
            entry(
                11,
                "SEQUENCE SET",
                "public",
                "m1_id_seq",
                "SELECT pg_catalog.setval('public.m1_id_seq', 5, true);",
                &[4],
            ),
            entry(12, "TABLE", "public", "other", "CREATE TABLE public.other (id integer);", &[]),
        ];
        let p = plan(&entries, &[1].into(), "r").unwrap();
        assert_eq!(p.tables, vec!["public.m", "public.m1"]);
        assert_eq!(p.data.len(), 1);
        assert_eq!(p.data[0].copy, "COPY \"r\".m1 (id, v) FROM stdin");
        assert_eq!(p.before.len(), 5, "{:?}", p.before);
        assert!(p.before[2].contains("\"r\".m ATTACH PARTITION \"r\".m1"), "{:?}", p.before);
        assert_eq!(p.after.last().unwrap(), "SELECT pg_catalog.setval('\"r\".m1_id_seq', 5, true);");
        assert!(
            p.after.contains(&"ALTER INDEX \"r\".m_pkey ATTACH PARTITION \"r\".m1_pkey;".to_string()),
            "{:?}",
            p.after
        );
        assert_eq!(p.left_out, vec!["FK CONSTRAINT public.m1 fk"]);
        assert!(p.after.iter().chain(&p.before).all(|s| !s.contains("public.other")));
        // A partition alone is a table of its own, not attached to the live parent.
        let p = plan(&entries, &[2].into(), "r").unwrap();
        assert_eq!(p.tables, vec!["public.m1"]);
        assert!(p.before.iter().all(|s| !s.contains("ATTACH")));
    }

    #[test]
    fn an_attach_in_a_partitions_own_entry_never_reaches_the_live_parent() {
        // pg_dump 12 and 13 write the ATTACH in the partition's TABLE entry.
        let entries = vec![
            entry(1, "TABLE", "public", "m", "CREATE TABLE public.m (id integer) PARTITION BY RANGE (id);", &[]),
            entry(2, "TABLE", "public", "m1", "CREATE TABLE public.m1 (id integer);\nALTER TABLE ONLY public.m ATTACH PARTITION public.m1 FOR VALUES FROM (0) TO (10);", &[1]),
        ];
        let p = plan(&entries, &[2].into(), "r").unwrap();
        assert_eq!(p.before, vec!["CREATE TABLE \"r\".m1 (id integer);"]);
        let p = plan(&entries, &[1].into(), "r").unwrap();
        assert_eq!(p.tables, vec!["public.m", "public.m1"]);
        assert_eq!(p.before[2], "ALTER TABLE ONLY \"r\".m ATTACH PARTITION \"r\".m1 FOR VALUES FROM (0) TO (10);");
    }

    #[test]
    fn a_statement_that_would_change_anything_outside_the_new_schema_is_refused() {
        let entries = vec![
            entry(1, "TABLE", "public", "t", "CREATE TABLE public.t (id integer);", &[]),
            entry(
                2,
                "INDEX",
                "public",
                "t_i",
                "CREATE INDEX t_i ON public.t (id); ALTER TABLE public.other ADD COLUMN x int;",
                &[1],
            ),
        ];
        let e = plan(&entries, &[1].into(), "r").unwrap_err().to_string();
        assert!(e.contains("would change public.other, outside schema r"), "{e}");
        let entries =
            vec![entry(1, "TABLE", "public", "t", "CREATE TABLE public.t (id integer); DROP TABLE public.t;", &[])];
        assert!(plan(&entries, &[1].into(), "r").is_err());
        // A literal that is data stays as it is, even when it reads like a moved name.
        let moved: HashSet<(String, String)> = [("public".into(), "t".into())].into();
        let out = rewrite("ALTER TABLE ONLY public.t ALTER COLUMN n SET DEFAULT 'public.t'::text;", &moved, "r", true);
        assert_eq!(out, "ALTER TABLE ONLY \"r\".t ALTER COLUMN n SET DEFAULT 'public.t'::text;");
    }

    #[test]
    fn a_child_of_a_table_that_stays_is_refused() {
        let entries = vec![
            entry(1, "TABLE", "public", "parent", "CREATE TABLE public.parent (id integer);", &[]),
            entry(
                2,
                "TABLE",
                "public",
                "child",
                "CREATE TABLE public.child (x integer)\nINHERITS (public.parent);",
                &[1],
            ),
        ];
        let e = plan(&entries, &[2].into(), "r").unwrap_err().to_string();
        assert!(e.contains("public.child inherits from public.parent"), "{e}");
        assert!(plan(&entries, &[1, 2].into(), "r").is_ok());
    }

    /// A serial column as pg_dump writes it (the sequence depends on its
    /// table; OWNED BY on the sequence), with --quote-all-identifiers.
    #[test]
    fn a_serial_columns_sequence_moves_with_it_however_pg_dump_quotes() {
        let entries = vec![
            entry(1, "TABLE", "public", "orders", "CREATE TABLE \"public\".\"orders\" (\n    \"id\" integer NOT NULL\n);\n", &[]),
            entry(2, "SEQUENCE", "public", "orders_id_seq", "CREATE SEQUENCE \"public\".\"orders_id_seq\"\n    AS integer\n    CACHE 1;\n", &[1]),
            entry(3, "SEQUENCE OWNED BY", "public", "orders_id_seq", "ALTER SEQUENCE \"public\".\"orders_id_seq\" OWNED BY \"public\".\"orders\".\"id\";\n", &[2]),
            entry(4, "DEFAULT", "public", "orders id", "ALTER TABLE ONLY \"public\".\"orders\" ALTER COLUMN \"id\" SET DEFAULT \"nextval\"('\"public\".\"orders_id_seq\"'::\"regclass\");\n", &[1, 2]),
            entry(5, "SEQUENCE SET", "public", "orders_id_seq", "SELECT \"pg_catalog\".\"setval\"('\"public\".\"orders_id_seq\"', 5000, true);\n", &[2]),
        ];
        let p = plan(&entries, &[1].into(), "r").unwrap();
        assert_eq!(p.before.len(), 4, "{:#?}", p.before);
        assert_eq!(p.before[2], "ALTER SEQUENCE \"r\".\"orders_id_seq\" OWNED BY \"r\".\"orders\".\"id\";");
        assert_eq!(
            p.before[3],
            "ALTER TABLE ONLY \"r\".\"orders\" ALTER COLUMN \"id\" SET DEFAULT \"nextval\"('\"r\".\"orders_id_seq\"'::\"regclass\");"
        );
        assert_eq!(p.after, vec!["SELECT \"pg_catalog\".\"setval\"('\"r\".\"orders_id_seq\"', 5000, true);"]);
    }
}
