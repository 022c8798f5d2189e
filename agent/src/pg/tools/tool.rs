//! The PostgreSQL client programs the agent runs (pg_dump, pg_restore,
//! psql), set up in one place: which of them (from the `Tools` a transfer
//! was given, see `bins`), the connection (`--dbname`, with the password
//! in PGPASSWORD, never on the command line), the application name, stdio,
//! and a process group of its own. Dropping a `ToolProcess` that has not
//! exited kills the whole group, so the workers of `pg_dump -j` and
//! `pg_restore -j` go with their leader, whatever stopped the transfer.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::pg::conn::{Conn, APPLICATION_NAME};
use crate::pg::tools::bins::Tools;

/// How many of a tool's last stderr lines are kept for its error message.
const TAIL: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    PgDump,
    PgRestore,
    Psql,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::PgDump => "pg_dump",
            Tool::PgRestore => "pg_restore",
            Tool::Psql => "psql",
        }
    }
}

/// A tool's command line being built.
pub struct ToolCommand {
    tool: Tool,
    cmd: Command,
}

impl ToolCommand {
    /// `tool --dbname CONN` from `tools`, stdin and stdout closed, stderr
    /// read by the agent.
    pub fn new(tools: &Tools, tool: Tool, conn: &Conn) -> Self {
        let mut c = Self::offline(tools, tool);
        c.cmd.arg("--dbname").arg(&conn.keywords);
        if let Some(p) = &conn.password {
            c.cmd.env("PGPASSWORD", p);
        }
        c
    }

    /// The tool with no connection (`pg_restore --list`, or to a file).
    pub fn offline(tools: &Tools, tool: Tool) -> Self {
        let mut cmd = Command::new(tools.path(tool.name()));
        cmd.env("PGAPPNAME", APPLICATION_NAME)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        ToolCommand { tool, cmd }
    }

    pub fn arg(&mut self, arg: impl AsRef<std::ffi::OsStr>) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(&mut self, args: I) -> &mut Self {
        self.cmd.args(args);
        self
    }

    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.cmd.env(key, value);
        self
    }

    /// Its stdout, for the agent to read.
    pub fn stdout_piped(&mut self) -> &mut Self {
        self.cmd.stdout(Stdio::piped());
        self
    }

    /// Its stdin, for the agent to write.
    pub fn stdin_piped(&mut self) -> &mut Self {
        self.cmd.stdin(Stdio::piped());
        self
    }

    /// Run it to the end and return what it printed (a listing: small).
    pub async fn read_all(&mut self) -> Result<Vec<u8>> {
        self.stdout_piped();
        let mut p = self.spawn(|_| {})?;
        let mut stdout = p.take_stdout();
        let mut out = Vec::new();
        let (read, exit) = tokio::join!(stdout.read_to_end(&mut out), p.wait());
        exit?.check()?;
        read.with_context(|| format!("reading what {} printed", self.tool.name()))?;
        Ok(out)
    }

    /// Start it; each stderr line goes to `say` as it comes.
    pub fn spawn(&mut self, say: impl Fn(String) + Send + 'static) -> Result<ToolProcess> {
        let tool = self.tool;
        let program = self.cmd.as_std().get_program().to_string_lossy().into_owned();
        let mut child = self.cmd.spawn().with_context(|| format!("starting {program}"))?;
        let group = child.id().map(|pid| pid as i32);
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL)));
        let stderr = child.stderr.take().expect("stderr is piped");
        let kept = tail.clone();
        let reader = tokio::spawn(async move {
            // Read to the end whatever it prints: a line that is not UTF-8
            // (a table name in LATIN1) must neither stop the reading, which
            // would close the pipe and kill the tool with SIGPIPE, nor be lost.
            let mut stderr = BufReader::new(stderr);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match stderr.read_until(b'\n', &mut raw).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&raw).trim_end_matches(['\n', '\r']).replace('\0', "");
                {
                    let mut t = kept.lock().expect("tail");
                    if t.len() == TAIL {
                        t.pop_front();
                    }
                    t.push_back(line.clone());
                }
                say(line);
            }
        });
        Ok(ToolProcess { tool, child, group, exited: false, tail, reader: Some(reader) })
    }
}

/// A running tool. Dropped before it exited, it is killed with its group.
pub struct ToolProcess {
    tool: Tool,
    child: Child,
    group: Option<i32>,
    exited: bool,
    tail: Arc<Mutex<VecDeque<String>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

/// How a tool ended: its status and its last stderr lines.
pub struct Exit {
    pub tool: Tool,
    pub status: ExitStatus,
    pub tail: Vec<String>,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Ok when it succeeded, else an error with what it said.
    pub fn check(&self) -> Result<()> {
        if self.success() {
            return Ok(());
        }
        bail!("{} failed ({}): {}", self.tool.name(), self.status, self.said())
    }

    /// Its error lines (with their DETAIL and HINT), or else its last lines.
    pub fn said(&self) -> String {
        let errors: Vec<&str> = self.tail.iter().map(String::as_str).filter(|l| is_error(l)).collect();
        if errors.is_empty() {
            let skip = self.tail.len().saturating_sub(5);
            self.tail[skip..].join("\n")
        } else {
            errors.join("\n")
        }
    }
}

/// A line a PostgreSQL tool prints about an error.
pub fn is_error(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains(": error:")
        || l.starts_with("error:")
        || l.contains("fatal:")
        || l.contains(": detail:")
        || l.contains(": hint:")
}

impl ToolProcess {
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("stdout is piped")
    }

    pub fn take_stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("stdin is piped")
    }

    /// Wait for it to exit and for its stderr to be read to the end. A
    /// leader that failed may leave workers behind: they are killed.
    pub async fn wait(&mut self) -> Result<Exit> {
        let status = self.child.wait().await.with_context(|| format!("waiting for {}", self.tool.name()))?;
        self.exited = true;
        if !status.success() {
            self.kill_group();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.await;
        }
        let tail = self.tail.lock().expect("tail").iter().cloned().collect();
        Ok(Exit { tool: self.tool, status, tail })
    }

    /// SIGKILL to the whole group: the tool and every process it forked.
    fn kill_group(&self) {
        if let Some(pgid) = self.group {
            // SAFETY: killpg only sends a signal; the group is the one this
            // process group leader created (process_group(0) at spawn).
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ToolProcess {
    fn drop(&mut self) {
        if !self.exited {
            self.kill_group();
            // Reaped by tokio's orphan queue; the SIGKILL makes that quick.
            let _ = self.child.start_kill();
        }
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_include_their_detail_and_hint() {
        assert!(is_error("pg_dump: error: query failed: ERROR:  permission denied for table t"));
        assert!(is_error("pg_dump: detail: Query was: LOCK TABLE public.t IN ACCESS SHARE MODE"));
        assert!(!is_error("pg_dump: dumping contents of table \"public.t\""));
        let exit = Exit {
            tool: Tool::PgDump,
            status: std::process::ExitStatus::default(),
            tail: vec!["pg_dump: reading schemas".into(), "pg_dump: error: connection failed".into()],
        };
        assert_eq!(exit.said(), "pg_dump: error: connection failed");
    }
}
