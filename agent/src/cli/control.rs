//! The verbs that call the SQL functions of the control database, as a
//! person in psql would: the extension checks, queues and answers; this
//! file only builds the call, prints the answer and, with `--wait`,
//! follows a transfer to its end (exit non-zero unless it completed).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::cli::output;
use crate::config::StoreConfig;
use crate::pg::conn::{self, quote::literal};

/// `backups.<function>(args)`, every argument a quoted literal.
pub struct Call {
    function: &'static str,
    args: Vec<String>,
}

impl Call {
    pub fn new(function: &'static str) -> Call {
        Call { function, args: Vec::new() }
    }

    /// A positional argument.
    pub fn arg(mut self, value: &str) -> Call {
        self.args.push(literal(value));
        self
    }

    /// A trailing positional argument, left to its default when None.
    pub fn opt(self, value: Option<&str>) -> Call {
        match value {
            Some(v) => self.arg(v),
            None => self,
        }
    }

    /// A positional `text[]` argument.
    pub fn array(mut self, values: &[String]) -> Call {
        let items: Vec<String> = values.iter().map(|v| literal(v)).collect();
        self.args.push(format!("ARRAY[{}]::text[]", items.join(", ")));
        self
    }

    /// `name => value`, left to its default when None.
    pub fn named(mut self, name: &str, value: Option<&str>) -> Call {
        if let Some(v) = value {
            self.args.push(format!("{name} => {}", literal(v)));
        }
        self
    }

    fn sql(&self) -> String {
        format!("SELECT backups.{}({})::text", self.function, self.args.join(", "))
    }
}

/// A server's error as psql shows it: its message, and its hint.
fn explain(e: tokio_postgres::Error) -> anyhow::Error {
    match e.as_db_error() {
        Some(d) => match d.hint() {
            Some(h) => anyhow::anyhow!("{}\nHINT: {h}", d.message()),
            None => anyhow::anyhow!("{}", d.message()),
        },
        None => anyhow::Error::from(e),
    }
}

async fn connect(cfg: &StoreConfig) -> Result<Client> {
    conn::connect_with_retry(cfg.control()?, Duration::from_secs(10)).await.context("cannot reach the control database")
}

/// Columns and text rows of `sql`.
async fn query(client: &Client, sql: &str) -> Result<(Vec<String>, Vec<Vec<Option<String>>>)> {
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in client.simple_query(sql).await.map_err(explain)? {
        match m {
            SimpleQueryMessage::RowDescription(cols) => columns = cols.iter().map(|c| c.name().to_string()).collect(),
            SimpleQueryMessage::Row(r) => {
                if columns.is_empty() {
                    columns = r.columns().iter().map(|c| c.name().to_string()).collect();
                }
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
            }
            _ => {}
        }
    }
    Ok((columns, rows))
}

/// The one value of a call (its id, its link), printed.
pub async fn scalar(cfg: &StoreConfig, call: Call, json: bool) -> Result<()> {
    let value = call_value(&connect(cfg).await?, &call).await?;
    output::scalar(call.function, value.as_deref(), json);
    Ok(())
}

async fn call_value(client: &Client, call: &Call) -> Result<Option<String>> {
    let (_, rows) = query(client, &call.sql()).await?;
    Ok(rows.into_iter().next().and_then(|r| r.into_iter().next().flatten()))
}

/// A call whose answer is shown otherwise (`schedule`, then the schedules).
pub async fn call(cfg: &StoreConfig, call: Call) -> Result<()> {
    call_value(&connect(cfg).await?, &call).await.map(|_| ())
}

/// Rows of `sql`, printed.
pub async fn table(cfg: &StoreConfig, sql: &str, json: bool) -> Result<()> {
    let (columns, rows) = query(&connect(cfg).await?, sql).await?;
    output::rows(&columns, &rows, json);
    Ok(())
}

/// `info(id)`: field and value lines.
pub async fn info(cfg: &StoreConfig, id: Option<String>, json: bool) -> Result<()> {
    let sql = format!("SELECT field, value FROM backups.info({})", id.as_deref().map(literal).unwrap_or("NULL".into()));
    let (_, rows) = query(&connect(cfg).await?, &sql).await?;
    let fields: Vec<(String, Option<String>)> =
        rows.into_iter().map(|mut r| (r[0].take().unwrap_or_default(), r[1].take())).collect();
    output::record(&fields, json);
    Ok(())
}

/// `url(id)`.
pub async fn url(cfg: &StoreConfig, id: Option<String>, json: bool) -> Result<()> {
    scalar(cfg, Call::new("url").opt(id.as_deref()), json).await
}

/// `capture(database, jobs)`, then as `queue`.
pub async fn capture(
    cfg: &StoreConfig,
    database: Option<String>,
    jobs: Option<i32>,
    wait: bool,
    json: bool,
) -> Result<()> {
    let jobs = jobs.map(|j| j.to_string());
    let call = Call::new("capture").named("database", database.as_deref()).named("jobs", jobs.as_deref());
    queue(cfg, call, wait, json).await
}

/// A call that queues a transfer: its id printed, then with `wait` its
/// progress until it ends; an end other than `completed` is an error.
pub async fn queue(cfg: &StoreConfig, call: Call, wait: bool, json: bool) -> Result<()> {
    let client = connect(cfg).await?;
    let id = call_value(&client, &call).await?.context("the call queued nothing")?;
    if !wait {
        output::scalar("id", Some(&id), json);
        return Ok(());
    }
    if !json {
        eprintln!("{id} queued");
    }
    let (status, error) = follow(&client, &id, json).await?;
    if json {
        println!("{}", serde_json::json!({ "id": id, "status": status, "error": error }));
    }
    if status != "completed" {
        bail!("{id} {status}: {}", error.as_deref().unwrap_or("(no error recorded)"));
    }
    if !json {
        println!("{id}");
    }
    Ok(())
}

/// Follow transfer `id` (a spinner with its progress) until it ends; its
/// final status and error.
async fn follow(client: &Client, id: &str, quiet: bool) -> Result<(String, Option<String>)> {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("template"));
    let sql = format!(
        "SELECT max(value) FILTER (WHERE field = 'status'), max(value) FILTER (WHERE field = 'progress') \
           FROM backups.info({})",
        literal(id)
    );
    loop {
        let (_, rows) = query(client, &sql).await?;
        let Some(row) = rows.into_iter().next() else { bail!("{id} is no longer listed") };
        let status = row[0].clone().unwrap_or_default();
        if matches!(status.as_str(), "completed" | "failed" | "cancelled" | "expired") {
            bar.finish_and_clear();
            let error =
                query(client, &format!("SELECT value FROM backups.info({}) WHERE field = 'error'", literal(id)))
                    .await?
                    .1
                    .into_iter()
                    .next()
                    .and_then(|mut r| r[0].take());
            if !quiet {
                eprintln!("{id} {status}");
            }
            return Ok((status, error));
        }
        bar.set_message(format!("{id} {status}: {}", row[1].as_deref().unwrap_or("")));
        bar.tick();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
