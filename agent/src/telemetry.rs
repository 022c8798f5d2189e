//! The agent's own counters for `/metrics`, kept in one registry made once
//! at start-up: the supervisors count what they end, the HTTP listener
//! encodes them (with what it reads from the control database per scrape).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// Every series' name starts with this.
pub const PREFIX: &str = "pgbackups";

/// Upper bounds of the duration histogram, in seconds: a second to a day.
const DURATION_BUCKETS: [f64; 13] =
    [1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Finished {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByKind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct About {
    version: String,
    agent_id: String,
}

/// How a transfer this agent ran ended, as it saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    Cancelled,
    /// The table says another attempt owns it now.
    Lost,
    /// Given back to the queue at shutdown.
    HandedBack,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Lost => "lost",
            Outcome::HandedBack => "handed_back",
        }
    }
}

/// One ended transfer, as [`Telemetry::ended`] counts it.
pub struct Ending<'a> {
    /// capture, restore, copy or verify.
    pub kind: &'a str,
    pub outcome: Outcome,
    /// From the claim to the recorded end.
    pub took: Duration,
    /// Bytes read (captures, copies) or loaded (restores, verifications).
    pub processed: u64,
    /// Bytes a completed capture stored.
    pub stored: Option<u64>,
}

/// The process's series. Cheap handles: the registry holds clones of each.
pub struct Telemetry {
    registry: Registry,
    finished: Family<Finished, Counter>,
    duration: Family<ByKind, Histogram, fn() -> Histogram>,
    processed: Family<ByKind, Counter>,
    stored: Counter,
    running: Gauge<i64, std::sync::atomic::AtomicI64>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Telemetry {
    pub fn new(agent_id: &str) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let finished = Family::<Finished, Counter>::default();
        registry.register("transfers", "Transfers this agent ended, by kind and outcome", finished.clone());
        let duration = Family::<ByKind, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram as _);
        registry.register_with_unit(
            "transfer_duration",
            "How long the transfers this agent ended took, from claim to recorded end, by kind",
            Unit::Seconds,
            duration.clone(),
        );
        let processed = Family::<ByKind, Counter>::default();
        registry.register_with_unit(
            "processed",
            "Bytes read or loaded by the transfers this agent ended, by kind",
            Unit::Bytes,
            processed.clone(),
        );
        let stored = Counter::<u64, AtomicU64>::default();
        registry.register_with_unit(
            "stored",
            "Bytes stored by the captures this agent completed",
            Unit::Bytes,
            stored.clone(),
        );
        let running = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register("running_transfers", "Transfers this agent runs now", running.clone());
        registry.register(
            "agent",
            "This agent: its version and id",
            Info::new(About { version: env!("CARGO_PKG_VERSION").to_string(), agent_id: agent_id.to_string() }),
        );
        Telemetry { registry, finished, duration, processed, stored, running }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A transfer was claimed: it runs until [`Telemetry::ended`].
    pub fn started(&self) {
        self.running.inc();
    }

    /// A transfer this agent claimed has ended (its outcome recorded, or
    /// known not to be).
    pub fn ended(&self, e: &Ending) {
        self.running.dec();
        let kind = ByKind { kind: e.kind.to_string() };
        self.finished.get_or_create(&Finished { kind: e.kind.to_string(), outcome: e.outcome.as_str().into() }).inc();
        self.duration.get_or_create(&kind).observe(e.took.as_secs_f64());
        self.processed.get_or_create(&kind).inc_by(e.processed);
        if let Some(n) = e.stored {
            self.stored.inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_are_named_and_counted() {
        let t = Telemetry::new("a-1");
        t.started();
        t.ended(&Ending {
            kind: "capture",
            outcome: Outcome::Completed,
            took: Duration::from_secs(2),
            processed: 100,
            stored: Some(40),
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, t.registry()).unwrap();
        for line in [
            "pgbackups_transfers_total{kind=\"capture\",outcome=\"completed\"} 1",
            "pgbackups_transfer_duration_seconds_bucket{le=\"5.0\",kind=\"capture\"} 1",
            "pgbackups_processed_bytes_total{kind=\"capture\"} 100",
            "pgbackups_stored_bytes_total 40",
            "pgbackups_running_transfers 0",
            "pgbackups_agent_info{version=\"",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
