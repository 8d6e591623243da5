//! What every delivery task shares: the [`Processor`], what logs and metrics say about a delivery
//! ([`Context`]), what a success leaves behind, and the headers a delivery is read by.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::Channel;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::settle::Settlements;
use crate::broker::{integer_header, text_header};
use crate::db::Pool;
use crate::domain::{Event, UserId};
use crate::error::{ProvisionError, Rejected};
use crate::metrics::Metrics;
use crate::provision::{self, Outcome, Provisioned};
use crate::retry::{Attempts, RetryPolicy};
use crate::topology::header::{
    DELIVERY_COUNT, FAILURE_REASON, RECEIVED_AT_MS, REPLAY_COUNT, RETRY_ATTEMPTS,
};

/// Provisions deliveries; shared by every delivery task of one broker session. Its work is
/// spread over the files named for each part: the retry loop (`retrying`), the batch split
/// (`batch`) and settlement (`settle`).
pub struct Processor {
    pub db: Pool,
    pub policy: RetryPolicy,
    /// How long one attempt (one event or one batch) may take (`PROVISION_ATTEMPT_TIMEOUT`).
    pub attempt_timeout: Duration,
    /// Confirm-mode channel dead letters and deferred retries are published on.
    pub publisher: Channel,
    pub dead_letter_exchange: String,
    /// Exchange into the retry queue, for [`crate::retry::Decision::Defer`].
    pub retry_exchange: String,
    /// Cancelled when the session ends (shutdown, or the broker connection lost): a delivery
    /// waiting to retry goes back to the queue instead.
    pub stop: CancellationToken,
    /// Acks and requeues on the consumer channel.
    pub settlements: Settlements,
    pub metrics: Metrics,
    /// How long the database has been unavailable, and the session's way to pause for it.
    pub outage: Outage,
}

/// A database outage as this session sees it: when attempts began to find the database
/// unavailable. Once that lasted `pause` without a success, `paused` is cancelled and the session
/// ends, its deliveries returned to the queue, rather than hold them for the whole outage (past
/// the broker's `consumer_timeout`, every one would come back with one more delivery count each
/// time).
pub struct Outage {
    /// A number per outage, so a timer left from an outage that ended does nothing.
    current: Arc<std::sync::Mutex<Option<u64>>>,
    started: std::sync::atomic::AtomicU64,
    pause: Duration,
    pub paused: CancellationToken,
}

impl Outage {
    pub fn new(pause: Duration) -> Self {
        Self {
            current: Arc::default(),
            started: std::sync::atomic::AtomicU64::new(0),
            pause,
            paused: CancellationToken::new(),
        }
    }

    /// An attempt found the database unavailable: the first of an outage starts its timer.
    pub(super) fn unavailable(&self) {
        let mut current = lock(&self.current);
        if current.is_some() {
            return;
        }
        let outage = self
            .started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *current = Some(outage);
        let (still, paused, pause) = (self.current.clone(), self.paused.clone(), self.pause);
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            if *lock(&still) == Some(outage) {
                paused.cancel();
            }
        });
    }

    /// An attempt got an answer from the database: the outage, if any, is over.
    pub(super) fn over(&self) {
        *lock(&self.current) = None;
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the logs and metrics say about a delivery.
pub(super) struct Context {
    pub(super) event_id: String,
    pub(super) event_type: String,
    pub(super) user_id: Option<String>,
    /// For a replayed dead letter, the reason it failed before.
    pub(super) replayed_after: Option<String>,
}

impl Processor {
    /// What a success leaves behind: its metrics and its log line.
    pub(super) fn record_success(
        &self,
        delivery: &Delivery,
        context: &Context,
        provisioned: &Provisioned,
        attempts: Attempts,
        elapsed: Duration,
    ) {
        self.metrics
            .record_outcome(&context.event_type, provisioned.outcome, elapsed);
        if let Some(lag) = lag_since_received(delivery) {
            self.metrics.record_lag(lag);
        }
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        if let Some(reassigned) = &provisioned.reassigned {
            self.metrics.record_username_reassigned();
            info!(
                user_id = %reassigned.user_id,
                username = %reassigned.username,
                claimed_by = context.user_id.as_deref(),
                event_id = %context.event_id,
                "USERNAME_REASSIGNED: a derived username went to the user who chose it"
            );
        }
        if provisioned.outcome == Outcome::Created {
            info!(
                user_id = context.user_id.as_deref(),
                event_id = %context.event_id,
                workspace_id = provisioned.workspace_id.as_deref(),
                attempt = attempts.made,
                duration_ms,
                "WORKSPACE_CREATED"
            );
        } else {
            info!(
                user_id = context.user_id.as_deref(),
                event_id = %context.event_id,
                event_type = %context.event_type,
                outcome = provisioned.outcome.as_str(),
                attempt = attempts.made,
                duration_ms,
                "event processed"
            );
        }
    }

    /// The delivery's fate is decided: count it as done.
    pub(super) fn settled(&self, context: &Context) {
        if let Some(reason) = &context.replayed_after {
            self.metrics.record_replayed(reason);
        }
        self.metrics.deliveries_in_flight(-1.0);
    }
}

/// One attempt at a parsed event, within the attempt deadline.
pub(super) async fn attempt(
    db: &Pool,
    deadline: Duration,
    parsed: &Result<Event, Rejected>,
) -> Result<Provisioned, ProvisionError> {
    match parsed {
        Ok(event) => provision::within(db, deadline, provision::provision(db, event)).await,
        Err(rejected) => Err(rejected.clone().into()),
    }
}

impl Context {
    pub(super) fn of(delivery: &Delivery, parsed: &Result<Event, Rejected>) -> Self {
        match parsed {
            Ok(event) => Self::named(delivery, event.event_type(), event.user_id()),
            Err(_) => Self::named(delivery, delivery.routing_key.as_str(), None),
        }
    }

    pub(super) fn named(delivery: &Delivery, event_type: &str, user_id: Option<&UserId>) -> Self {
        let event_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map_or_else(|| "-".to_owned(), |id| id.as_str().to_owned());
        let replayed_after = delivery.properties.headers().as_ref().and_then(|headers| {
            integer_header(headers, REPLAY_COUNT)
                .map(|_| text_header(headers, FAILURE_REASON).unwrap_or_default())
        });
        Self {
            event_id,
            event_type: event_type.to_owned(),
            user_id: user_id.map(|id| id.as_ref().to_owned()),
            replayed_after,
        }
    }
}

/// Earlier deliveries of this message (quorum queues count them in `x-delivery-count`).
pub(super) fn redeliveries(delivery: &Delivery) -> u32 {
    header_u32(delivery, DELIVERY_COUNT)
}

/// What earlier attempts of this event already did: its redeliveries, and the attempts made
/// before it was deferred to the retry queue, which used up budget.
pub(super) fn earlier_attempts(delivery: &Delivery) -> Attempts {
    let deferred = header_u32(delivery, RETRY_ATTEMPTS);
    Attempts {
        made: redeliveries(delivery).saturating_add(deferred),
        budgeted: deferred,
    }
}

fn header_u32(delivery: &Delivery, name: &str) -> u32 {
    header_i64(delivery, name)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// Time since the ingress received the event, from the millisecond header it sets.
fn lag_since_received(delivery: &Delivery) -> Option<Duration> {
    let received = header_i64(delivery, RECEIVED_AT_MS)?;
    let lag_ms = Utc::now().timestamp_millis().checked_sub(received)?;
    u64::try_from(lag_ms).ok().map(Duration::from_millis)
}

fn header_i64(delivery: &Delivery, name: &str) -> Option<i64> {
    integer_header(delivery.properties.headers().as_ref()?, name)
}
