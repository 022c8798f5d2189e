//! What a transfer's work tells its supervisor while it runs: bytes
//! processed, facts known at the start, what it and its tools say. The work
//! holds a `Progress` (cheap to clone, usable from any thread); the
//! supervisor holds the `Journal`, which turns all that into heartbeats and
//! log lines.
//!
//! Transfer logs stay bounded: a tool's first `HEAD` lines are logged as
//! they come; after that its ordinary lines only pass through a window of
//! the last `TAIL`, and the journal ends with how many were left out and
//! that window. Errors and warnings are always logged (up to `LOUD` of
//! them), as is everything the agent itself says.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// The levels of `backups.transfer_logs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

const HEAD: usize = 100;
const TAIL: usize = 50;
const LOUD: usize = 500;

/// Facts known once the work has started, for `info()` and `list()`.
#[derive(Debug, Clone)]
pub struct Facts {
    pub source_size: Option<i64>,
    pub format: Option<&'static str>,
    pub object_key: Option<String>,
    pub tool_versions: serde_json::Value,
    /// The age recipients a capture's objects are encrypted to.
    pub encrypted_to: Vec<String>,
}

impl Facts {
    /// As `_finish` takes them again with the end of the work (`facts`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "source_size": self.source_size,
            "format": self.format,
            "object_key": self.object_key,
            "tool_versions": self.tool_versions,
            "encrypted_to": self.encrypted_to,
        })
    }
}

enum Said {
    Agent(Level, String),
    Tool(String),
}

struct Shared {
    processed: Arc<AtomicU64>,
    /// What `processed` is expected to reach (0: not known), for the
    /// percentage and time left that list() shows.
    expected: AtomicU64,
    facts: Mutex<Option<Facts>>,
    /// The facts last set, written or not: sent again with the end.
    known: Mutex<Option<Facts>>,
}

/// The work's side.
#[derive(Clone)]
pub struct Progress {
    shared: Arc<Shared>,
    said: mpsc::UnboundedSender<Said>,
}

/// The supervisor's side.
pub struct Journal {
    shared: Arc<Shared>,
    said: mpsc::UnboundedReceiver<Said>,
    current: Option<String>,
    tool_lines: usize,
    loud: usize,
    window: VecDeque<String>,
    left_out: u64,
    /// Warnings the tools printed.
    pub tool_warnings: i32,
}

pub fn channel() -> (Progress, Journal) {
    let shared = Arc::new(Shared {
        processed: Arc::default(),
        expected: AtomicU64::new(0),
        facts: Mutex::new(None),
        known: Mutex::new(None),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Progress { shared: shared.clone(), said: tx },
        Journal {
            shared,
            said: rx,
            current: None,
            tool_lines: 0,
            loud: 0,
            window: VecDeque::new(),
            left_out: 0,
            tool_warnings: 0,
        },
    )
}

impl Progress {
    /// The counter of bytes processed, for blocking code to add to.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.shared.processed.clone()
    }

    pub fn processed(&self) -> u64 {
        self.shared.processed.load(Ordering::Relaxed)
    }

    /// How many bytes the counter is expected to reach in all: an
    /// estimate (the source's table sizes, a backup's stored size).
    pub fn expect(&self, bytes: u64) {
        self.shared.expected.store(bytes, Ordering::Relaxed);
    }

    /// A line from the agent itself, always logged.
    pub fn say(&self, level: Level, text: impl Into<String>) {
        let _ = self.said.send(Said::Agent(level, text.into()));
    }

    /// Where a tool's stderr lines go.
    pub fn tool_output(&self) -> impl Fn(String) + Send + Sync + 'static {
        let tx = self.said.clone();
        move |line| {
            let _ = tx.send(Said::Tool(line));
        }
    }

    pub fn started(&self, facts: Facts) {
        *self.shared.known.lock().expect("facts") = Some(facts.clone());
        *self.shared.facts.lock().expect("facts") = Some(facts);
    }
}

impl Journal {
    /// A journal nothing writes to (for a transfer whose job could not be
    /// decoded).
    pub fn empty() -> Journal {
        channel().1
    }

    pub fn processed(&self) -> u64 {
        self.shared.processed.load(Ordering::Relaxed)
    }

    pub fn expected(&self) -> Option<u64> {
        Some(self.shared.expected.load(Ordering::Relaxed)).filter(|e| *e > 0)
    }

    /// The table (or index) being worked on, when a tool said.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Facts set since the last call.
    pub fn take_facts(&self) -> Option<Facts> {
        self.shared.facts.lock().expect("facts").take()
    }

    /// Every fact the work learnt, whether or not a call got it through.
    pub fn known_facts(&self) -> Option<Facts> {
        self.shared.known.lock().expect("facts").clone()
    }

    /// Facts that could not be written yet, for the next try.
    pub fn keep_facts(&self, facts: Facts) {
        self.shared.facts.lock().expect("facts").get_or_insert(facts);
    }

    /// The lines to log now.
    pub fn drain(&mut self) -> Vec<(Level, String)> {
        let mut out = Vec::new();
        while let Ok(said) = self.said.try_recv() {
            match said {
                Said::Agent(level, text) => out.push((level, text)),
                Said::Tool(line) => self.tool_line(line, &mut out),
            }
        }
        out
    }

    fn tool_line(&mut self, line: String, out: &mut Vec<(Level, String)>) {
        let level = classify(&line);
        if level == Level::Warning {
            self.tool_warnings += 1;
        }
        if let Some(obj) = current_object(&line) {
            self.current = Some(obj);
        }
        self.tool_lines += 1;
        let loud = matches!(level, Level::Warning | Level::Error);
        if self.tool_lines <= HEAD || (loud && self.loud < LOUD) {
            if loud && self.tool_lines > HEAD {
                self.loud += 1;
            }
            out.push((level, line));
            return;
        }
        if self.window.len() == TAIL {
            self.window.pop_front();
            self.left_out += 1;
        }
        self.window.push_back(line);
    }

    /// The last lines to log: what is left, the count of lines left out,
    /// and the window of the last ones.
    pub fn finish(&mut self) -> Vec<(Level, String)> {
        let mut out = self.drain();
        if self.left_out > 0 {
            out.push((Level::Info, format!("... {} lines of tool output not kept ...", self.left_out)));
            self.left_out = 0;
        }
        for line in self.window.drain(..) {
            out.push((classify(&line), line));
        }
        out
    }
}

/// `1.5 GB`: a size for people.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn classify(line: &str) -> Level {
    let l = line.to_ascii_lowercase();
    // pg_dump's catalog-reading chatter, kept but not shown by backups.info().
    const CHATTER: [&str; 8] = [
        "reading ",
        "saving ",
        "finding ",
        "flagging ",
        "identifying ",
        "last built-in oid",
        "finished item",
        "launching item",
    ];
    let body = l.split_once(": ").map(|x| x.1).unwrap_or(&l);
    if crate::pg::tools::tool::is_error(line) {
        Level::Error
    } else if l.contains(": warning:") || l.starts_with("warning:") {
        Level::Warning
    } else if CHATTER.iter().any(|c| body.starts_with(c)) {
        Level::Debug
    } else {
        Level::Info
    }
}

/// `pg_dump: dumping contents of table "public"."events"` -> `"public"."events"`.
fn current_object(line: &str) -> Option<String> {
    for marker in ["dumping contents of table ", "processing data for table ", "creating INDEX ", "creating TABLE "] {
        if let Some(i) = line.find(marker) {
            return Some(line[i + marker.len()..].trim().to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn understands_pg_dump_and_pg_restore_lines() {
        assert_eq!(classify("pg_dump: error: connection failed"), Level::Error);
        assert_eq!(classify("pg_restore: warning: errors ignored on restore: 2"), Level::Warning);
        assert_eq!(classify("pg_dump: reading schemas"), Level::Debug);
        assert_eq!(classify("pg_dump: dumping contents of table \"public.t\""), Level::Info);
        assert_eq!(
            current_object("pg_dump: dumping contents of table \"public\".\"events\"").as_deref(),
            Some("\"public\".\"events\"")
        );
        assert_eq!(current_object("pg_dump: reading schemas"), None);
    }

    #[test]
    fn a_chatty_tool_keeps_its_first_and_last_lines_and_every_error() {
        let (progress, mut journal) = channel();
        let say = progress.tool_output();
        progress.say(Level::Info, "starting");
        for i in 0..10_000 {
            say(format!("pg_dump: dumping contents of table \"public\".\"t{i}\""));
            if i == 5_000 {
                say("pg_dump: warning: something odd".to_string());
            }
        }
        let mut logged = journal.drain();
        logged.extend(journal.finish());
        assert!(logged.len() < HEAD + TAIL + 10, "{} lines logged", logged.len());
        assert_eq!(logged[0].1, "starting");
        assert!(logged[1].1.ends_with("\"t0\""));
        assert!(logged.iter().any(|l| l.0 == Level::Warning && l.1.contains("something odd")));
        assert!(logged.iter().any(|l| l.1.contains("lines of tool output not kept")));
        assert!(logged.last().unwrap().1.ends_with("\"t9999\""));
        assert_eq!(journal.current(), Some("\"public\".\"t9999\""));
        assert_eq!(journal.tool_warnings, 1);
    }
}
