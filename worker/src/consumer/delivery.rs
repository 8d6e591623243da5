//! What a delivery says about itself: its names for logs and metrics ([`Context`]), the
//! attempts earlier deliveries made, and how long ago the ingress received it. Read from its
//! properties and headers; nothing here talks to the broker.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::Delivery;

use crate::broker::{integer_header, text_header};
use crate::domain::{Event, UserId};
use crate::error::Rejected;
use crate::retry::Attempts;
use crate::topology::header::{
    ACQUIRED_COUNT, DELIVERY_COUNT, FAILING_SINCE_MS, FAILURE_REASON, RECEIVED_AT_MS, REPLAY_COUNT,
    RETRY_ATTEMPTS,
};

/// What the logs and metrics say about a delivery.
pub struct Context {
    pub event_id: String,
    pub event_type: String,
    pub user_id: Option<String>,
    /// For a replayed dead letter, the reason it failed before.
    pub replayed_after: Option<String>,
    /// RabbitMQ 4.3's `x-acquired-count`: every hand-out of the message, blameless ones
    /// included. For logs only; the budget reads the delivery count.
    pub acquired: Option<u32>,
}

impl Context {
    pub fn of(delivery: &Delivery, parsed: &Result<Event, Rejected>) -> Self {
        match parsed {
            Ok(event) => Self::named(delivery, event.event_type(), event.user_id()),
            Err(_) => Self::named(delivery, delivery.routing_key.as_str(), None),
        }
    }

    pub fn named(delivery: &Delivery, event_type: &str, user_id: Option<&UserId>) -> Self {
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
            acquired: header_i64(delivery, ACQUIRED_COUNT).and_then(|n| u32::try_from(n).ok()),
        }
    }
}

/// Earlier deliveries of this message (quorum queues count them in `x-delivery-count`).
pub fn redeliveries(delivery: &Delivery) -> u32 {
    header_u32(delivery, DELIVERY_COUNT)
}

/// What earlier attempts of this event already did: its redeliveries, and the attempts that
/// failed before it was deferred to a delay queue.
pub fn earlier_attempts(delivery: &Delivery) -> Attempts {
    let deferred = header_u32(delivery, RETRY_ATTEMPTS);
    Attempts {
        made: redeliveries(delivery).saturating_add(deferred),
        failed: deferred,
        transient: 0,
        here: 0,
    }
}

/// Whether this is the event's first delivery: not redelivered (the broker's flag covers the
/// returns without blame, which `x-delivery-count` does not count), not a retry from a delay
/// queue, not a replayed dead letter. Its trace then continues the publisher's.
pub fn is_first_delivery(delivery: &Delivery) -> bool {
    if delivery.redelivered {
        return false;
    }
    let Some(headers) = delivery.properties.headers() else {
        return true;
    };
    [DELIVERY_COUNT, RETRY_ATTEMPTS, REPLAY_COUNT]
        .iter()
        .all(|name| integer_header(headers, name).unwrap_or(0) == 0)
}

/// When the event first failed, as a deferred retry carries it; never later than now, so
/// neither a clock ahead of ours nor a bad header can stretch the conflict window.
pub fn failing_since(delivery: &Delivery) -> Option<DateTime<Utc>> {
    let since = DateTime::from_timestamp_millis(header_i64(delivery, FAILING_SINCE_MS)?)?;
    Some(since.min(Utc::now()))
}

/// Time since `since`; zero if that is ahead of this clock.
pub fn failing_for(since: DateTime<Utc>) -> Duration {
    (Utc::now() - since).to_std().unwrap_or_default()
}

/// Time since the ingress received the event, from the millisecond header it sets.
pub fn lag_since_received(delivery: &Delivery) -> Option<Duration> {
    let received = header_i64(delivery, RECEIVED_AT_MS)?;
    let lag_ms = Utc::now().timestamp_millis().checked_sub(received)?;
    u64::try_from(lag_ms).ok().map(Duration::from_millis)
}

fn header_u32(delivery: &Delivery, name: &str) -> u32 {
    header_i64(delivery, name)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

fn header_i64(delivery: &Delivery, name: &str) -> Option<i64> {
    integer_header(delivery.properties.headers().as_ref()?, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_time_ahead_of_this_clock_has_lasted_no_time() {
        let ahead = Utc::now() + chrono::TimeDelta::seconds(60);
        assert_eq!(failing_for(ahead), Duration::ZERO);
        let behind = Utc::now() - chrono::TimeDelta::seconds(60);
        assert!(failing_for(behind) >= Duration::from_secs(60));
    }
}
