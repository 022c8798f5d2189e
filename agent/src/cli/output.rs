//! How the shell verbs print: rows as an aligned table or, with `--json`,
//! an array of objects; one record as `field: value` lines or one object.
//! Values are text, as psql shows them; NULL is empty (JSON null).

use serde_json::{Map, Value};

/// Rows of text values under `columns`.
pub fn rows(columns: &[String], rows: &[Vec<Option<String>>], json: bool) {
    if json {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| {
                Value::Object(
                    columns
                        .iter()
                        .cloned()
                        .zip(r.iter().map(|v| v.clone().map_or(Value::Null, Value::String)))
                        .collect(),
                )
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
        return;
    }
    let width: Vec<usize> = (0..columns.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].as_deref().unwrap_or("").chars().count())
                .chain([columns[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&width).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(String::as_str).collect());
    line(width.iter().map(|w| "─".repeat(*w)).collect::<Vec<_>>().iter().map(String::as_str).collect());
    for r in rows {
        line(r.iter().map(|v| v.as_deref().unwrap_or("")).collect());
    }
}

/// One record: `field: value` lines, or one JSON object.
pub fn record(fields: &[(String, Option<String>)], json: bool) {
    if json {
        let o: Map<String, Value> =
            fields.iter().map(|(k, v)| (k.clone(), v.clone().map_or(Value::Null, Value::String))).collect();
        println!("{}", serde_json::to_string_pretty(&Value::Object(o)).expect("JSON"));
        return;
    }
    let width = fields.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    for (k, v) in fields {
        let v = v.as_deref().unwrap_or("");
        let mut lines = v.lines();
        println!("{:<width$}  {}", format!("{k}:"), lines.next().unwrap_or("").trim_end(), width = width + 1);
        for more in lines {
            println!("{:<width$}  {}", "", more.trim_end(), width = width + 1);
        }
    }
}

/// One value (an id, a link); JSON: `{"<name>": value}`.
pub fn scalar(name: &str, value: Option<&str>, json: bool) {
    if json {
        let mut o = Map::new();
        o.insert(name.to_string(), value.map_or(Value::Null, |v| Value::String(v.to_string())));
        println!("{}", Value::Object(o));
    } else if let Some(v) = value.filter(|v| !v.is_empty()) {
        println!("{v}");
    }
}
