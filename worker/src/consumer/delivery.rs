//! One delivery, from bytes to its fate: parse, provision (retrying as the policy decides), then
//! acknowledge or dead-letter. The ack comes only after the transaction committed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::Channel;
use lapin::message::Delivery;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::settle::Settlements;
use crate::broker::{integer_header, text_header};
use crate::clerk;
use crate::dead_letter::{self, Failure};
use crate::domain::{Event, UserId, UserProfile};
use crate::error::{ProvisionError, Rejected};
use crate::metrics::Metrics;
use crate::provision::{self, Outcome, Provisioned};
use crate::retry::{Attempts, Decision, RetryPolicy};
use crate::topology::header::{DELIVERY_COUNT, FAILURE_REASON, RECEIVED_AT_MS, REPLAY_COUNT};

/// Provisions deliveries; shared by every delivery task of one broker session.
pub struct Processor {
    pub db: DatabaseConnection,
    pub policy: RetryPolicy,
    /// Confirm-mode channel dead letters are published on.
    pub dead_letters: Channel,
    pub dead_letter_exchange: String,
    pub shutdown: CancellationToken,
    /// Acks and requeues on the consumer channel.
    pub settlements: Settlements,
    pub metrics: Metrics,
}

/// What the logs and metrics say about a delivery.
struct Context {
    event_id: String,
    event_type: String,
    user_id: Option<String>,
    /// For a replayed dead letter, the reason it failed before.
    replayed_after: Option<String>,
}

impl Processor {
    /// Takes one delivery, parsed once by the caller, to its end: acked, dead-lettered, or (on
    /// shutdown mid-retry) returned to the queue. Never drops it silently.
    async fn process(&self, delivery: Delivery, parsed: Result<Event, Rejected>) {
        self.metrics.deliveries_in_flight(1.0);
        let context = Context::of(&delivery, &parsed);
        let mut attempts = Attempts {
            made: redeliveries(&delivery),
            budgeted: 0,
        };
        let mut delays = self.policy.delays();
        let mut first_failed_at = None;
        loop {
            let started = Instant::now();
            let result = attempt(&self.db, &parsed).await;
            let elapsed = started.elapsed();
            attempts = RetryPolicy::count(&result, attempts);
            let err = match result {
                Ok(provisioned) => {
                    self.record_success(&delivery, &context, &provisioned, attempts, elapsed);
                    self.ack(&[&delivery], &context).await;
                    break;
                }
                Err(err) => err,
            };
            self.metrics.record_failed_attempt(elapsed);
            let first_failed_at = *first_failed_at.get_or_insert_with(Utc::now);
            match self.policy.decide(&err, attempts) {
                Decision::Retry => {
                    if !self
                        .wait_to_retry(&context, &err, attempts, &mut delays)
                        .await
                    {
                        self.give_back(&delivery, &context, &err).await;
                        break;
                    }
                }
                Decision::DeadLetter(reason) => {
                    let failure = Failure {
                        reason,
                        detail: err.to_string(),
                        attempts: attempts.made,
                        first_failed_at,
                        last_failed_at: Utc::now(),
                    };
                    self.dead_letter(&delivery, &context, failure, elapsed)
                        .await;
                    break;
                }
            }
        }
        self.settled(&context);
    }

    /// Several deliveries at once: distinct users' changes share one transaction; anything else
    /// (and the whole batch, if its transaction fails) goes one by one, concurrently, so one bad
    /// event costs its batch-mates one retry at most.
    pub async fn process_batch(&self, deliveries: Vec<Delivery>) {
        let mut together = Vec::new();
        let mut alone = Vec::new();
        let mut users = HashSet::new();
        for delivery in deliveries {
            match clerk::parse_event(&delivery.data) {
                Ok(Event::UserChanged(profile)) if users.insert(profile.id.clone()) => {
                    together.push((delivery, profile));
                }
                parsed => alone.push((delivery, parsed)),
            }
        }
        let one_by_one = if together.len() < 2 {
            Err(together)
        } else {
            self.provision_together(together).await
        };
        if let Err(rest) = one_by_one {
            alone.extend(
                rest.into_iter()
                    .map(|(delivery, profile)| (delivery, Ok(Event::UserChanged(profile)))),
            );
        }
        futures::future::join_all(
            alone
                .into_iter()
                .map(|(delivery, parsed)| self.process(delivery, parsed)),
        )
        .await;
    }

    /// One transaction for the batch; on failure, the deliveries back for one-by-one.
    async fn provision_together(
        &self,
        together: Vec<(Delivery, Box<UserProfile>)>,
    ) -> Result<(), Vec<(Delivery, Box<UserProfile>)>> {
        self.metrics.deliveries_in_flight(together.len() as f64);
        let started = Instant::now();
        let profiles: Vec<&UserProfile> = together.iter().map(|(_, p)| p.as_ref()).collect();
        let result = provision::provision_batch(&self.db, &profiles).await;
        let elapsed = started.elapsed();
        let results = match result {
            Ok(results) => results,
            Err(err) => {
                self.metrics.deliveries_in_flight(-(together.len() as f64));
                debug!(size = together.len(), error = %err, "batch failed; one event at a time");
                return Err(together);
            }
        };
        self.metrics.record_batch(together.len());
        let mut contexts = Vec::with_capacity(together.len());
        for ((delivery, profile), provisioned) in together.iter().zip(results) {
            let context = Context::named(delivery, profile.event_type(), Some(&profile.id));
            let attempts = Attempts {
                made: redeliveries(delivery) + 1,
                budgeted: 0,
            };
            self.record_success(delivery, &context, &provisioned, attempts, elapsed);
            contexts.push(context);
        }
        let deliveries: Vec<&Delivery> = together.iter().map(|(delivery, _)| delivery).collect();
        if let Some(first) = contexts.first() {
            self.ack(&deliveries, first).await;
        }
        contexts.iter().for_each(|context| self.settled(context));
        Ok(())
    }

    /// What a success leaves behind: its metrics and its log line.
    fn record_success(
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
    fn settled(&self, context: &Context) {
        if let Some(reason) = &context.replayed_after {
            self.metrics.record_replayed(reason);
        }
        self.metrics.deliveries_in_flight(-1.0);
    }

    /// Acknowledges deliveries whose transaction committed; `context` names them in a warning.
    async fn ack(&self, deliveries: &[&Delivery], context: &Context) {
        let tags: Vec<u64> = deliveries.iter().map(|d| d.delivery_tag).collect();
        if let Err(err) = self.settlements.ack(&tags).await {
            // The broker will deliver them again; provisioning absorbs the repeat.
            warn!(event_id = %context.event_id, count = tags.len(), error = %err, "ack failed");
        }
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        context: &Context,
        failure: Failure,
        elapsed: Duration,
    ) {
        let published = dead_letter::publish(
            &self.dead_letters,
            &self.dead_letter_exchange,
            delivery,
            &failure,
        )
        .await;
        if let Err(err) = published {
            // Not in the dead-letter queue, so it must not leave the main queue either.
            error!(event_id = %context.event_id, error = %err, "dead-lettering failed; requeueing");
            self.requeue(delivery, context).await;
            return;
        }
        self.metrics
            .record_dead_letter(&context.event_type, failure.reason);
        error!(
            user_id = context.user_id.as_deref(),
            event_id = %context.event_id,
            event_type = %context.event_type,
            reason = failure.reason.as_str(),
            detail = %failure.detail,
            attempt = failure.attempts,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "WORKSPACE_FAILED"
        );
        self.ack(&[delivery], context).await;
    }

    /// Sleeps before the next attempt; false when shutdown interrupted the wait.
    async fn wait_to_retry(
        &self,
        context: &Context,
        err: &ProvisionError,
        attempts: Attempts,
        delays: &mut impl Iterator<Item = Duration>,
    ) -> bool {
        let delay = delays.next().unwrap_or(self.policy.max_delay);
        self.metrics.record_retry(err.reason_code());
        warn!(
            user_id = context.user_id.as_deref(),
            event_id = %context.event_id,
            attempt = attempts.made,
            reason = err.reason_code(),
            error = %err,
            retry_in_ms = delay.as_millis() as u64,
            "provisioning failed; retrying"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.shutdown.cancelled() => false,
        }
    }

    /// Shutting down with this delivery unfinished: it goes back to the queue.
    async fn give_back(&self, delivery: &Delivery, context: &Context, err: &ProvisionError) {
        info!(event_id = %context.event_id, error = %err, "shutting down; returning the delivery to the queue");
        self.requeue(delivery, context).await;
    }

    async fn requeue(&self, delivery: &Delivery, context: &Context) {
        if let Err(err) = self.settlements.requeue(delivery.delivery_tag).await {
            warn!(event_id = %context.event_id, error = %err, "nack failed; the broker requeues on close");
        }
    }
}

async fn attempt(
    db: &DatabaseConnection,
    parsed: &Result<Event, Rejected>,
) -> Result<Provisioned, ProvisionError> {
    match parsed {
        Ok(event) => provision::provision(db, event).await,
        Err(rejected) => Err(rejected.clone().into()),
    }
}

impl Context {
    fn of(delivery: &Delivery, parsed: &Result<Event, Rejected>) -> Self {
        match parsed {
            Ok(event) => Self::named(delivery, event.event_type(), event.user_id()),
            Err(_) => Self::named(delivery, delivery.routing_key.as_str(), None),
        }
    }

    fn named(delivery: &Delivery, event_type: &str, user_id: Option<&UserId>) -> Self {
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
fn redeliveries(delivery: &Delivery) -> u32 {
    header_i64(delivery, DELIVERY_COUNT)
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
