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

use crate::transfer::outcome::Outcome;

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
    /// A transfer of `kind` ended so, `took` after its claim, having
    /// processed `so_far` bytes (unless it completed and said how many).
    pub fn ended(&self, kind: &str, outcome: &Outcome, took: Duration, so_far: u64) {
        self.running.dec();
        let by_kind = ByKind { kind: kind.to_string() };
        self.finished.get_or_create(&Finished { kind: kind.to_string(), outcome: outcome.label().into() }).inc();
        self.duration.get_or_create(&by_kind).observe(took.as_secs_f64());
        self.processed.get_or_create(&by_kind).inc_by(outcome.processed(so_far));
        if let Some(n) = outcome.stored() {
            self.stored.inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::outcome::Completion;

    #[test]
    fn the_series_are_named_and_counted() {
        let t = Telemetry::new("a-1");
        t.started();
        let done = Completion::Backup { processed: 100, stored: 40, checksum: "x".into(), contents: None };
        t.ended("capture", &Outcome::Completed(done), Duration::from_secs(2), 0);
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
