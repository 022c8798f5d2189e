//! The real `pgbackups` binary, started as a child process for a test, and
//! stopped (SIGTERM, or SIGKILL when dropped) afterwards.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The agent binary: $PGBACKUPS_BIN, or the one cargo built beside the tests.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PGBACKUPS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/pgbackups
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("pgbackups")
}

/// `pgbackups ARGS...` (a shell verb, not the agent) run to its end with
/// extra environment: what it printed and how it exited.
pub fn shell(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(binary());
    cmd.args(args).stdin(Stdio::null()).env("PGBACKUPS_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running pgbackups")
}

pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    /// `pgbackups agent --database-url URL --storage STORAGE ARGS...`, with
    /// extra environment variables.
    pub fn start(database_url: &str, storage: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::start_wrapped(&[], database_url, storage, args, env)
    }

    /// Like [`Agent::start`], the binary run through `wrapper` (such as
    /// `taskset -c 0`), which must exec it so that the pid stays the agent's.
    pub fn start_wrapped(
        wrapper: &[&str],
        database_url: &str,
        storage: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_binary(&binary(), wrapper, database_url, storage, args, env)
    }

    /// Like [`Agent::start_wrapped`], with another build of the agent
    /// (`bin`): a benchmark's baseline.
    pub fn start_binary(
        bin: &std::path::Path,
        wrapper: &[&str],
        database_url: &str,
        storage: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let log =
            tempfile::Builder::new().prefix("pgbackups-agent-").suffix(".log").tempfile()?.into_temp_path().keep()?;
        let out = std::fs::File::create(&log)?;
        let mut cmd = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("agent")
            .args(["--database-url", database_url, "--storage", storage, "--poll-interval", "0.5"])
            .args(args)
            .env("PGBACKUPS_LOG", "info,pgbackups=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        Ok(Agent { child, log })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then wait up to `patience` for a clean exit.
    pub fn terminate(&mut self, patience: Duration) -> Result<std::process::ExitStatus> {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + patience;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            anyhow::ensure!(Instant::now() < deadline, "agent did not stop within {patience:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: the agent dies mid-work, as in a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}
