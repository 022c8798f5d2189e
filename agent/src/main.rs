//! `pgbackups`: the pg_backups agent and its command-line tools.
//!
//! Layout, by concern (each file says why it exists in its first line):
//!
//! ```text
//! main.rs       the command line: `agent`, and the shell verbs (`cli/`)
//! config.rs     every option, declared once (flags, environment, TOML file)
//! ctx.rs        what a running agent shares: settings and storage
//! shutdown.rs   the one shutdown signal: drain, then hand back
//! staging.rs    this agent's own local disk for files in flight
//! telemetry.rs  this process's counters for /metrics, in one registry
//! webhook.rs    status changes POSTed to webhooks by one background task
//! agent.rs      the main loop: LISTEN/poll, claim, supervise; purge and links beside it
//! transfer/     job (a claimed transfer), kind (what every kind is: the `Kind` trait),
//!               outcome (how a transfer ended, one type), supervisor (heartbeat,
//!               cancel, hand back, the one writer of final status), queue (claim),
//!               report (the lifecycle calls), progress, task;
//!   kinds/      the kinds listed once (mod: the `Job` dispatcher, decoded once at
//!               the claim), one file per kind, its options and its run as named
//!               steps: capture, restore, copy, verify, restore_tables;
//!   steps/      what several kinds share: source (connection, pg_dump's flags),
//!               dump and parallel_dump (a capture's), selective, fetch (a backup
//!               back to staging, verified), remote (what a URL may fetch),
//!               streamed (a restore loaded as it arrives), load, apply (an
//!               archive as the owner), destination (shadow or in place, and the end)
//! pg/           PostgreSQL as the agent touches it, a folder per subsystem:
//!   conn/       connections (and the lock wait of the agent's DDL), tls (libpq's
//!               sslmode and certificates over rustls), quote;
//!   tools/      bins (which major's pg_dump, pg_restore and psql a transfer
//!               runs), tool (those as process groups);
//!   formats/    archive (the extensions an archive names), custom (pg_dump's
//!               custom format, read as it streams), copy_text (pg_dump's COPY
//!               settings), contents (every table's rows and digest),
//!               relocate (tables moved to another schema, entries and SQL);
//!   cluster/    Cluster (mod: the one admin connection a transfer opens, which
//!               every statement changing the cluster goes through), target
//!               (replacing a database, applying an archive as its owner),
//!               database (its properties), shadow, applier (the throwaway login
//!               that applies it), beside (a table restore's one transaction),
//!               scratch (a verification's database), size,
//!               teardown (what a transfer leaves to drop, in order), leftovers
//!               (what killed agents left, swept at start), roles (those a
//!               database names, read at capture, created by restore --create)
//! store/        storage, layout (every object key), upload, manifest, crypt (age),
//!               verify (the one checksum-verifying reader), ranges (a table's
//!               frames read alone), backups (finding and
//!               fetching), catalog (every backup storage holds, from the
//!               manifests alone), purge
//! serve/        one listener (mod): links (signed download links), status (the
//!               signed status page), chart (its SVG charts), metrics
//!               (/metrics for Prometheus)
//! cli/          the shell verbs (mod: the list): control (the SQL functions'
//!               verbs: capture, list, info, url, copy, cancel, delete,
//!               schedule...), stored (list and info from storage alone),
//!               download, restore (queued, or run here from storage alone,
//!               --create), adopt, output (tables and --json)
//! ```
//!
//! No file imports one that imports it; `pg/`, `store/` and `config` never
//! import `transfer/` or `serve/` (agent/tests/layout.rs checks both).

mod agent;
mod cli;
mod config;
mod ctx;
mod pg;
mod serve;
mod shutdown;
mod staging;
mod store;
mod telemetry;
mod transfer;
mod webhook;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{AgentOptions, Config, ConfigFile, StoreOptions};

#[derive(Parser)]
#[command(
    name = "pgbackups",
    version,
    about = "pg_backups from the shell: the agent that runs the transfers queued from SQL, and Heroku's \
             pg:backups verbs (with a control database, or storage alone)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Claim and run queued transfers, writing status back to the control database.
    Agent {
        #[command(flatten)]
        file: ConfigFile,
        #[command(flatten)]
        store: StoreOptions,
        #[command(flatten)]
        agent: AgentOptions,
    },
    #[command(flatten)]
    Verb(cli::Verb),
}

fn main() {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // What the subcommand's flags and environment set, apart from defaults.
    let given = matches.subcommand().map(|(_, m)| m);
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PGBACKUPS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Agent { file, store, agent } => Config::load(&file, &store, &agent, given)
            .and_then(|cfg| tokio::runtime::Runtime::new()?.block_on(agent::run(cfg))),
        Command::Verb(verb) => {
            tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(verb.run(given)))
        }
    };
    if let Err(e) = result {
        eprintln!("pgbackups: {e:#}");
        std::process::exit(1);
    }
}
