//! `pgbackups`: the pg_backups agent and its command-line tools.

mod agent;
mod capture;
mod config;
mod copy;
mod db;
mod download;
mod links;
mod manifest;
mod parallel;
mod progress;
mod purge;
mod queue;
mod restore;
mod storage;
mod stored;
mod supervise;
mod target;
mod upload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pgbackups", version, about = "The pg_backups agent: runs the captures queued with backups.capture()")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Claim and run queued transfers, writing status back to the control database.
    Agent(config::AgentArgs),
    /// Download a backup as a file pg_restore accepts (default: the latest, to latest.dump).
    Download {
        /// The backup (b001, a003...); default the latest completed one.
        id: Option<String>,
        /// Where to write it (default latest.dump, or latest.dump.1 if taken).
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
        #[command(flatten)]
        args: config::AgentArgs,
    },
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PGBACKUPS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Agent(args) => {
            config::Config::load(&args).and_then(|cfg| tokio::runtime::Runtime::new()?.block_on(agent::run(cfg)))
        }
        Command::Download { id, output, args } => config::Config::load(&args)
            .and_then(|cfg| tokio::runtime::Runtime::new()?.block_on(download::run(cfg, id, output))),
    };
    if let Err(e) = result {
        eprintln!("pgbackups: {e:#}");
        std::process::exit(1);
    }
}
