//! Drive a transfer's work while heartbeating: progress and log lines go to
//! the control database every `heartbeat_interval`; a cancel request or the
//! agent's shutdown drops the work (child processes are `kill_on_drop`).

use std::future::Future;

use anyhow::Result;
use tokio::sync::watch;

use crate::capture::Outcome;
use crate::progress::Progress;
use crate::queue::{Beat, Reporter};

/// `Ok(Ok(v))` when the work finished, `Ok(Err(outcome))` when it was
/// stopped (cancelled, or handed back at shutdown).
pub async fn with_heartbeat<T>(
    rep: &Reporter,
    progress: &mut Progress,
    stop: &mut watch::Receiver<bool>,
    interval: std::time::Duration,
    work: impl Future<Output = Result<T>>,
) -> Result<Result<T, Outcome>> {
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            res = &mut work => {
                progress.flush(rep).await;
                return res.map(Ok);
            }
            _ = ticker.tick() => {
                if progress.tick(rep).await? == Beat::CancelRequested {
                    rep.log("info", "cancel requested: stopping").await;
                    return Ok(Err(Outcome::Cancelled));
                }
            }
            _ = stop.changed() => return Ok(Err(Outcome::HandBack)),
        }
    }
}
