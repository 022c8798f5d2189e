//! How a test sets itself up, written once: a cluster (with extra
//! settings), the databases it needs, file storage, and the real agent
//! (with extra flags and environment), through one builder:
//!
//! ```ignore
//! let TestEnv { c, store, agent, .. } = TestEnv::new().db("shop", SHOP).args(&["--agent-id", "a"]).start();
//! ```
//!
//! and the few things every test does with them (capture and wait, read a
//! transfer's log). Bind `store` when destructuring (as `_store` if the
//! test does not use it): a field left to `..` is dropped at once, and the
//! storage directory with it.

use std::path::Path;
use std::time::Duration;

use crate::agent::Agent;
use crate::cluster::Cluster;
use crate::data::{create_db, wait};

/// How long a transfer is waited for.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The link secret of a setup that serves links (`Setup::links`).
pub const LINK_SECRET: &str = "e2e-link-secret-0123456789";

/// A cluster with the extension, its databases, storage and an agent.
/// Its fields drop in this order: the agent stops before the cluster it
/// talks to, and the storage goes last. Destructured, bindings drop in the
/// reverse of their order in the pattern: `let TestEnv { c, store, agent,
/// .. }` stops the agent first too (then the storage, then the cluster).
pub struct TestEnv {
    pub agent: Agent,
    pub c: Cluster,
    /// File storage (`store_url`).
    pub store: tempfile::TempDir,
    /// Where the agent serves links (`http://127.0.0.1:PORT`), if asked.
    pub base: Option<String>,
}

/// What a test asks for, before anything starts.
#[derive(Default)]
pub struct Setup {
    conf: Vec<String>,
    databases: Vec<(String, String)>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    base: Option<String>,
}

impl TestEnv {
    /// A setup with nothing extra: a cluster, storage, an agent.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> Setup {
        Setup::default()
    }

    /// The storage URL the agent was given.
    pub fn storage(&self) -> String {
        store_url(self.store.path())
    }

    /// Where the agent serves links (a setup with `links()`).
    pub fn base(&self) -> &str {
        self.base.as_deref().expect("a setup that serves links (Setup::links)")
    }

    /// One more agent on the same cluster and storage, with `args`.
    pub fn another_agent(&self, args: &[&str]) -> Agent {
        Agent::start(&self.c.url("postgres"), &self.storage(), args, &[]).expect("starting another agent")
    }
}

impl Setup {
    /// A line for the cluster's postgresql.conf.
    pub fn conf(mut self, line: &str) -> Self {
        self.conf.push(line.to_string());
        self
    }

    /// Database `name`, made and filled with `sql` before the agent starts.
    pub fn db(mut self, name: &str, sql: &str) -> Self {
        self.databases.push((name.to_string(), sql.to_string()));
        self
    }

    /// Flags for the agent.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The agent serves links (`--listen` on a free port, the link secret
    /// `LINK_SECRET`), and the cluster signs them for it.
    pub fn links(mut self) -> Self {
        let port = crate::cluster::free_port().expect("a free port");
        let base = format!("http://127.0.0.1:{port}");
        self.conf.push(format!("backups.link_base_url = '{base}'"));
        self.conf.push(format!("backups.link_secret = '{LINK_SECRET}'"));
        self.args.extend(["--listen".into(), format!("127.0.0.1:{port}"), "--link-secret".into(), LINK_SECRET.into()]);
        self.base = Some(base);
        self
    }

    /// An environment variable for the agent.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The cluster, its databases and storage, without an agent (a test
    /// that starts its own, with URLs of its own).
    pub fn without_agent(self) -> (Cluster, tempfile::TempDir) {
        let conf: Vec<&str> = self.conf.iter().map(String::as_str).collect();
        let c = Cluster::start_with(&conf).expect("starting a cluster");
        for (name, sql) in &self.databases {
            create_db(&c, name, sql).unwrap_or_else(|e| panic!("creating database {name}: {e:#}"));
        }
        (c, tempfile::tempdir().expect("a storage directory"))
    }

    /// Everything, the agent started last.
    pub fn start(self) -> TestEnv {
        let (args, env, base) = (self.args.clone(), self.env.clone(), self.base.clone());
        let (c, store) = self.without_agent();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let agent =
            Agent::start(&c.url("postgres"), &store_url(store.path()), &args, &env).expect("starting the agent");
        TestEnv { c, store, agent, base }
    }
}

/// File storage at `dir`, as the agent takes it.
pub fn store_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// Queue `backups.capture(args)` and wait for it to complete; its id.
pub fn capture(c: &Cluster, args: &str) -> String {
    let id = c.sql("postgres", &format!("SELECT backups.capture({args})")).expect("queueing a capture");
    let status = wait(c, &id, PATIENCE).expect("waiting for a capture");
    assert_eq!(status, "completed", "{}", log_of(c, &id));
    id
}

/// A transfer's log lines and error, as `info()` shows them.
pub fn log_of(c: &Cluster, id: &str) -> String {
    c.sql(
        "postgres",
        &format!("SELECT string_agg(value, E'\\n') FROM backups.info('{id}') WHERE field IN ('log', 'error')"),
    )
    .unwrap_or_else(|e| format!("(no log: {e:#})"))
}
