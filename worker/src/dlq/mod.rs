//! Dead-letter operations for on-call engineers: list what failed and why, preview a replay, and
//! replay exactly the chosen events, safely, while the worker keeps running.
//!
//! Reading a dead letter never removes it: each is taken unacknowledged on a channel of our own
//! and goes back to the queue when that channel closes, even if this process is killed. A replayed
//! one is acknowledged (removed) only after the broker confirmed its republish, so an
//! interruption can at worst replay an event twice, which provisioning absorbs.

mod replay;
pub mod report;

use std::collections::BTreeMap;

use lapin::message::BasicGetMessage;
use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use serde::Serialize;

use crate::broker::{self, Topology, integer_header, text_header};
use crate::config::BrokerSettings;
use crate::dead_letter::{
    ATTEMPTS, FAILURE_DETAIL, FAILURE_REASON, FIRST_FAILED_AT, LAST_FAILED_AT,
};

pub use replay::{ReplayPlan, ReplaySummary, replay};

/// Header counting how many times a dead letter was replayed.
pub const REPLAY_COUNT: &str = "x-replay-count";
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

/// What `dlq list` prints.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub dead_letters: Vec<DeadLetter>,
    /// Over every matching dead letter, `--limit` or not.
    pub counts_by_reason: BTreeMap<String, usize>,
    pub total: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("republishing failed: {0}")]
    Publish(#[from] broker::PublishError),
}

/// A private view of the dead-letter queue: what it takes stays unacknowledged, and returns to
/// the queue when [`close`](Self::close) runs or the connection drops.
pub(crate) struct Browser {
    pub connection: Connection,
    channel: Channel,
    queue: String,
    pub topology: Topology,
    /// Dead letters waiting when the browser opened: it looks at no more, so letters that
    /// arrive meanwhile (a replayed event failing again) are not taken in the same run.
    remaining: u32,
}

impl Browser {
    pub async fn open(settings: &BrokerSettings) -> Result<Self, DlqError> {
        let topology = Topology::from_settings(settings);
        let connection = broker::connect(settings, "dlq").await?;
        let channel = connection.create_channel().await?;
        broker::declare(&channel, &topology).await?;
        let remaining = broker::ready_messages(&channel, &topology.dead_letter_queue).await?;
        Ok(Self {
            connection,
            channel,
            queue: topology.dead_letter_queue.clone(),
            topology,
            remaining,
        })
    }

    /// The next dead letter not yet taken by this browser, if any.
    pub async fn next(&mut self) -> Result<Option<BasicGetMessage>, DlqError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        self.remaining -= 1;
        Ok(self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions::default())
            .await?)
    }

    /// Gives back everything taken and not acknowledged.
    pub async fn close(self) {
        let _ = self.channel.close(200, "dlq done".into()).await;
        let _ = self.connection.close(200, "dlq done".into()).await;
    }
}

/// Lists dead letters without removing any.
pub async fn list(settings: &BrokerSettings, filter: &Filter) -> Result<Listing, DlqError> {
    let mut browser = Browser::open(settings).await?;
    let mut listing = Listing {
        dead_letters: Vec::new(),
        counts_by_reason: BTreeMap::new(),
        total: 0,
    };
    let result = async {
        while let Some(message) = browser.next().await? {
            let letter = DeadLetter::from_message(&message);
            if !filter.matches(&letter) {
                continue;
            }
            listing.total += 1;
            *listing
                .counts_by_reason
                .entry(letter.reason.clone())
                .or_default() += 1;
            if filter
                .limit
                .is_none_or(|limit| listing.dead_letters.len() < limit)
            {
                listing.dead_letters.push(letter);
            }
        }
        Ok::<_, DlqError>(())
    }
    .await;
    browser.close().await;
    result.map(|()| listing)
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
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    text_header(first, "reason").map(|reason| format!("broker_{reason}"))
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
