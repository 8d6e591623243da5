//! Writing a dead letter: the delivery republished to the dead-letter exchange byte for byte,
//! with headers saying why and when it failed.

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};

use crate::broker::{self, PublishError};
use crate::error::FailureReason;
use crate::topology::header::{
    ATTEMPTS, FAILURE_DETAIL, FAILURE_REASON, FIRST_FAILED_AT, LAST_FAILED_AT,
};

/// Longest `x-failure-detail` kept: enough for a database error, bounded for the broker.
const MAX_DETAIL_CHARS: usize = 1000;

/// Why and when an event failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: FailureReason,
    /// Human text; database and validation errors carry no secrets.
    pub detail: String,
    pub attempts: u32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
}

/// Publishes the delivery to the dead-letter exchange with its body, message id, routing key and
/// headers intact, plus the failure headers; returns once the broker confirmed it.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    delivery: &Delivery,
    failure: &Failure,
) -> Result<(), PublishError> {
    broker::republish(channel, exchange, delivery, |headers| {
        add_failure_headers(headers, failure)
    })
    .await
}

fn add_failure_headers(headers: &mut FieldTable, failure: &Failure) {
    let detail: String = failure.detail.chars().take(MAX_DETAIL_CHARS).collect();
    headers.insert(
        FAILURE_REASON.into(),
        broker::long_string(failure.reason.as_str()),
    );
    headers.insert(FAILURE_DETAIL.into(), broker::long_string(&detail));
    headers.insert(
        ATTEMPTS.into(),
        AMQPValue::LongLongInt(i64::from(failure.attempts)),
    );
    // A replayed letter that fails again keeps the time it first failed.
    if !headers.contains_key(FIRST_FAILED_AT) {
        headers.insert(
            FIRST_FAILED_AT.into(),
            broker::long_string(&timestamp(failure.first_failed_at)),
        );
    }
    headers.insert(
        LAST_FAILED_AT.into(),
        broker::long_string(&timestamp(failure.last_failed_at)),
    );
}

/// A failure time as the `x-first-failed-at`/`x-last-failed-at` headers write it.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_headers_are_added_beside_the_existing_ones() {
        let mut headers = FieldTable::default();
        headers.insert("x-received-at-ms".into(), AMQPValue::LongLongInt(7));
        let at = DateTime::from_timestamp_millis(1_764_300_000_123).unwrap();
        let failure = Failure {
            reason: FailureReason::EmailConflict,
            detail: "x".repeat(5000),
            attempts: 3,
            first_failed_at: at,
            last_failed_at: at,
        };
        add_failure_headers(&mut headers, &failure);
        let get = |key: &str| headers.inner().get(key).cloned();
        assert_eq!(get("x-received-at-ms"), Some(AMQPValue::LongLongInt(7)));
        assert_eq!(
            get(FAILURE_REASON),
            Some(broker::long_string("email_conflict"))
        );
        assert_eq!(get(ATTEMPTS), Some(AMQPValue::LongLongInt(3)));
        assert_eq!(
            get(FIRST_FAILED_AT),
            Some(broker::long_string("2025-11-28T03:20:00.123Z"))
        );
        let Some(AMQPValue::LongString(detail)) = get(FAILURE_DETAIL) else {
            panic!("detail header missing");
        };
        assert_eq!(detail.as_bytes().len(), 1000);
    }
}
