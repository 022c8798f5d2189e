//! One shutdown signal, received by every long-running part of the agent.
//! SIGTERM first *drains* (no new claims, no new purges; running transfers
//! go on); once the grace period is over, transfers still running are
//! *handed back* to the queue.

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    Draining,
    HandBack,
}

/// The receiving side, cloned into each part.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<Phase>);

/// The sending side, held by the agent's main loop.
pub struct Trigger(watch::Sender<Phase>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(Phase::Running);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn enter(&self, phase: Phase) {
        self.0.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }
}

impl Shutdown {
    /// Resolves once the agent has reached `phase` (at once if it has).
    pub async fn reached(&mut self, phase: Phase) {
        let _ = self.0.wait_for(|p| *p >= phase).await;
    }
}
