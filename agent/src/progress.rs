//! What a running tool says on stderr, turned into progress, log lines and
//! warnings, and written back with each heartbeat.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

use crate::queue::{Beat, Reporter};

const TAIL: usize = 20;

pub struct Progress {
    pub processed: Arc<AtomicU64>,
    lines_tx: mpsc::UnboundedSender<String>,
    lines: mpsc::UnboundedReceiver<String>,
    current: Option<String>,
    tail: VecDeque<String>,
    pub warnings: i32,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        let (lines_tx, lines) = mpsc::unbounded_channel();
        Progress { processed: Arc::default(), lines_tx, lines, current: None, tail: VecDeque::new(), warnings: 0 }
    }

    /// Forward a tool's stderr, line by line.
    pub fn follow(&self, stderr: impl AsyncRead + Unpin + Send + 'static) -> tokio::task::JoinHandle<()> {
        follow(stderr, self.sender())
    }

    /// Where lines go, for work running beside the heartbeat loop.
    pub fn sender(&self) -> mpsc::UnboundedSender<String> {
        self.lines_tx.clone()
    }

    /// Write what was said since the last tick, then heartbeat.
    pub async fn tick(&mut self, rep: &Reporter) -> Result<Beat> {
        self.flush(rep).await;
        rep.heartbeat(self.processed.load(Ordering::Relaxed) as i64, self.current.as_deref()).await
    }

    pub async fn flush(&mut self, rep: &Reporter) {
        let mut batch = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            let level = classify(&line);
            if level == "warning" {
                self.warnings += 1;
            }
            if let Some(obj) = current_object(&line) {
                self.current = Some(obj);
            }
            if self.tail.len() == TAIL {
                self.tail.pop_front();
            }
            self.tail.push_back(line.clone());
            batch.push((level.to_string(), line));
        }
        rep.log_many(&batch).await;
    }

    /// The last lines, for an error message.
    pub fn tail(&self, n: usize) -> String {
        let skip = self.tail.len().saturating_sub(n);
        self.tail.iter().skip(skip).cloned().collect::<Vec<_>>().join("\n")
    }

    /// The last error lines the tool printed, if any.
    pub fn errors(&self) -> String {
        self.tail.iter().filter(|l| classify(l) == "error").cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Forward `stderr` line by line into `tx`.
pub fn follow(
    stderr: impl AsyncRead + Unpin + Send + 'static,
    tx: mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    })
}

/// pg_restore's closing "errors ignored on restore: N", which Heroku
/// reports as warnings rather than a failure.
pub fn ignored_errors(text: &str) -> Option<i32> {
    text.lines().rev().find_map(|l| l.split("errors ignored on restore: ").nth(1).and_then(|n| n.trim().parse().ok()))
}

fn classify(line: &str) -> &'static str {
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
    // detail: and hint: lines explain the error before them.
    if l.contains(": error:")
        || l.starts_with("error:")
        || l.contains("fatal:")
        || l.contains(": detail:")
        || l.contains(": hint:")
    {
        "error"
    } else if l.contains(": warning:") || l.starts_with("warning:") {
        "warning"
    } else if CHATTER.iter().any(|c| body.starts_with(c)) {
        "debug"
    } else {
        "info"
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
    fn counts_errors_pg_restore_ignored() {
        assert_eq!(
            ignored_errors("pg_restore: creating TABLE\npg_restore: warning: errors ignored on restore: 3"),
            Some(3)
        );
        assert_eq!(ignored_errors("pg_restore: error: could not connect"), None);
    }

    #[test]
    fn understands_pg_dump_and_pg_restore_lines() {
        assert_eq!(classify("pg_dump: error: connection failed"), "error");
        assert_eq!(classify("pg_restore: warning: errors ignored on restore: 2"), "warning");
        assert_eq!(classify("pg_dump: reading schemas"), "debug");
        assert_eq!(classify("pg_dump: dumping contents of table \"public.t\""), "info");
        assert_eq!(
            current_object("pg_dump: dumping contents of table \"public\".\"events\"").as_deref(),
            Some("\"public\".\"events\"")
        );
        assert_eq!(current_object("pg_dump: reading schemas"), None);
    }
}
