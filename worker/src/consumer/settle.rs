//! Settling deliveries: each one is acknowledged, dead-lettered (published with a confirm, then
//! acknowledged) or handed back to the queue, exactly once, on the consumer channel, and only
//! after its fate is sealed.
//!
//! A batch committed in one transaction is acknowledged with a single `multiple` ack (one frame,
//! one broker command) when its tags are the lowest still unsettled on the channel, which is the
//! usual case: batches are cut from consecutive deliveries. Otherwise, a `multiple` ack would
//! also settle someone else's delivery, so each is acknowledged on its own.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use std::time::Duration;

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tracing::{error, warn};

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::AMQPValue;

use super::delivery::{Context, Processor};
use crate::broker;
use crate::dead_letter::{self, Failure};
use crate::error::ProvisionError;
use crate::retry::Attempts;
use crate::topology::header::{DELIVERY_COUNT, FIRST_FAILED_AT, RETRY_ATTEMPTS};

pub struct Settlements {
    channel: Channel,
    /// Tags taken from the consumer and not yet settled. A tag leaves only once its settle frame
    /// is written, so a `multiple` ack can never overtake an earlier single one.
    unsettled: Mutex<BTreeSet<u64>>,
}

impl Settlements {
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
            unsettled: Mutex::default(),
        }
    }

    /// Registers a delivery taken from the consumer, before anything can settle it. Tags come
    /// in increasing order, so no later delivery has a lower one.
    pub fn taken(&self, tag: u64) {
        self.lock().insert(tag);
    }

    /// Acknowledges `tags`, whose work is done.
    pub async fn ack(&self, tags: &[u64]) -> Result<(), lapin::Error> {
        let result = match self.covering_tag(tags) {
            Some(highest) => {
                let all_up_to = BasicAckOptions { multiple: true };
                self.channel.basic_ack(highest, all_up_to).await
            }
            None => {
                let mut result = Ok(());
                for &tag in tags {
                    let acked = self
                        .channel
                        .basic_ack(tag, BasicAckOptions::default())
                        .await;
                    result = result.and(acked);
                }
                result
            }
        };
        self.settled(tags);
        result
    }

    /// Hands a delivery back to the queue, for this or another worker to take again.
    pub async fn requeue(&self, tag: u64) -> Result<(), lapin::Error> {
        let back = BasicNackOptions {
            requeue: true,
            multiple: false,
        };
        let result = self.channel.basic_nack(tag, back).await;
        self.settled(&[tag]);
        result
    }

    fn covering_tag(&self, tags: &[u64]) -> Option<u64> {
        covering_tag(&self.lock(), tags)
    }

    fn settled(&self, tags: &[u64]) {
        let mut unsettled = self.lock();
        for tag in tags {
            unsettled.remove(tag);
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<u64>> {
        // The set stays consistent whatever panicked while holding it: each update is one call.
        self.unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The highest of several `tags` when the `unsettled` tags up to it are exactly `tags`: then one
/// `multiple` ack settles them and nothing else.
fn covering_tag(unsettled: &BTreeSet<u64>, tags: &[u64]) -> Option<u64> {
    let highest = *tags.iter().max()?;
    if tags.len() < 2 {
        return None;
    }
    let mut up_to = unsettled.range(..=highest);
    let exactly_ours = up_to.clone().count() == tags.len() && up_to.all(|tag| tags.contains(tag));
    exactly_ours.then_some(highest)
}

/// Carrying out a delivery's fate on the broker.
impl Processor {
    /// Acknowledges deliveries whose transaction committed; `context` names them in a warning.
    pub(super) async fn ack(&self, deliveries: &[&Delivery], context: &Context) {
        let tags: Vec<u64> = deliveries.iter().map(|d| d.delivery_tag).collect();
        if let Err(err) = self.settlements.ack(&tags).await {
            // The broker will deliver them again; provisioning absorbs the repeat.
            warn!(event_id = %context.event_id, count = tags.len(), error = %err, "ack failed");
        }
    }

    pub(super) async fn dead_letter(
        &self,
        delivery: &Delivery,
        context: &Context,
        failure: Failure,
        elapsed: Duration,
    ) {
        let published = dead_letter::publish(
            &self.publisher,
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

    /// Sends the delivery to the retry queue to come back after `delay`, with the attempts
    /// it used, then acknowledges it: waiting there holds no slot of this consumer.
    pub(super) async fn defer(
        &self,
        delivery: &Delivery,
        context: &Context,
        err: &ProvisionError,
        attempts: Attempts,
        first_failed_at: DateTime<Utc>,
        delay: Duration,
    ) {
        let properties = deferred_properties(delivery, attempts, first_failed_at, delay);
        let published =
            broker::republish_as(&self.publisher, &self.retry_exchange, delivery, properties).await;
        if let Err(publish_err) = published {
            // Not in the retry queue, so it must not leave the main queue either.
            error!(event_id = %context.event_id, error = %publish_err, "deferring failed; requeueing");
            self.requeue(delivery, context).await;
            return;
        }
        self.metrics.record_retry(err.reason_code());
        warn!(
            user_id = context.user_id.as_deref(),
            event_id = %context.event_id,
            attempt = attempts.made,
            budget_used = attempts.budgeted,
            reason = err.reason_code(),
            error = %err,
            retry_in_ms = delay.as_millis() as u64,
            "provisioning failed; retrying from the retry queue"
        );
        self.ack(&[delivery], context).await;
    }

    /// Hands a delivery back to the queue; if that fails, closing the channel does it.
    pub(super) async fn requeue(&self, delivery: &Delivery, context: &Context) {
        if let Err(err) = self.settlements.requeue(delivery.delivery_tag).await {
            warn!(event_id = %context.event_id, error = %err, "nack failed; the broker requeues on close");
        }
    }
}

/// The delivery's properties for its stay in the retry queue: its per-message TTL, the budget
/// used so far, and when it first failed. The broker's delivery count starts again.
fn deferred_properties(
    delivery: &Delivery,
    attempts: Attempts,
    first_failed_at: DateTime<Utc>,
    delay: Duration,
) -> BasicProperties {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers = broker::without_header(&headers, DELIVERY_COUNT);
    headers.insert(
        RETRY_ATTEMPTS.into(),
        AMQPValue::LongLongInt(i64::from(attempts.budgeted)),
    );
    if !headers.contains_key(FIRST_FAILED_AT) {
        headers.insert(
            FIRST_FAILED_AT.into(),
            broker::long_string(&dead_letter::timestamp(first_failed_at)),
        );
    }
    let ttl_ms = delay.as_millis().max(1).to_string();
    delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_expiration(ttl_ms.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsettled(tags: &[u64]) -> BTreeSet<u64> {
        tags.iter().copied().collect()
    }

    #[test]
    fn a_batch_of_the_lowest_unsettled_tags_takes_one_multiple_ack() {
        assert_eq!(
            covering_tag(&unsettled(&[3, 4, 5, 6, 9]), &[5, 3, 4]),
            Some(5)
        );
    }

    #[test]
    fn a_lower_tag_still_unsettled_means_one_ack_each() {
        // Tag 2 belongs to a delivery still at work: a multiple ack up to 5 would settle it.
        assert_eq!(covering_tag(&unsettled(&[2, 3, 4, 5]), &[3, 4, 5]), None);
    }

    #[test]
    fn a_gap_inside_the_batch_held_by_another_delivery_means_one_ack_each() {
        assert_eq!(covering_tag(&unsettled(&[3, 4, 5]), &[3, 5]), None);
    }

    #[test]
    fn a_single_delivery_is_acked_alone() {
        assert_eq!(covering_tag(&unsettled(&[7]), &[7]), None);
        assert_eq!(covering_tag(&unsettled(&[]), &[]), None);
    }
}
