//! One dead letter as operators see it, read from the message's headers, and the filter the
//! `dlq` commands choose letters with.

use lapin::message::BasicGetMessage;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;

use crate::broker::{integer_header, text_header};
use crate::topology::header::{
    ATTEMPTS, DEATH, DEATH_REASON, FAILURE_DETAIL, FAILURE_REASON, FIRST_FAILED_AT, LAST_FAILED_AT,
    REPLAY_COUNT,
};

/// The reason shown for letters the broker dead-lettered itself (delivery limit exceeded).
const BROKER_REASON_FALLBACK: &str = "unknown";

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
}

/// Which dead letters a command acts on; every given criterion must hold.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub reason: Option<String>,
    pub event_type: Option<String>,
    pub ids: Vec<String>,
    pub limit: Option<usize>,
}

impl Filter {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.reason.as_ref().is_none_or(|r| *r == letter.reason)
            && self
                .event_type
                .as_ref()
                .is_none_or(|t| *t == letter.event_type)
            && (self.ids.is_empty()
                || letter
                    .svix_id
                    .as_ref()
                    .is_some_and(|id| self.ids.contains(id)))
    }
}

impl DeadLetter {
    pub fn from_message(message: &BasicGetMessage) -> Self {
        let delivery = &message.delivery;
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        Self {
            svix_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            event_type: delivery.routing_key.as_str().to_owned(),
            user_id: user_id_of(&delivery.data),
            reason: text_header(&headers, FAILURE_REASON)
                .or_else(|| broker_reason(&headers))
                .unwrap_or_else(|| BROKER_REASON_FALLBACK.to_owned()),
            detail: text_header(&headers, FAILURE_DETAIL),
            attempts: integer_header(&headers, ATTEMPTS),
            first_failed_at: text_header(&headers, FIRST_FAILED_AT),
            last_failed_at: text_header(&headers, LAST_FAILED_AT),
            replay_count: integer_header(&headers, REPLAY_COUNT).unwrap_or(0),
        }
    }
}

/// The Clerk user id in a body, if it is JSON with one: dead letters include malformed bodies.
fn user_id_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("data")?.get("id")?.as_str().map(str::to_owned)
}

/// Letters the broker dead-lettered (delivery limit) carry `x-death` with the broker's reason.
fn broker_reason(headers: &FieldTable) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get(DEATH)? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    text_header(first, DEATH_REASON).map(|reason| format!("broker_{reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(reason: &str, event_type: &str, id: &str) -> DeadLetter {
        DeadLetter {
            svix_id: Some(id.into()),
            event_type: event_type.into(),
            user_id: None,
            reason: reason.into(),
            detail: None,
            attempts: None,
            first_failed_at: None,
            last_failed_at: None,
            replay_count: 0,
        }
    }

    #[test]
    fn an_empty_filter_matches_everything() {
        assert!(Filter::default().matches(&letter("missing_email", "user.created", "msg_1")));
    }

    #[test]
    fn every_given_criterion_must_hold() {
        let filter = Filter {
            reason: Some("email_conflict".into()),
            event_type: Some("user.created".into()),
            ids: vec!["msg_1".into(), "msg_2".into()],
            limit: None,
        };
        assert!(filter.matches(&letter("email_conflict", "user.created", "msg_2")));
        assert!(!filter.matches(&letter("missing_email", "user.created", "msg_2")));
        assert!(!filter.matches(&letter("email_conflict", "user.updated", "msg_2")));
        assert!(!filter.matches(&letter("email_conflict", "user.created", "msg_3")));
    }

    #[test]
    fn the_user_id_is_read_from_json_bodies_only() {
        assert_eq!(
            user_id_of(br#"{"data":{"id":"user_1"}}"#),
            Some("user_1".into())
        );
        assert_eq!(user_id_of(b"{not json"), None);
        assert_eq!(user_id_of(br#"{"data":{}}"#), None);
    }
}
