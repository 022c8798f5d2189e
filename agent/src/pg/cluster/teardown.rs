//! What a transfer leaves to drop when it stops (its applier's login, its
//! shadow, its scratch database), dropped one step after another, in the
//! order they were left. Run at once, two of them could deadlock (dropping
//! the shadow while the applier's grant on it is revoked) and leave both
//! behind. The steps run on the transfer's tracker, which the supervisor
//! waits for before it records how the transfer ended.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// One transfer's cleanups, in a line.
#[derive(Clone)]
pub struct Teardown {
    tracker: TaskTracker,
    /// The step left last: the next one waits for it.
    last: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Teardown {
    pub fn new(tracker: &TaskTracker) -> Self {
        Teardown { tracker: tracker.clone(), last: Arc::default() }
    }

    /// Run `step` once the steps left before it have ended (whatever they
    /// did), without waiting for it.
    pub fn then(&self, step: impl Future<Output = ()> + Send + 'static) {
        let mut last = self.last.lock().expect("teardown");
        let before = last.take();
        *last = Some(self.tracker.spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            step.await;
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn steps_run_one_after_another_in_the_order_they_were_left() {
        let tracker = TaskTracker::new();
        let t = Teardown::new(&tracker);
        let seen = Arc::new(Mutex::new(Vec::new()));
        for (i, pause) in [(1, 30), (2, 0), (3, 10)] {
            let seen = seen.clone();
            t.then(async move {
                seen.lock().unwrap().push(format!("start {i}"));
                tokio::time::sleep(Duration::from_millis(pause)).await;
                seen.lock().unwrap().push(format!("end {i}"));
            });
        }
        tracker.close();
        tracker.wait().await;
        assert_eq!(*seen.lock().unwrap(), ["start 1", "end 1", "start 2", "end 2", "start 3", "end 3"]);
    }
}
