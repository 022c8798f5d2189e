//! A real S3-compatible server for the tests: `s3s-fs` (from crates.io),
//! serving a temporary directory on a free loopback port. Buckets are its
//! subdirectories.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const ACCESS_KEY: &str = "pgbackups-test";
pub const SECRET_KEY: &str = "pgbackups-test-secret";

pub struct S3Server {
    pub root: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

/// Where `cargo install s3s-fs` put it.
pub fn binary() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    let p = home.join("bin/s3s-fs");
    if p.exists() {
        p
    } else {
        PathBuf::from("s3s-fs")
    }
}

impl S3Server {
    /// Start serving a new temporary directory with bucket `bucket`.
    pub fn start(bucket: &str) -> Result<Self> {
        let root = tempfile::Builder::new().prefix("pgbackups-s3-").tempdir()?.keep();
        std::fs::create_dir_all(root.join(bucket))?;
        let mut s = S3Server { root, port: crate::cluster::free_port()?, child: None };
        s.resume()?;
        Ok(s)
    }

    /// (Re)start the server on the same port and directory.
    pub fn resume(&mut self) -> Result<()> {
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("starting {} (cargo install s3s-fs --version 0.14.1 --features binary)", binary().display())
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!("s3s-fs did not start listening on {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for the agent (the usual AWS variables).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
