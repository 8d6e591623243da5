//! A dead letter three ways: as it arrives from the dead-letter queue ([`Arrival`], read from the
//! message's headers), as operators see it ([`DeadLetter`]), and the [`Filter`] the `dlq`
//! commands and the console choose letters with.

use chrono::{DateTime, Utc};
use entity::dead_letters;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use sea_orm::ColumnTrait;
use sea_orm::sea_query::{Condition, Expr};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::amqp_json;
use super::failure::timestamp;
use crate::broker::{integer_header, text_header};
use crate::topology::header::{
    ATTEMPTS, DEATH, DEATH_REASON, DEATH_TIME, FAILURE_DETAIL, FAILURE_REASON, FIRST_FAILED_AT,
    LAST_FAILED_AT, REPLAY_COUNT,
};

/// The reason shown for letters the broker dead-lettered itself (delivery limit exceeded).
const BROKER_REASON_FALLBACK: &str = "unknown";

/// Where a dead letter stands: the `status` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for an operator (or a reconcile run) to do something about it.
    Open,
    /// Published again; it reopens if it fails again.
    Replayed,
    /// A reconcile run found the database already reflects it.
    Resolved,
    /// An operator decided it will never be replayed.
    Discarded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Replayed => "replayed",
            Status::Resolved => "resolved",
            Status::Discarded => "discarded",
        }
    }
}

/// One dead letter as operators see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub svix_id: Option<String>,
    pub event_type: String,
    pub user_id: Option<String>,
    pub reason: String,
    pub detail: Option<String>,
    pub attempts: Option<i64>,
    pub first_failed_at: Option<String>,
    pub last_failed_at: Option<String>,
    pub replay_count: i64,
    pub status: String,
    /// The database already reflects it: a replay would change nothing.
    pub no_longer_needed: bool,
}

impl From<&dead_letters::Model> for DeadLetter {
    fn from(row: &dead_letters::Model) -> Self {
        Self {
            svix_id: Some(row.svix_id.clone()),
            event_type: row.event_type.clone(),
            user_id: row.user_id.clone(),
            reason: row.reason.clone(),
            detail: row.detail.clone(),
            attempts: row.attempts.map(i64::from),
            first_failed_at: Some(timestamp(row.first_failed_at.to_utc())),
            last_failed_at: Some(timestamp(row.last_failed_at.to_utc())),
            replay_count: i64::from(row.replay_count),
            status: row.status.clone(),
            no_longer_needed: false,
        }
    }
}

/// Which dead letters a command acts on; every given criterion must hold. Recorded as JSON with
/// each action, and read back from the console's bulk form.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Filter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Svix ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Last failed at or after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Last failed before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// `None`: any status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl Filter {
    /// The open letters, which is what the `dlq` commands act on unless told otherwise.
    pub fn open() -> Self {
        Self {
            status: Some(Status::Open),
            ..Self::default()
        }
    }

    /// The filter as a WHERE condition on `dead_letters` (the limit apart).
    pub fn condition(&self) -> Condition {
        use dead_letters::Column;
        let mut all = Condition::all();
        if let Some(reason) = &self.reason {
            all = all.add(Column::Reason.eq(reason.as_str()));
        }
        if let Some(event_type) = &self.event_type {
            all = all.add(Column::EventType.eq(event_type.as_str()));
        }
        if !self.ids.is_empty() {
            all = all.add(Column::SvixId.is_in(self.ids.iter().map(String::as_str)));
        }
        if let Some(user_id) = &self.user_id {
            all = all.add(Column::UserId.eq(user_id.as_str()));
        }
        if let Some(since) = self.since {
            all = all.add(Column::LastFailedAt.gte(since));
        }
        if let Some(until) = self.until {
            all = all.add(Column::LastFailedAt.lt(until));
        }
        if let Some(status) = self.status {
            all = all.add(Column::Status.eq(status.as_str()));
        }
        all
    }
}

/// A letter taken from the dead-letter queue, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Arrival {
    pub svix_id: String,
    pub event_type: String,
    pub user_id: Option<String>,
    /// The body, base64: the store decodes it back to bytes in SQL.
    #[serde(serialize_with = "base64_bytes")]
    pub body: Vec<u8>,
    pub headers: serde_json::Value,
    pub properties: serde_json::Value,
    pub event_updated_at: Option<DateTime<Utc>>,
    pub reason: String,
    pub detail: Option<String>,
    pub attempts: Option<i32>,
    pub first_failed_at: Option<DateTime<Utc>>,
    /// When it failed: the consumer's `x-last-failed-at`, or the broker's `x-death` time for a
    /// letter it dead-lettered itself. A letter with neither is stored with its arrival time and
    /// never reopens a row (nothing tells a new failure from the same letter taken twice).
    pub last_failed_at: Option<DateTime<Utc>>,
    pub replay_count: i32,
}

fn base64_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine;
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

impl Arrival {
    /// Reads a delivery from the dead-letter queue.
    pub fn from_delivery(delivery: &Delivery) -> Self {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let time = |name| text_header(&headers, name).and_then(|t| parse_time(&t));
        let failure = LastFailure::of(&headers, time(LAST_FAILED_AT));
        let body = Body::read(&delivery.data);
        let svix_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_else(|| unidentified_id(&delivery.data));
        Self {
            // The store's key: made NUL-free here, before letters are told apart by it.
            svix_id: svix_id.replace('\0', "\u{FFFD}"),
            event_type: delivery.routing_key.as_str().to_owned(),
            user_id: body.user_id,
            body: delivery.data.clone(),
            headers: amqp_json::headers_to_json(&headers),
            properties: amqp_json::properties_to_json(&delivery.properties),
            event_updated_at: body.updated_at,
            reason: failure.reason,
            detail: failure.detail,
            attempts: integer_header(&headers, ATTEMPTS).and_then(|n| i32::try_from(n).ok()),
            first_failed_at: time(FIRST_FAILED_AT).or(failure.at),
            last_failed_at: failure.at,
            // Any producer may write the header: a count the table's CHECK refuses would make the
            // letter impossible to keep.
            replay_count: integer_header(&headers, REPLAY_COUNT)
                .and_then(|n| i32::try_from(n.max(0)).ok())
                .unwrap_or(0),
        }
    }
}

impl Arrival {
    /// This letter without what the store could refuse (headers, properties, Clerk's time), with
    /// the refusal in its detail.
    pub fn stripped(self, refusal: &str) -> Self {
        let detail = format!(
            "kept without its headers: the store refused them ({refusal}); detail: {}",
            self.detail.as_deref().unwrap_or("-")
        );
        Self {
            headers: serde_json::json!({}),
            properties: serde_json::json!({}),
            event_updated_at: None,
            detail: Some(detail),
            ..self
        }
    }
}

/// Who dead-lettered a letter the last time, why and when: the consumer (its `x-failure-*`
/// headers) or the broker itself (`x-death`, e.g. the delivery limit). A replay keeps the
/// consumer's headers of the earlier failure (the consumer labels `events_replayed_total` with
/// that reason) and drops `x-death`, so an `x-death` later than the consumer's failure means the
/// broker dead-lettered the replayed event. An `expired` death is a delay queue handing the event
/// back, never a dead letter of its own.
struct LastFailure {
    reason: String,
    detail: Option<String>,
    at: Option<DateTime<Utc>>,
}

impl LastFailure {
    fn of(headers: &FieldTable, consumer_failed_at: Option<DateTime<Utc>>) -> Self {
        let death = latest_death(headers).filter(|death| {
            text_header(death, DEATH_REASON).is_some_and(|reason| reason != EXPIRED)
        });
        let death_at = death.and_then(death_time);
        // `x-death` has whole seconds: within the consumer's failure's second, the broker's
        // death may be the later one.
        let broker_was_last = death.is_some()
            && match (consumer_failed_at, death_at) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(consumer), Some(broker)) => broker + chrono::Duration::seconds(1) > consumer,
            };
        let consumer_reason = text_header(headers, FAILURE_REASON);
        match (
            broker_was_last,
            death.and_then(|d| text_header(d, DEATH_REASON)),
        ) {
            (true, Some(reason)) => Self {
                reason: format!("broker_{reason}"),
                detail: Some(format!(
                    "dead-lettered by the broker ({reason}){}",
                    consumer_reason
                        .map_or(String::new(), |r| format!("; it had failed before as {r}"))
                )),
                at: consumer_failed_at.max(death_at),
            },
            _ => Self {
                reason: consumer_reason.unwrap_or_else(|| BROKER_REASON_FALLBACK.to_owned()),
                detail: text_header(headers, FAILURE_DETAIL),
                at: consumer_failed_at.max(death_at),
            },
        }
    }
}

/// The `x-death` reason of a delay queue's expiry.
const EXPIRED: &str = "expired";

/// A letter without a message id (never one from our ingress) is named by its body's digest, so
/// the same letter arriving twice is still one row.
fn unidentified_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("unidentified-{hex}")
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.to_utc())
}

/// Clerk times the store accepts (1970 to 2200): PostgreSQL refuses years chrono accepts, and
/// one such body would make its letter impossible to keep.
const PLAUSIBLE_MILLIS: std::ops::Range<i64> = 0..7_258_118_400_000;

/// What a body says about its user, if it is JSON with one: dead letters include malformed
/// bodies.
#[derive(Default)]
struct Body {
    user_id: Option<String>,
    updated_at: Option<DateTime<Utc>>,
}

impl Body {
    fn read(body: &[u8]) -> Self {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Self::default();
        };
        let data = value.get("data");
        Self {
            user_id: data
                .and_then(|d| d.get("id"))
                .and_then(|id| id.as_str())
                .map(str::to_owned),
            updated_at: data
                .and_then(|d| d.get("updated_at"))
                .and_then(serde_json::Value::as_i64)
                .filter(|millis| PLAUSIBLE_MILLIS.contains(millis))
                .and_then(DateTime::from_timestamp_millis),
        }
    }
}

/// When the broker dead-lettered it (an `x-death` entry's `time`, in seconds).
fn death_time(death: &FieldTable) -> Option<DateTime<Utc>> {
    match death.inner().get(DEATH_TIME)? {
        AMQPValue::Timestamp(seconds) => DateTime::from_timestamp(i64::try_from(*seconds).ok()?, 0),
        _ => None,
    }
}

/// The most recent entry of `x-death` (the broker puts it first).
fn latest_death(headers: &FieldTable) -> Option<&FieldTable> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get(DEATH)? else {
        return None;
    };
    match deaths.as_slice().first()? {
        AMQPValue::FieldTable(first) => Some(first),
        _ => None,
    }
}

/// Keeps only letters after `(last_failed_at, id)` in newest-first order: a keyset page. A row
/// comparison, which PostgreSQL answers from the listing index directly (an `OR` of the two
/// columns made page 1,000 of 100,000 letters scan the first 999).
pub fn after(last_failed_at: DateTime<Utc>, id: i64) -> Condition {
    Condition::all().add(Expr::cust_with_values(
        "(dead_letters.last_failed_at, dead_letters.id) < ($1, $2)",
        [
            sea_orm::Value::from(last_failed_at),
            sea_orm::Value::from(id),
        ],
    ))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_status_is_named_alike_in_json_and_in_the_column() {
        for status in [
            Status::Open,
            Status::Replayed,
            Status::Resolved,
            Status::Discarded,
        ] {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
    }
    use super::*;

    #[test]
    fn the_user_and_its_version_are_read_from_json_bodies_only() {
        let body = Body::read(br#"{"data":{"id":"user_1","updated_at":1764300000123}}"#);
        assert_eq!(body.user_id, Some("user_1".into()));
        assert_eq!(
            body.updated_at.map(|t| t.timestamp_millis()),
            Some(1_764_300_000_123)
        );
        assert_eq!(Body::read(b"{not json").user_id, None);
        assert_eq!(Body::read(br#"{"data":{}}"#).user_id, None);
    }

    #[test]
    fn a_letter_without_a_message_id_is_named_by_its_body() {
        assert_eq!(unidentified_id(b"x"), unidentified_id(b"x"));
        assert_ne!(unidentified_id(b"x"), unidentified_id(b"y"));
        assert!(unidentified_id(b"x").starts_with("unidentified-"));
    }

    fn deaths(reason: &str, seconds: u64) -> FieldTable {
        let mut death = FieldTable::default();
        death.insert(DEATH_REASON.into(), crate::broker::long_string(reason));
        death.insert(DEATH_TIME.into(), AMQPValue::Timestamp(seconds));
        let mut headers = FieldTable::default();
        headers.insert(
            DEATH.into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        headers
    }

    fn at(seconds: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(seconds, 0)
    }

    #[test]
    fn the_broker_s_own_dead_letters_show_its_reason_and_time() {
        let failure = LastFailure::of(&deaths("delivery_limit", 1_000), None);
        assert_eq!(failure.reason, "broker_delivery_limit");
        assert_eq!(failure.at, at(1_000));
        let none = LastFailure::of(&FieldTable::default(), None);
        assert_eq!((none.reason.as_str(), none.at), ("unknown", None));
    }

    #[test]
    fn a_replayed_letter_the_broker_dead_lettered_is_a_new_failure_of_the_broker_s() {
        let mut headers = deaths("delivery_limit", 2_000);
        headers.insert(
            FAILURE_REASON.into(),
            crate::broker::long_string("email_conflict"),
        );
        let failure = LastFailure::of(&headers, at(1_000));
        assert_eq!(failure.reason, "broker_delivery_limit");
        assert_eq!(failure.at, at(2_000));
        assert!(failure.detail.is_some_and(|d| d.contains("email_conflict")));
    }

    #[test]
    fn the_consumer_s_failure_after_a_delay_queue_expiry_is_the_consumer_s() {
        let mut headers = deaths("expired", 1_000);
        headers.insert(
            FAILURE_REASON.into(),
            crate::broker::long_string("email_conflict"),
        );
        let failure = LastFailure::of(&headers, at(1_000));
        assert_eq!(failure.reason, "email_conflict");
        assert_eq!(failure.at, at(1_000));
    }

    #[test]
    fn implausible_clerk_times_are_left_out() {
        let body = Body::read(br#"{"data":{"id":"u","updated_at":-300000000000000}}"#);
        assert_eq!(
            (body.user_id.as_deref(), body.updated_at),
            (Some("u"), None)
        );
    }
}
