//! Every metric the service exports, by name, in one place, with small recording functions.
//!
//! Names are a public contract: dashboards and alerts query them.

mod activity;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio_util::sync::CancellationToken;

use crate::error::{FailureReason, ProvisionError};
use crate::memory::MemoryUsage;
use crate::outcome::{NotProvisioned, Outcome};
use crate::reconcile::{DRIFT_CLASSES, RunResult};
use crate::traces::queue::{self, DropReason};

use activity::Activity;
pub use activity::RecentRates;

pub const WORKSPACE_CREATED: &str = "workspace_created_total";
pub const WORKSPACE_FAILED: &str = "workspace_failed_total";
pub const PROVISIONING_DURATION: &str = "workspace_provisioning_duration_seconds";
pub const EVENTS_PROCESSED: &str = "events_processed_total";
pub const EVENTS_RETRIED: &str = "events_retried_total";
pub const USERNAMES_REASSIGNED: &str = "usernames_reassigned_total";
pub const EVENT_LAG: &str = "event_lag_seconds";
pub const CONSUMER_CONNECTED: &str = "consumer_connected";
pub const DELIVERIES_IN_FLIGHT: &str = "deliveries_in_flight";
pub const EVENTS_REPLAYED: &str = "events_replayed_total";
pub const BATCH_SIZE: &str = "provisioning_batch_size";
pub const WEBHOOK_REQUESTS: &str = "webhook_requests_total";
pub const WEBHOOK_REFUSED: &str = "webhook_refused_total";
pub const WEBHOOK_DURATION: &str = "webhook_request_duration_seconds";
pub const WEBHOOK_PUBLISH_CONFIRM: &str = "webhook_publish_confirm_seconds";
pub const WEBHOOK_CONNECTIONS_OPEN: &str = "webhook_connections_open";
pub const WEBHOOK_CONNECTIONS_WAITED: &str = "webhook_connections_waited_total";
pub const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
pub const HEAP_IN_USE: &str = "process_heap_in_use_bytes";
pub const HEAP_FREE: &str = "process_heap_free_bytes";
pub const RECONCILE_RUNS: &str = "reconcile_runs_total";
pub const RECONCILE_DURATION: &str = "reconcile_duration_seconds";
pub const RECONCILE_LAST_SUCCESS: &str = "reconcile_last_success_timestamp_seconds";
pub const RECONCILE_DRIFT: &str = "reconcile_drift_total";
pub const RECONCILE_INTERVAL: &str = "reconcile_interval_seconds";
pub const DEAD_LETTERS_OPEN: &str = "dead_letters_open";
pub const TRACE_SPANS_DROPPED: &str = "trace_spans_dropped_total";

/// Every metric family this service exports, with whether it is a histogram (exported as
/// `_bucket`, `_sum` and `_count` series). Dashboards and alerts may only use these.
pub const ALL: [(&str, bool); 27] = [
    (BATCH_SIZE, true),
    (WORKSPACE_CREATED, false),
    (WORKSPACE_FAILED, false),
    (PROVISIONING_DURATION, true),
    (EVENTS_PROCESSED, false),
    (EVENTS_RETRIED, false),
    (USERNAMES_REASSIGNED, false),
    (EVENTS_REPLAYED, false),
    (EVENT_LAG, true),
    (CONSUMER_CONNECTED, false),
    (DELIVERIES_IN_FLIGHT, false),
    (WEBHOOK_REQUESTS, false),
    (WEBHOOK_REFUSED, false),
    (WEBHOOK_DURATION, true),
    (WEBHOOK_PUBLISH_CONFIRM, true),
    (WEBHOOK_CONNECTIONS_OPEN, false),
    (WEBHOOK_CONNECTIONS_WAITED, false),
    (RESIDENT_MEMORY, false),
    (HEAP_IN_USE, false),
    (HEAP_FREE, false),
    (RECONCILE_RUNS, false),
    (RECONCILE_DURATION, true),
    (RECONCILE_LAST_SUCCESS, false),
    (RECONCILE_DRIFT, false),
    (RECONCILE_INTERVAL, false),
    (DEAD_LETTERS_OPEN, false),
    (TRACE_SPANS_DROPPED, false),
];

/// 1 ms to 10 s: the provisioning target is 200 ms, so resolution matters below a second.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Lag also covers queues that backed up for minutes.
const LAG_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

/// A reconcile takes seconds for a small instance and hours for millions of users.
const RECONCILE_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// Batch sizes up to the largest `BATCH_SIZE`.
const BATCH_BUCKETS: &[f64] = &[2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// How often the recorder's upkeep runs when the caller does not say: histogram samples wait in
/// the recorder until upkeep (or a scrape) folds them into buckets, so without it a process that
/// nobody scrapes grows with every event.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The application's own metrics: a Prometheus recorder that belongs to this value, not to the
/// process, so several applications (tests in one process) keep separate figures. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    upkeep_runs: Arc<AtomicU64>,
    activity: Arc<Activity>,
}

impl Metrics {
    /// A recorder with real histograms (the exporter renders summaries unless buckets are set)
    /// and every family described.
    pub fn new() -> Result<Self, BuildError> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(EVENT_LAG.to_owned()), LAG_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.to_owned()), BATCH_BUCKETS)?
            .set_buckets_for_metric(
                Matcher::Full(RECONCILE_DURATION.to_owned()),
                RECONCILE_BUCKETS,
            )?
            .build_recorder();
        let metrics = Self {
            handle: recorder.handle(),
            recorder: Arc::new(recorder),
            upkeep_runs: Arc::default(),
            activity: Arc::new(Activity::new(Instant::now())),
        };
        metrics.with(describe);
        metrics.with(register_at_zero);
        Ok(metrics)
    }

    /// The Prometheus text page `/metrics` serves.
    pub fn render(&self) -> String {
        self.with(record_dropped_spans);
        self.handle.render()
    }

    /// Runs `record` with this recorder as the current one: the `metrics` macros inside it
    /// register and update series here, whichever thread runs it.
    fn with<T>(&self, record: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(self.recorder.as_ref(), record)
    }

    /// Folds waiting histogram samples into their buckets every `interval` until `shutdown`, so
    /// memory stays flat whether or not anything scrapes `/metrics`.
    pub async fn run_upkeep(self, interval: Duration, shutdown: CancellationToken) {
        crate::schedule::every(interval, shutdown, || {
            self.handle.run_upkeep();
            self.activity.sample(Instant::now());
            self.upkeep_runs.fetch_add(1, Ordering::Relaxed);
            std::future::ready(())
        })
        .await;
    }

    /// Events ended, dead-lettered and retried per second over the last minute: the console's
    /// overview, read from the process rather than from a Prometheus it may not have.
    pub fn recent_rates(&self) -> RecentRates {
        self.activity.rates(Instant::now())
    }

    /// How many times the upkeep ran: what tests watch instead of memory.
    pub fn upkeep_runs(&self) -> u64 {
        self.upkeep_runs.load(Ordering::Relaxed)
    }

    /// An event that ended well: counted by type and outcome, timed, and a new workspace counted.
    pub fn record_outcome(&self, event_type: &str, outcome: Outcome, duration: Duration) {
        let event_type = type_label(event_type);
        self.activity.ended();
        self.with(|| {
            counter!(EVENTS_PROCESSED, "type" => event_type, "outcome" => outcome.as_str())
                .increment(1);
            if outcome != Outcome::Unsupported {
                histogram!(PROVISIONING_DURATION, "outcome" => outcome.as_str()).record(duration);
            }
            if outcome == Outcome::Created {
                counter!(WORKSPACE_CREATED).increment(1);
            }
        });
    }

    /// A failed attempt of one transaction, timed like the successful ones.
    pub fn record_failed_attempt(&self, duration: Duration) {
        self.with(|| {
            histogram!(PROVISIONING_DURATION, "outcome" => NotProvisioned::Failed.as_str())
                .record(duration)
        });
    }

    /// An event sent to the dead-letter queue.
    pub fn record_dead_letter(&self, event_type: &str, reason: FailureReason) {
        let event_type = type_label(event_type);
        self.activity.dead_lettered();
        self.with(|| {
            counter!(WORKSPACE_FAILED, "reason" => reason.as_str()).increment(1);
            counter!(EVENTS_PROCESSED, "type" => event_type, "outcome" => NotProvisioned::DeadLettered.as_str())
                .increment(1);
        });
    }

    /// A retry about to wait, labelled with the error's code ([`ProvisionError::as_str`]).
    pub fn record_retry(&self, reason: &'static str) {
        self.activity.retried();
        self.with(|| counter!(EVENTS_RETRIED, "reason" => reason).increment(1));
    }

    /// A chosen username took a derived one; its holder moved to their fallback.
    pub fn record_username_reassigned(&self) {
        self.with(|| counter!(USERNAMES_REASSIGNED).increment(1));
    }

    /// A batch committed with `size` events.
    pub fn record_batch(&self, size: usize) {
        self.with(|| histogram!(BATCH_SIZE).record(size as f64));
    }

    /// A replayed dead letter was processed (whatever its fate this time).
    pub fn record_replayed(&self, original_reason: &str) {
        let reason = reason_label(original_reason);
        self.with(|| counter!(EVENTS_REPLAYED, "reason" => reason).increment(1));
    }

    /// Time from the ingress receiving the event to its commit.
    pub fn record_lag(&self, lag: Duration) {
        self.with(|| histogram!(EVENT_LAG).record(lag));
    }

    pub fn set_consumer_connected(&self, connected: bool) {
        self.with(|| gauge!(CONSUMER_CONNECTED).set(f64::from(u8::from(connected))));
    }

    pub fn deliveries_in_flight(&self, delta: f64) {
        self.with(|| gauge!(DELIVERIES_IN_FLIGHT).increment(delta));
    }

    /// A webhook request answered; `event_type` is known only once the signature was verified.
    pub fn record_webhook(&self, status: u16, event_type: Option<&str>, duration: Duration) {
        let event_type = event_type.map_or_else(|| "unknown".to_owned(), type_label);
        self.with(|| {
            counter!(WEBHOOK_REQUESTS, "status" => status.to_string(), "type" => event_type)
                .increment(1);
            histogram!(WEBHOOK_DURATION).record(duration);
        });
    }

    /// A webhook request refused, by its error code (a fixed set: the ingress's codes and 431's
    /// `head_too_large`), whether or not it came with a valid signature.
    pub fn record_refused(&self, reason: &'static str) {
        self.with(|| counter!(WEBHOOK_REFUSED, "reason" => reason).increment(1));
    }

    /// Ingress connections open now.
    pub fn set_connections_open(&self, open: usize) {
        self.with(|| gauge!(WEBHOOK_CONNECTIONS_OPEN).set(open as f64));
    }

    /// A new ingress connection had to wait: `INGRESS_MAX_CONNECTIONS` were open.
    pub fn record_connection_waited(&self) {
        self.with(|| counter!(WEBHOOK_CONNECTIONS_WAITED).increment(1));
    }

    /// What the process holds after a memory trim; figures the platform cannot tell are left out.
    pub fn record_memory(&self, usage: MemoryUsage) {
        let figures = [
            (RESIDENT_MEMORY, usage.resident),
            (HEAP_IN_USE, usage.heap_in_use),
            (HEAP_FREE, usage.heap_free),
        ];
        self.with(|| {
            for (name, bytes) in figures {
                if let Some(bytes) = bytes {
                    gauge!(name).set(bytes as f64);
                }
            }
        });
    }

    /// One publish's wait for the broker's confirm (or its failure).
    pub fn record_publish_confirm(&self, duration: Duration) {
        self.with(|| histogram!(WEBHOOK_PUBLISH_CONFIRM).record(duration));
    }
}

impl Metrics {
    /// A reconcile run that ended: counted by result, timed, and its drift counted per class.
    pub fn record_reconcile(
        &self,
        result: RunResult,
        duration: Duration,
        drift: &[(&'static str, u64)],
    ) {
        self.with(|| {
            counter!(RECONCILE_RUNS, "result" => result.as_str()).increment(1);
            histogram!(RECONCILE_DURATION).record(duration.as_secs_f64());
            for (class, count) in drift {
                counter!(RECONCILE_DRIFT, "class" => *class).increment(*count);
            }
        });
    }

    /// When the last applied run succeeded, from the runs table: every replica exports the
    /// same figure, whichever ran it, and a restart does not lose it.
    pub fn set_reconcile_last_success(&self, at: chrono::DateTime<chrono::Utc>) {
        let seconds = at.timestamp_millis() as f64 / 1000.0;
        self.with(|| gauge!(RECONCILE_LAST_SUCCESS).set(seconds));
    }

    /// The schedule's interval (0 when off), for the alert on runs that stopped happening.
    pub fn set_reconcile_interval(&self, interval: Option<Duration>) {
        let seconds = interval.map_or(0.0, |i| i.as_secs_f64());
        self.with(|| gauge!(RECONCILE_INTERVAL).set(seconds));
    }

    /// Open dead letters in the store, by reason: what waits for an operator. The dead-letter
    /// queue itself stays near empty, since the worker moves each letter into the store.
    pub fn set_dead_letters_open(&self, reason: &str, open: u64) {
        self.with(|| gauge!(DEAD_LETTERS_OPEN, "reason" => reason.to_owned()).set(open as f64));
    }
}

fn describe() {
    describe_counter!(
        WORKSPACE_CREATED,
        "Workspaces newly created (duplicates do not count)."
    );
    describe_counter!(WORKSPACE_FAILED, "Events dead-lettered, by failure reason.");
    describe_histogram!(
        PROVISIONING_DURATION,
        metrics::Unit::Seconds,
        "Duration of one provisioning transaction, by outcome."
    );
    describe_counter!(
        EVENTS_PROCESSED,
        "Events consumed, by Clerk type and outcome."
    );
    describe_counter!(EVENTS_RETRIED, "Retries scheduled, by reason.");
    describe_counter!(
        USERNAMES_REASSIGNED,
        "Derived usernames given up to a user who chose the same one in Clerk."
    );
    describe_histogram!(
        BATCH_SIZE,
        "Events provisioned together in one transaction (batches of two or more)."
    );
    describe_counter!(
        EVENTS_REPLAYED,
        "Replayed dead letters processed, by their original failure reason."
    );
    describe_histogram!(
        EVENT_LAG,
        metrics::Unit::Seconds,
        "From the ingress receiving an event to its commit."
    );
    describe_gauge!(
        CONSUMER_CONNECTED,
        "1 while the consumer holds a broker connection."
    );
    describe_gauge!(
        DELIVERIES_IN_FLIGHT,
        "Deliveries being provisioned or retried right now."
    );
    describe_counter!(
        WEBHOOK_REFUSED,
        "Webhook requests refused, by reason (the error code of the answer)."
    );
    describe_gauge!(
        WEBHOOK_CONNECTIONS_OPEN,
        "Ingress connections open now (at most INGRESS_MAX_CONNECTIONS)."
    );
    describe_counter!(
        WEBHOOK_CONNECTIONS_WAITED,
        "Ingress connections that waited for a slot: INGRESS_MAX_CONNECTIONS were open."
    );
    describe_gauge!(
        RESIDENT_MEMORY,
        metrics::Unit::Bytes,
        "Resident set size, read after each memory trim."
    );
    describe_gauge!(
        HEAP_IN_USE,
        metrics::Unit::Bytes,
        "Heap allocated and not freed: climbing under steady traffic means a leak."
    );
    describe_counter!(RECONCILE_RUNS, "Reconcile runs finished, by result.");
    describe_histogram!(
        RECONCILE_DURATION,
        metrics::Unit::Seconds,
        "Duration of one reconcile run."
    );
    describe_gauge!(
        RECONCILE_LAST_SUCCESS,
        "When the last applied reconcile run (any replica) succeeded, in seconds since the epoch."
    );
    describe_counter!(
        RECONCILE_DRIFT,
        "Users found out of step with Clerk by reconcile runs, by class: webhooks are being lost."
    );
    describe_gauge!(
        RECONCILE_INTERVAL,
        metrics::Unit::Seconds,
        "RECONCILE_INTERVAL of this worker; 0 when the schedule is off."
    );
    describe_gauge!(
        DEAD_LETTERS_OPEN,
        "Dead letters open in the store (not replayed, resolved or discarded), by failure reason."
    );
    describe_gauge!(
        HEAP_FREE,
        metrics::Unit::Bytes,
        "Heap freed but kept by the allocator after the last trim."
    );
    describe_counter!(
        TRACE_SPANS_DROPPED,
        "Spans the trace export dropped, by reason: queue_full (the collector is slower than the spans come) or export_failed (a batch the collector did not take)."
    );
}

/// Counters whose label values are all known, and the gauges, exported at zero from the start:
/// the exporter renders only series that were recorded, and a query (or a test) that a counter
/// stayed at 0 must find the series, not its absence (as Prometheus advises for known labels).
fn register_at_zero() {
    for name in [
        WORKSPACE_CREATED,
        USERNAMES_REASSIGNED,
        WEBHOOK_CONNECTIONS_WAITED,
    ] {
        counter!(name).absolute(0);
    }
    for reason in FailureReason::ALL {
        counter!(WORKSPACE_FAILED, "reason" => reason.as_str()).absolute(0);
        gauge!(DEAD_LETTERS_OPEN, "reason" => reason.as_str()).set(0.0);
    }
    for result in RunResult::ALL {
        counter!(RECONCILE_RUNS, "result" => result.as_str()).absolute(0);
    }
    for class in DRIFT_CLASSES {
        counter!(RECONCILE_DRIFT, "class" => class).absolute(0);
    }
    for reason in ProvisionError::RETRY_REASONS {
        counter!(EVENTS_RETRIED, "reason" => reason.as_str()).absolute(0);
    }
    record_dropped_spans();
    for name in [
        CONSUMER_CONNECTED,
        DELIVERIES_IN_FLIGHT,
        WEBHOOK_CONNECTIONS_OPEN,
    ] {
        gauge!(name).set(0.0);
    }
}

/// The spans the trace export dropped, as the export queue counts them (for the whole process).
fn record_dropped_spans() {
    for reason in DropReason::ALL {
        counter!(TRACE_SPANS_DROPPED, "reason" => reason.as_str()).absolute(queue::dropped(reason));
    }
}

/// Reasons read back from headers: only the codes this product writes, else `other`.
fn reason_label(reason: &str) -> &'static str {
    FailureReason::ALL
        .into_iter()
        .map(FailureReason::as_str)
        .find(|code| *code == reason)
        .unwrap_or("other")
}

/// Event types come from message bodies: keep the label set bounded and printable.
fn type_label(event_type: &str) -> String {
    let printable = event_type.len() <= 64
        && !event_type.is_empty()
        && event_type
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == '.' || c == '_');
    if printable {
        event_type.to_owned()
    } else {
        "other".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn upkeep_runs_on_its_own_while_nothing_scrapes() {
        let metrics = Metrics::new().unwrap();
        metrics.record_lag(Duration::from_millis(5));
        let stop = CancellationToken::new();
        let upkeep = tokio::spawn(
            metrics
                .clone()
                .run_upkeep(Duration::from_millis(100), stop.clone()),
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        stop.cancel();
        upkeep.await.unwrap();
        assert!(metrics.upkeep_runs() >= 3, "{} runs", metrics.upkeep_runs());
    }

    #[test]
    fn two_applications_keep_separate_figures() {
        let (a, b) = (Metrics::new().unwrap(), Metrics::new().unwrap());
        a.record_outcome("user.created", Outcome::Created, Duration::from_millis(3));
        assert!(a.render().contains("workspace_created_total 1"));
        assert!(b.render().contains("workspace_created_total 0"));
    }

    #[test]
    fn memory_figures_are_exported_and_unknown_ones_left_out() {
        let metrics = Metrics::new().unwrap();
        metrics.record_memory(MemoryUsage {
            resident: Some(3 << 20),
            heap_in_use: Some(2 << 20),
            heap_free: None,
        });
        let page = metrics.render();
        assert!(
            page.contains(&format!("{RESIDENT_MEMORY} {}", 3 << 20)),
            "{page}"
        );
        assert!(
            page.contains(&format!("{HEAP_IN_USE} {}", 2 << 20)),
            "{page}"
        );
        assert!(!page.contains(&format!("{HEAP_FREE} ")), "{page}");
    }

    #[test]
    fn clerk_types_are_their_own_labels_and_anything_else_is_other() {
        assert_eq!(type_label("user.created"), "user.created");
        assert_eq!(
            type_label("organizationMembership.created"),
            "organizationMembership.created"
        );
        assert_eq!(type_label(""), "other");
        assert_eq!(type_label(&"a".repeat(65)), "other");
        assert_eq!(type_label("user.created\n# HELP"), "other");
    }
}
