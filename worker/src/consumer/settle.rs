//! The settler: carries out each delivery's [`Fate`] on the broker, for single deliveries and
//! batches alike, and owns the consumer channel's settlements. Each delivery is settled exactly
//! once, and only after its fate is sealed: a dead letter or a deferred retry is published with
//! a confirm before the delivery leaves the main queue.
//!
//! Handing back: RabbitMQ 4.3 counts `basic.reject` toward a quorum queue's delivery limit and
//! `basic.nack` not (RabbitMQ 3.x counts both). A delivery that failed and could not be moved
//! on is rejected, so a message nothing can settle ends in the broker's own dead-lettering; a
//! delivery handed back without blame (shutdown, the outage pause, a session ending mid-retry)
//! is nacked. [`settlement`] is that choice, as a value.
//!
//! A batch committed in one transaction is acknowledged with a single `multiple` ack (one frame,
//! one broker command) when its tags are the lowest still unsettled on the channel, which is the
//! usual case: batches are cut from consecutive deliveries. Otherwise, a `multiple` ack would
//! also settle someone else's delivery, so each is acknowledged on its own.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel};
use tokio::sync::RwLock;
use tracing::{error, info, warn};

use super::delivery::{Context, failing_for};
use crate::broker::{self, PublishError};
use crate::dead_letter::{self, Failure};
use crate::error::ProvisionError;
use crate::metrics::Metrics;
use crate::retry::{Attempts, Fate};
use crate::topology::RetryRoute;
use crate::topology::header::{
    DEATH, DELIVERY_COUNT, FAILING_SINCE_MS, FIRST_FAILED_AT, RETRY_ATTEMPTS,
};

/// The broker call that settles one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Done with it: it leaves the queue.
    Ack,
    /// Back to the queue, counted against its delivery limit (`basic.reject`, requeue).
    Reject,
    /// Back to the queue without blame (`basic.nack`, requeue): not counted on RabbitMQ 4.3.
    Nack,
}

/// How a delivery with `fate` is settled, given whether the publish its fate needed (to the
/// dead-letter queue or a delay queue) was confirmed.
pub fn settlement(fate: Fate, published: bool) -> Settlement {
    match fate {
        Fate::Ack => Settlement::Ack,
        Fate::DeadLetter(_) | Fate::Defer { .. } if published => Settlement::Ack,
        // Not in the other queue, so it must not leave this one; and it failed, so it counts.
        Fate::DeadLetter(_) | Fate::Defer { .. } => Settlement::Reject,
        // A retry the session cannot wait for is a return without blame.
        Fate::Retry { .. } | Fate::GiveBack => Settlement::Nack,
    }
}

/// What a delivery's attempts came to: what its settlement writes in headers, metrics and logs.
pub struct Record<'a> {
    pub attempts: Attempts,
    /// When the event first failed: for a deferred retry, as carried in `x-failing-since-ms`;
    /// otherwise its first failed attempt here. `None` while it has never failed.
    pub first_failed_at: Option<DateTime<Utc>>,
    /// The last attempt's error; `None` after a success.
    pub error: Option<&'a ProvisionError>,
    /// How long the last attempt took.
    pub elapsed: Duration,
}

/// Carries out fates on one broker session's channels.
pub struct Settler {
    /// The consumer channel: acks and returns.
    channel: Channel,
    /// Confirm-mode channel dead letters and deferred retries are published on.
    publisher: Channel,
    dead_letter_exchange: String,
    /// The delay queues, for [`Fate::Defer`].
    retry: RetryRoute,
    metrics: Metrics,
    tags: Mutex<Tags>,
    /// Held shared while one delivery's settlement is checked and sent, and exclusively while
    /// everything is handed back: no ack or return of a tag can reach the broker after the
    /// nack of everything (a settled tag settled again is a channel error).
    sending: RwLock<()>,
}

/// The consumer channel's deliveries as the settler knows them.
#[derive(Default)]
struct Tags {
    /// Taken from the consumer and not yet settled. A tag leaves only once its settle frame is
    /// written, so a `multiple` ack can never overtake an earlier single one.
    unsettled: BTreeSet<u64>,
    /// Everything was handed back at once: the broker has every delivery of this channel back,
    /// and settling one now would fail the channel.
    all_given_back: bool,
}

impl Settler {
    pub fn new(
        channel: Channel,
        publisher: Channel,
        dead_letter_exchange: String,
        retry: RetryRoute,
        metrics: Metrics,
    ) -> Self {
        Self {
            channel,
            publisher,
            dead_letter_exchange,
            retry,
            metrics,
            tags: Mutex::default(),
            sending: RwLock::new(()),
        }
    }

    /// Registers a delivery taken from the consumer, before anything can settle it. Tags come
    /// in increasing order, so no later delivery has a lower one.
    pub fn taken(&self, tag: u64) {
        self.lock().unsettled.insert(tag);
    }

    /// Carries out one delivery's fate: publishes what the fate needs, then settles it.
    pub async fn carry_out(
        &self,
        delivery: &Delivery,
        context: &Context,
        fate: Fate,
        record: &Record<'_>,
    ) {
        let published = match fate {
            Fate::DeadLetter(reason) => {
                let failure = Failure {
                    reason,
                    detail: record.error.map(ToString::to_string).unwrap_or_default(),
                    attempts: record.attempts.made,
                    first_failed_at: record.first_failed_at.unwrap_or_else(Utc::now),
                    last_failed_at: Utc::now(),
                };
                self.dead_letter(delivery, context, &failure, record.elapsed)
                    .await
            }
            Fate::Defer { delay } => self.defer(delivery, context, record, delay).await,
            Fate::Ack | Fate::Retry { .. } | Fate::GiveBack => Ok(()),
        };
        match settlement(fate, published.is_ok()) {
            Settlement::Ack => self.ack(&[delivery], context).await,
            Settlement::Reject => {
                if let Err(err) = published {
                    error!(event_id = %context.event_id, error = %err, "publishing the delivery's fate failed; requeueing");
                }
                self.hand_back(delivery, context, Settlement::Reject).await;
            }
            Settlement::Nack => {
                info!(
                    event_id = %context.event_id,
                    error = record.error.map(tracing::field::display),
                    acquired = context.acquired,
                    "session ending; returning the delivery to the queue"
                );
                self.hand_back(delivery, context, Settlement::Nack).await;
            }
        }
    }

    /// Acknowledges deliveries whose transaction committed; `context` names them in a warning.
    pub async fn ack(&self, deliveries: &[&Delivery], context: &Context) {
        let tags: Vec<u64> = deliveries.iter().map(|d| d.delivery_tag).collect();
        let _sending = self.sending.read().await;
        let covering = {
            let tags_now = self.lock();
            if tags_now.all_given_back {
                return;
            }
            covering_tag(&tags_now.unsettled, &tags)
        };
        let acked = match covering {
            Some(highest) => {
                let all_up_to = BasicAckOptions { multiple: true };
                self.channel.basic_ack(highest, all_up_to).await
            }
            None => {
                let mut result = Ok(());
                for &tag in &tags {
                    let acked = self
                        .channel
                        .basic_ack(tag, BasicAckOptions::default())
                        .await;
                    result = result.and(acked);
                }
                result
            }
        };
        self.settled(&tags);
        if let Err(err) = acked {
            // The broker will deliver them again; provisioning absorbs the repeat.
            warn!(event_id = %context.event_id, count = tags.len(), error = %err, "ack failed");
        }
    }

    /// Hands every delivery of the channel back to the queue without blame, buffered ones
    /// included (`basic.nack` of tag 0 with `multiple`): on shutdown after the drain, and when
    /// the session pauses for a database outage. Work still running settles nothing afterwards.
    pub async fn give_back_all(&self) {
        let _everything_sent = self.sending.write().await;
        {
            let mut tags = self.lock();
            tags.all_given_back = true;
            tags.unsettled.clear();
        }
        let everything = BasicNackOptions {
            multiple: true,
            requeue: true,
        };
        if let Err(err) = self.channel.basic_nack(0, everything).await {
            warn!(error = %err, "handing the deliveries back failed; closing the channel does it");
        }
    }

    /// Returns one delivery to the queue; if that fails, closing the channel does it.
    async fn hand_back(&self, delivery: &Delivery, context: &Context, how: Settlement) {
        let _sending = self.sending.read().await;
        if self.lock().all_given_back {
            return;
        }
        let tag = delivery.delivery_tag;
        let returned = match how {
            Settlement::Reject => {
                let counted = BasicRejectOptions { requeue: true };
                self.channel.basic_reject(tag, counted).await
            }
            Settlement::Ack | Settlement::Nack => {
                let blameless = BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                self.channel.basic_nack(tag, blameless).await
            }
        };
        self.settled(&[tag]);
        if let Err(err) = returned {
            warn!(event_id = %context.event_id, error = %err, "returning the delivery failed; the broker requeues on close");
        }
    }

    /// Publishes a dead letter; counted and logged once the broker confirmed it.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        context: &Context,
        failure: &Failure,
        elapsed: Duration,
    ) -> Result<(), PublishError> {
        dead_letter::publish(
            &self.publisher,
            &self.dead_letter_exchange,
            delivery,
            failure,
        )
        .await?;
        self.metrics
            .record_dead_letter(&context.event_type, failure.reason);
        error!(
            user_id = context.user_id.as_deref(),
            event_id = %context.event_id,
            event_type = %context.event_type,
            reason = failure.reason.as_str(),
            detail = %failure.detail,
            attempt = failure.attempts,
            acquired = context.acquired,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "WORKSPACE_FAILED"
        );
        Ok(())
    }

    /// Sends the delivery to the delay queue whose wait is `delay`, to come back then with the
    /// attempts it made and the time it first failed: waiting there holds no slot of this
    /// consumer.
    async fn defer(
        &self,
        delivery: &Delivery,
        context: &Context,
        record: &Record<'_>,
        delay: Duration,
    ) -> Result<(), PublishError> {
        let first_failed_at = record.first_failed_at.unwrap_or_else(Utc::now);
        let properties =
            deferred_properties(&delivery.properties, record.attempts, first_failed_at);
        let queue = self.retry.delay_queue(delay);
        broker::republish_as(&self.publisher, &queue.name, delivery, properties).await?;
        let reason = record.error.map(ProvisionError::as_str);
        if let Some(reason) = reason {
            self.metrics.record_retry(reason);
        }
        warn!(
            user_id = context.user_id.as_deref(),
            event_id = %context.event_id,
            attempt = record.attempts.made,
            failing_for_ms = failing_for(first_failed_at).as_millis() as u64,
            reason,
            error = record.error.map(tracing::field::display),
            retry_in_ms = queue.wait.as_millis() as u64,
            delay_queue = %queue.name,
            "provisioning failed; retrying from the retry queue"
        );
        Ok(())
    }

    fn settled(&self, tags: &[u64]) {
        let mut tags_now = self.lock();
        for tag in tags {
            tags_now.unsettled.remove(tag);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tags> {
        // The tags stay consistent whatever panicked while holding them: each update is one call.
        self.tags.lock().unwrap_or_else(PoisonError::into_inner)
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

/// The delivery's properties for its stay in a delay queue: the attempts that failed so far,
/// and when it first failed (`x-failing-since-ms`, which the conflict window is measured from;
/// `x-first-failed-at` only if absent, as a dead letter keeps it). Without:
/// - a per-message TTL: the lower of it and the queue's would win, and a longer one ahead in the
///   queue would hold it back (expired only at the head);
/// - the broker's delivery count, which starts again in the main queue;
/// - `x-death`: each stay adds its own entry, and an older history naming the main queue (a
///   letter the broker dead-lettered at its delivery limit, then replayed) would make the broker
///   take the way back into the main queue for a dead-letter cycle and drop the message.
fn deferred_properties(
    properties: &BasicProperties,
    attempts: Attempts,
    first_failed_at: DateTime<Utc>,
) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    for broker_set in [DELIVERY_COUNT, DEATH] {
        headers = broker::without_header(&headers, broker_set);
    }
    headers.insert(
        RETRY_ATTEMPTS.into(),
        AMQPValue::LongLongInt(i64::from(attempts.failed)),
    );
    headers.insert(
        FAILING_SINCE_MS.into(),
        AMQPValue::LongLongInt(first_failed_at.timestamp_millis()),
    );
    if !headers.contains_key(FIRST_FAILED_AT) {
        headers.insert(
            FIRST_FAILED_AT.into(),
            broker::long_string(&dead_letter::timestamp(first_failed_at)),
        );
    }
    broker::without_expiration(properties).with_headers(headers)
}

#[cfg(test)]
mod tests {
    use lapin::types::FieldTable;

    use super::*;
    use crate::error::FailureReason;
    use crate::topology::header::RECEIVED_AT_MS;

    fn unsettled(tags: &[u64]) -> BTreeSet<u64> {
        tags.iter().copied().collect()
    }

    const SOON: Duration = Duration::from_millis(100);

    #[test]
    fn a_success_and_a_confirmed_move_leave_the_queue() {
        assert_eq!(settlement(Fate::Ack, true), Settlement::Ack);
        let moved = [
            Fate::DeadLetter(FailureReason::MissingEmail),
            Fate::Defer { delay: SOON },
        ];
        for fate in moved {
            assert_eq!(settlement(fate, true), Settlement::Ack, "{fate:?}");
        }
    }

    #[test]
    fn a_failed_event_that_could_not_be_moved_is_rejected_so_the_broker_counts_it() {
        let moved = [
            Fate::DeadLetter(FailureReason::RetriesExhausted),
            Fate::Defer { delay: SOON },
        ];
        for fate in moved {
            assert_eq!(settlement(fate, false), Settlement::Reject, "{fate:?}");
        }
    }

    #[test]
    fn a_delivery_handed_back_without_blame_is_nacked_never_rejected() {
        for published in [true, false] {
            assert_eq!(settlement(Fate::GiveBack, published), Settlement::Nack);
            let retry = Fate::Retry { delay: SOON };
            assert_eq!(settlement(retry, published), Settlement::Nack);
        }
    }

    #[test]
    fn a_deferred_event_carries_its_failures_and_no_ttl_count_or_death_of_its_own() {
        let mut headers = FieldTable::default();
        headers.insert(RECEIVED_AT_MS.into(), AMQPValue::LongLongInt(7));
        headers.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(3));
        headers.insert(DEATH.into(), AMQPValue::FieldArray(Default::default()));
        let delivered = BasicProperties::default()
            .with_message_id("msg_1".into())
            .with_headers(headers)
            .with_expiration("60000".into());
        let first = DateTime::from_timestamp_millis(1_764_300_000_123).unwrap();
        let attempts = Attempts {
            made: 4,
            failed: 3,
            transient: 0,
            here: 1,
        };
        let deferred = deferred_properties(&delivered, attempts, first);
        assert_eq!(*deferred.expiration(), None);
        assert_eq!(
            deferred.message_id().as_ref().map(|id| id.as_str()),
            Some("msg_1")
        );
        let headers = deferred.headers().clone().unwrap_or_default();
        let get = |key: &str| headers.inner().get(key).cloned();
        assert_eq!(get(RECEIVED_AT_MS), Some(AMQPValue::LongLongInt(7)));
        assert_eq!(get(DELIVERY_COUNT), None);
        assert_eq!(get(DEATH), None);
        assert_eq!(get(RETRY_ATTEMPTS), Some(AMQPValue::LongLongInt(3)));
        assert_eq!(
            get(FAILING_SINCE_MS),
            Some(AMQPValue::LongLongInt(1_764_300_000_123))
        );
        assert_eq!(
            get(FIRST_FAILED_AT),
            Some(broker::long_string("2025-11-28T03:20:00.123Z"))
        );
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
