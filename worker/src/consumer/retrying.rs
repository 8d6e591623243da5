//! The retry loop: one delivery, parsed once, attempted until it succeeds, is dead-lettered, or
//! its session ends (then it goes back to the queue). The policy decides; this only waits.

use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::message::Delivery;
use tracing::{info, warn};

use super::delivery::{Context, Processor, attempt, earlier_attempts};
use crate::dead_letter::Failure;
use crate::domain::Event;
use crate::error::{ProvisionError, Rejected};
use crate::retry::{Attempts, Decision, RetryPolicy};

impl Processor {
    /// Takes one delivery, parsed once by the caller, to its end: acked, dead-lettered, or (on
    /// shutdown mid-retry) returned to the queue. Never drops it silently.
    pub(super) async fn process(&self, delivery: Delivery, parsed: Result<Event, Rejected>) {
        self.metrics.deliveries_in_flight(1.0);
        let context = Context::of(&delivery, &parsed);
        let mut attempts = earlier_attempts(&delivery);
        let mut delays = self.policy.delays();
        let mut first_failed_at = None;
        loop {
            let started = Instant::now();
            let result = attempt(&self.db, self.attempt_timeout, &parsed).await;
            let elapsed = started.elapsed();
            attempts = RetryPolicy::count(&result, attempts);
            match (&parsed, &result) {
                (_, Err(ProvisionError::Unavailable(_))) => self.outage.unavailable(),
                // Only an answer from the database ends an outage: a rejected body or an event
                // type we ignore never asked it anything.
                (Ok(Event::UserChanged(_) | Event::UserDeleted(_)), _) => self.outage.over(),
                _ => {}
            }
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
                Decision::Defer(delay) => {
                    self.defer(&delivery, &context, &err, attempts, first_failed_at, delay)
                        .await;
                    break;
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

    /// Sleeps before the next attempt; false when the session ended meanwhile.
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
            () = self.stop.cancelled() => false,
            () = self.outage.paused.cancelled() => false,
        }
    }

    /// The session ends with this delivery unfinished: it goes back to the queue. Paused for a
    /// database outage, the channel's close returns it with the rest.
    async fn give_back(&self, delivery: &Delivery, context: &Context, err: &ProvisionError) {
        info!(event_id = %context.event_id, error = %err, "session ending; returning the delivery to the queue");
        if !self.outage.paused.is_cancelled() {
            self.requeue(delivery, context).await;
        }
    }
}
