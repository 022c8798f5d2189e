//! One supervisor for every kind of transfer. It runs the kind's work as a
//! task of its own and, from the claim until the final status is written:
//!
//! 1. heartbeats every second with the work's progress and log lines
//!    (including an upload's tail after pg_dump exits, the manifest and the
//!    durability sync: the work is not done until it returns);
//! 2. stops the work when a cancel is requested (learnt from a NOTIFY or a
//!    heartbeat), when the agent hands its transfers back at shutdown, or
//!    when the transfer turns out to be no longer this agent's;
//! 3. once the work has ended or been stopped, waits for everything it left
//!    running (uploads aborting, threads reading files), removes what this
//!    attempt stored unless it completed, and only then
//! 4. records the outcome: the one place a final status is written; and
//!    so the one place that counts it for /metrics and tells the webhooks
//!    (neither of which ever waits).
//!
//! A completion whose reply is lost is asked again (`_finish` is
//! idempotent); only a transfer the table says is not ours loses its
//! objects, and an outcome that cannot be learnt keeps them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio::time::MissedTickBehavior;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::ctx::Ctx;
use crate::pg::cluster::teardown::Teardown;
use crate::shutdown::{Phase, Shutdown};
use crate::store::layout::Keys;
use crate::transfer::job::Claimed;
use crate::transfer::outcome::{Completion, Outcome};
use crate::transfer::progress::Level;
use crate::transfer::progress::{self, Facts, Journal};
use crate::transfer::report::{Beat, Reporter};
use crate::transfer::task::Task;
use crate::webhook::{Event, Status};

/// How long stopped work gets to wind down (uploads to abort, threads to
/// notice) before the outcome is recorded anyway, beyond the time storage
/// requests are retried for.
const WIND_DOWN_MARGIN: Duration = Duration::from_secs(30);

/// The longest a supervisor takes between being told to hand back and
/// having recorded it: its wind-down, removing what the attempt stored
/// (retried for as long as storage requests are), and the record itself.
pub fn hand_back_patience(ctx: &Ctx) -> Duration {
    // A handful of calls to the table, each of which may reconnect and retry.
    let calls = 4 * (3 * crate::transfer::report::CALL_TIMEOUT);
    wind_down(ctx) + ctx.cfg.store.storage_retry_timeout + calls
}

fn wind_down(ctx: &Ctx) -> Duration {
    ctx.cfg.store.storage_retry_timeout + WIND_DOWN_MARGIN
}

/// Run one claimed transfer to its recorded end, reporting over `line` (a
/// control connection of its own, opened before the claim). `events`
/// carries the payloads of the agent's NOTIFY channel (`cancel b001`, ...).
pub async fn supervise(
    ctx: Arc<Ctx>,
    claimed: Claimed,
    line: tokio_postgres::Client,
    events: broadcast::Receiver<String>,
    shutdown: Shutdown,
) {
    let span = tracing::info_span!("transfer", name = %claimed.name, attempt = claimed.attempt);
    let rep = Reporter::new(ctx.cfg.control().unwrap_or_default(), line, &claimed, &ctx.cfg.agent_id);
    run(ctx, claimed, rep, events, shutdown).instrument(span).await
}

async fn run(
    ctx: Arc<Ctx>,
    claimed: Claimed,
    rep: Reporter,
    events: broadcast::Receiver<String>,
    mut shutdown: Shutdown,
) {
    tracing::info!("claimed");
    let began = Instant::now();
    ctx.telemetry.started();
    tell(&ctx, &claimed, Status::Running, None);
    let job = match &claimed.job {
        Ok(job) => job.clone(),
        Err(why) => {
            conclude(&ctx, &claimed, &rep, began, Outcome::Failed(why.clone()), &Journal::empty()).await;
            return;
        }
    };
    let (progress, mut journal) = progress::channel();
    let tracker = TaskTracker::new();
    let committing = Arc::new(AtomicBool::new(false));
    let task = Task {
        ctx: ctx.clone(),
        id: claimed.id,
        name: claimed.name.clone(),
        attempt: claimed.attempt,
        progress,
        tracker: tracker.clone(),
        teardown: Teardown::new(&tracker),
        committing: committing.clone(),
        cluster: Default::default(),
    };
    let stored_by = job.stores(&ctx, &claimed.name, claimed.attempt);
    let mut work = tokio::spawn(async move { job.run(&task).await });

    // 1 and 2: heartbeat until the work ends or must stop.
    let cancel_event = format!("cancel {}", claimed.name);
    let mut ticker = tokio::time::interval(ctx.cfg.heartbeat_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut events = Some(events);
    let mut last_beat = Instant::now();
    let mut lease_passed = false;
    let outcome = loop {
        let beat_now = tokio::select! {
            // Work that has ended wins over a cancel or hand back arriving
            // with it; a hand back, over slow heartbeats.
            biased;
            res = &mut work => break match res {
                Ok(Ok(done)) => Outcome::Completed(done),
                Ok(Err(e)) => Outcome::Failed(format!("{e:#}")),
                Err(e) => Outcome::Failed(format!("the transfer's work panicked: {e}")),
            },
            // Past the point of no return the work is let end.
            _ = shutdown.reached(Phase::HandBack), if !committing.load(Ordering::SeqCst) => break Outcome::HandedBack,
            ev = next_event(&mut events) => match ev {
                // A cancel: check with the table at once rather than trust the payload.
                Ok(e) => e == cancel_event,
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => {
                    events = None;
                    false
                }
            },
            _ = ticker.tick() => true,
        };
        if beat_now {
            match beat(&rep, &mut journal).await {
                Some(Beat::CancelRequested) if !committing.load(Ordering::SeqCst) => break Outcome::Cancelled,
                Some(Beat::CancelRequested) => {}
                // Past the point of no return, not even a lost transfer is
                // stopped mid-swap: its end is recorded as lost.
                Some(Beat::Lost) if !committing.load(Ordering::SeqCst) => break Outcome::Lost,
                Some(Beat::Lost) => {}
                Some(Beat::Run) => last_beat = Instant::now(),
                None => {}
            }
        }
        if last_beat.elapsed() >= claimed.lease {
            if committing.load(Ordering::SeqCst) {
                // Past the point of no return the work is let end, however
                // long the control database stays out of reach: the next
                // attempt finds what it did (`_record_swap`) and finishes.
                if !lease_passed {
                    tracing::warn!(
                        "no heartbeat got through for {:?}; past its commit point, the work goes on",
                        claimed.lease
                    );
                    lease_passed = true;
                }
                continue;
            }
            // The worker has requeued it by now: whatever this attempt
            // still did, nobody would record.
            tracing::warn!("no heartbeat got through for {:?}: stopping", claimed.lease);
            break Outcome::Lost;
        }
    };
    match &outcome {
        Outcome::Cancelled => journal_say(&rep, &mut journal, "cancel requested: stopping").await,
        Outcome::HandedBack => journal_say(&rep, &mut journal, "the agent is shutting down: stopping").await,
        Outcome::Lost => tracing::warn!("no longer ours: the worker requeues it after missed heartbeats; stopping"),
        _ => {}
    }
    // 3. Stop the work if it still runs, and wait for what it left running.
    if !work.is_finished() {
        work.abort();
        let _ = work.await;
    }
    // Heartbeats go on meanwhile: a slow wind-down is not a silent agent.
    tracker.close();
    let wound_down = tokio::time::timeout(wind_down(&ctx), tracker.wait());
    if alive(&ctx, &rep, &mut journal, wound_down).await.is_err() {
        tracing::warn!("background work did not end within {:?}", wind_down(&ctx));
    }
    let completed = matches!(outcome, Outcome::Completed(_));
    if !completed {
        // (The removal does not write to the table itself: the heartbeats
        // between need the reporter.)
        let said = alive(&ctx, &rep, &mut journal, remove_stored(&ctx, stored_by.as_ref())).await;
        rep.log(&said).await;
    }
    settle(&rep, &mut journal).await;

    // 4. Record.
    let outcome = conclude(&ctx, &claimed, &rep, began, outcome, &journal).await;
    if matches!(outcome, Outcome::Lost) && completed {
        // Ours no more: what this attempt stored is nobody's (its keys are
        // its own: attempt numbers are never reused).
        let said = remove_stored(&ctx, stored_by.as_ref()).await;
        rep.log(&said).await;
    }
}

/// Run `fut` while heartbeating (what the heartbeats learn no longer matters).
async fn alive<T>(ctx: &Ctx, rep: &Reporter, journal: &mut Journal, fut: impl Future<Output = T>) -> T {
    tokio::pin!(fut);
    let mut ticker = tokio::time::interval(ctx.cfg.heartbeat_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            _ = ticker.tick() => {
                beat(rep, journal).await;
            }
        }
    }
}

/// Write what is left to write before the final status: the facts the
/// work learnt (when it ended before a heartbeat wrote them) and its last
/// log lines.
async fn settle(rep: &Reporter, journal: &mut Journal) {
    write_facts(rep, journal).await;
    rep.log(&journal.finish()).await;
}

/// Write the facts the work learnt since the last call, if any: false when
/// the transfer is no longer ours. Facts that could not be written wait for
/// the next call.
async fn write_facts(rep: &Reporter, journal: &mut Journal) -> bool {
    let Some(f) = journal.take_facts() else { return true };
    match rep.record_start(f.source_size, f.format, f.object_key.as_deref(), &f.tool_versions, &f.encrypted_to).await {
        Ok(ours) => ours,
        Err(e) => {
            tracing::warn!("recording the start: {e:#}");
            journal.keep_facts(f);
            true
        }
    }
}

/// One heartbeat, after writing what the work said and the facts it learnt.
/// `None` when the control database could not be reached this time.
async fn beat(rep: &Reporter, journal: &mut Journal) -> Option<Beat> {
    rep.log(&journal.drain()).await;
    if !write_facts(rep, journal).await {
        return Some(Beat::Lost);
    }
    match rep.heartbeat(journal.processed(), journal.current(), journal.expected()).await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!("heartbeat: {e:#}");
            None
        }
    }
}

/// The next NOTIFY payload; never, once the channel is gone.
async fn next_event(events: &mut Option<broadcast::Receiver<String>>) -> Result<String, broadcast::error::RecvError> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn journal_say(rep: &Reporter, journal: &mut Journal, text: &str) {
    let mut lines = journal.drain();
    lines.push((Level::Info, text.to_string()));
    rep.log(&lines).await;
}

/// Remove every object this attempt may have stored; what to log about it.
async fn remove_stored(ctx: &Ctx, keys: Option<&Keys>) -> Vec<(Level, String)> {
    let Some(keys) = keys else { return Vec::new() };
    match ctx.storage.delete_attempt(keys).await {
        Ok(0) => Vec::new(),
        Ok(n) => vec![(Level::Info, format!("removed the {n} object(s) this attempt had stored"))],
        Err(e) => {
            let msg = format!("could not remove what this attempt stored: {e:#}");
            tracing::warn!("{msg}");
            vec![(Level::Warning, msg)]
        }
    }
}

/// Record the final status, then count it and tell the webhooks of it
/// (neither of which waits); the outcome as recorded: `Lost` when the
/// table says the transfer is no longer ours.
async fn conclude(
    ctx: &Ctx,
    claimed: &Claimed,
    rep: &Reporter,
    began: Instant,
    outcome: Outcome,
    journal: &Journal,
) -> Outcome {
    let outcome = record(rep, outcome, journal).await;
    ctx.telemetry.ended(&claimed.kind, &outcome, began.elapsed(), journal.processed());
    if let Some(status) = outcome.told() {
        tell(ctx, claimed, status, outcome.error());
    }
    outcome
}

/// Queue a status change of `claimed` for the webhooks; never waits.
fn tell(ctx: &Ctx, claimed: &Claimed, status: Status, error: Option<&str>) {
    let event = Event::new(&claimed.name, &claimed.kind, status, &claimed.database, error, &ctx.cfg.agent_id);
    ctx.hooks.send(status, event);
}

/// Write the final status. An outcome that cannot be learnt counts as
/// recorded, so that nothing the table might call completed is ever
/// removed.
async fn record(rep: &Reporter, outcome: Outcome, journal: &Journal) -> Outcome {
    let written = match &outcome {
        Outcome::Completed(done) => {
            rep.finish(&outcome, journal.processed(), journal.tool_warnings, Some(&facts(journal, done))).await
        }
        Outcome::Failed(error) => {
            tracing::warn!("failed: {error}");
            rep.log(&[(Level::Error, error.clone())]).await;
            rep.finish(&outcome, journal.processed(), 0, None).await
        }
        Outcome::Cancelled => {
            rep.log(&[(Level::Info, "cancelled; nothing was kept in storage".into())]).await;
            rep.finish(&outcome, journal.processed(), 0, None).await
        }
        Outcome::HandedBack => rep.hand_back("the agent is shutting down").await,
        Outcome::Lost => Ok(false),
    };
    match written {
        Ok(true) => {
            tracing::info!("{}", outcome.label().replace('_', " "));
            outcome
        }
        Ok(false) => {
            tracing::warn!("no longer ours: the worker requeued it after missed heartbeats");
            Outcome::Lost
        }
        Err(e) => {
            tracing::error!("{e:#}; keeping what it stored");
            outcome
        }
    }
}

/// What the work learnt, sent again with its completion: the facts of its
/// start (`progress::Facts`) and a capture's head digest.
fn facts(journal: &Journal, done: &Completion) -> serde_json::Value {
    let mut facts = journal.known_facts().map(|f: Facts| f.to_json()).unwrap_or_else(|| serde_json::json!({}));
    if let Completion::Backup { contents: Some(c), .. } = done {
        if let Some(head) = &c.head_sha256 {
            facts["head_sha256"] = head.clone().into();
        }
    }
    facts
}
