//! `pgbackups-cluster start DIR [PORT]` / `stop DIR`: the e2e harness's
//! cluster, kept running, for `make demo`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use pgbackups_e2e::cluster::{free_port, Cluster};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["start", dir, rest @ ..] => {
            let dir = PathBuf::from(dir);
            let mut c = if dir.join("data/PG_VERSION").exists() {
                Cluster::open(&dir)?
            } else {
                // The port asked for, unless something already listens there.
                let port = match rest.first().map(|p| p.parse::<u16>()).transpose()? {
                    Some(p) if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() => p,
                    _ => free_port()?,
                };
                Cluster::init_at(&dir, port, &[])?
            };
            c.keep = true;
            if c.sql("postgres", "SELECT 1").is_err() {
                c.start_server()?;
            }
            c.sql("postgres", "CREATE EXTENSION IF NOT EXISTS pg_backups")?;
            println!("{}", c.port);
        }
        ["stop", dir] => {
            let c = Cluster::open(&PathBuf::from(dir))?;
            c.stop_server("fast")?;
        }
        _ => bail!("usage: pgbackups-cluster start DIR [PORT] | stop DIR"),
    }
    Ok(())
}
