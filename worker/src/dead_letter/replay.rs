//! `worker dlq replay` (and the console's replay): republish chosen dead letters from the store
//! to the main exchange, each marked replayed only once the broker confirmed its copy.
//!
//! Each letter is replayed in a transaction of its own that locks its row while it is open, so
//! two operators replaying at once never publish one letter twice; a crash between the confirm
//! and the commit leaves the row open, and the next replay publishes it once more, which
//! provisioning absorbs.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::store::{self, Action, Actor, Chosen};
use super::{DlqError, Filter, amqp_json};
use crate::broker;
use crate::config::BrokerSettings;
use crate::db::Pool;
use crate::topology::Topology;
use crate::topology::header::{
    ACQUIRED_COUNT, DEATH, DELIVERY_COUNT, FAILING_SINCE_MS, ORIGINAL_RECEIVED_AT_MS,
    RECEIVED_AT_MS, REPLAY_COUNT, RETRY_ATTEMPTS,
};
use crate::traces::spans;

/// How long a replay waits for the broker's confirm of one letter.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers a replay drops: it starts afresh, with no failed attempts and a whole conflict window,
/// and the broker's own bookkeeping of the earlier life (a replayed letter that still carried
/// `x-death` would be dropped by RabbitMQ 3.10 as a dead-letter cycle if it failed again).
const DROPPED_HEADERS: [&str; 5] = [
    RETRY_ATTEMPTS,
    FAILING_SINCE_MS,
    DEATH,
    DELIVERY_COUNT,
    ACQUIRED_COUNT,
];

pub struct ReplayPlan {
    pub filter: Filter,
    /// Change nothing; report what a replay would do.
    pub dry_run: bool,
    pub actor: Actor,
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Default, Serialize)]
pub struct ReplaySummary {
    pub dry_run: bool,
    /// Republished and marked replayed (0 when dry).
    pub replayed: usize,
    /// Open dead letters that did not match (or were past `--limit`): left as they were.
    pub skipped: usize,
    /// Matching dead letters, by reason and by event type.
    pub by_reason: BTreeMap<String, usize>,
    pub by_type: BTreeMap<String, usize>,
    /// Dry run only: matching letters the database already reflects (no longer needed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_ops: Option<usize>,
    /// Chosen, but no longer open when their turn came (replayed, resolved or discarded
    /// meanwhile, or being replayed by someone else at that moment).
    pub not_open: usize,
    /// Stopped early by a signal; what was not reached stays open.
    pub interrupted: bool,
}

/// Replays the open letters matching `plan` (a snapshot taken at the start), until done or
/// `stop` is cancelled.
pub async fn replay(
    settings: &BrokerSettings,
    db: &Pool,
    plan: &ReplayPlan,
    stop: &CancellationToken,
) -> Result<ReplaySummary, DlqError> {
    let chosen = store::snapshot(db, &plan.filter).await?;
    let open: u64 = store::counts_by_reason(db, &Filter::open())
        .await?
        .values()
        .sum();
    let mut summary = tally(&chosen, plan.dry_run);
    summary.skipped = (open as usize).saturating_sub(chosen.len());
    let ids: Vec<i64> = chosen.iter().map(|c| c.id).collect();
    if plan.dry_run {
        summary.no_ops = Some(store::no_longer_needed(db, &ids).await?.len());
        return Ok(summary);
    }
    let done = replay_ids(settings, db, &ids, &plan.filter, &plan.actor, stop).await?;
    summary.replayed = done.replayed;
    summary.not_open = done.not_open;
    summary.interrupted = done.interrupted;
    Ok(summary)
}

/// Replays exactly `ids` (those still open when their turn comes) for `actor`, recording
/// `filter` as what chose them, until done or `stop`.
pub async fn replay_ids(
    settings: &BrokerSettings,
    db: &Pool,
    ids: &[i64],
    filter: &Filter,
    actor: &Actor,
    stop: &CancellationToken,
) -> Result<Replayed, DlqError> {
    let replayer = Replayer::connect(settings).await?;
    let action = store::start_action(db, actor, Action::Replay, filter, None, ids.len()).await;
    let result = match action {
        Ok(action) => replayer.replay(db, ids, action, stop).await,
        Err(error) => Err(error.into()),
    };
    replayer.close().await;
    result
}

/// The chosen letters counted by reason and by type.
fn tally(chosen: &[Chosen], dry_run: bool) -> ReplaySummary {
    let mut summary = ReplaySummary {
        dry_run,
        ..ReplaySummary::default()
    };
    for letter in chosen {
        *summary.by_reason.entry(letter.reason.clone()).or_default() += 1;
        *summary
            .by_type
            .entry(letter.event_type.clone())
            .or_default() += 1;
    }
    summary
}

/// What [`Replayer::replay`] got through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub replayed: usize,
    pub not_open: usize,
    pub interrupted: bool,
}

/// A broker connection that republishes stored letters with confirms.
struct Replayer {
    connection: Connection,
    channel: Channel,
    exchange: String,
}

impl Replayer {
    async fn connect(settings: &BrokerSettings) -> Result<Self, DlqError> {
        let topology = Topology::from_settings(settings);
        let connection = broker::connect_light(settings, "dlq-replay").await?;
        let channel = broker::confirm_channel(&connection).await?;
        broker::declare(&channel, &topology).await?;
        Ok(Self {
            connection,
            channel,
            exchange: topology.exchange,
        })
    }

    /// Replays each of `ids` still open, for the action `action_id`, until done or `stop`.
    async fn replay(
        &self,
        db: &Pool,
        ids: &[i64],
        action_id: i64,
        stop: &CancellationToken,
    ) -> Result<Replayed, DlqError> {
        let mut done = Replayed::default();
        for &id in ids {
            if stop.is_cancelled() {
                done.interrupted = true;
                break;
            }
            match self.replay_one(db, id, action_id).await? {
                true => done.replayed += 1,
                false => done.not_open += 1,
            }
        }
        Ok(done)
    }

    /// Publishes one letter if it is still open, then marks it; false when it was not open.
    async fn replay_one(&self, db: &Pool, id: i64, action_id: i64) -> Result<bool, DlqError> {
        let txn = db.begin().await?;
        let Some(letter) = store::lock_open(&txn, id).await? else {
            return Ok(false);
        };
        let stored = amqp_json::headers_from_json(&letter.headers);
        let span = spans::replay(&letter.svix_id, &stored);
        let replayed = self
            .publish_and_mark(txn, letter, stored, action_id)
            .instrument(span.clone())
            .await;
        if let Err(err) = &replayed {
            spans::record_error(&span, err.as_str());
        }
        replayed.map(|()| true)
    }

    /// Publishes a locked letter with the headers a replay sends (the original trace context
    /// kept, so the replayed event's trace links to it), then marks it replayed.
    async fn publish_and_mark(
        &self,
        txn: sea_orm::DatabaseTransaction,
        letter: entity::dead_letters::Model,
        stored: FieldTable,
        action_id: i64,
    ) -> Result<(), DlqError> {
        let headers = replay_headers(stored, letter.replay_count);
        let properties = amqp_json::properties_from_json(&letter.properties, headers)
            .with_message_id(letter.svix_id.as_str().into());
        broker::publish_confirmed(
            &self.channel,
            &self.exchange,
            &letter.event_type,
            &letter.body,
            properties,
            CONFIRM_TIMEOUT,
        )
        .await?;
        store::mark_replayed(&txn, letter.id, action_id).await?;
        txn.commit().await?;
        Ok(())
    }

    async fn close(self) {
        let _ = self.channel.close(200, "replay done".into()).await;
        let _ = self.connection.close(200, "replay done".into()).await;
    }
}

/// The stored headers as a replay sends them: a fresh receive time (the one before kept), the
/// replay counted, and [`DROPPED_HEADERS`] gone.
fn replay_headers(stored: FieldTable, replay_count: i32) -> FieldTable {
    let mut headers = DROPPED_HEADERS.iter().fold(stored, |headers, name| {
        broker::without_header(&headers, name)
    });
    if let Some(original) = headers.inner().get(RECEIVED_AT_MS).cloned() {
        headers.insert(ORIGINAL_RECEIVED_AT_MS.into(), original);
    }
    let now = Utc::now().timestamp_millis();
    headers.insert(RECEIVED_AT_MS.into(), AMQPValue::LongLongInt(now));
    headers.insert(
        REPLAY_COUNT.into(),
        AMQPValue::LongLongInt(i64::from(replay_count) + 1),
    );
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_starts_afresh_and_keeps_the_first_receive_time() {
        let mut stored = FieldTable::default();
        stored.insert(RECEIVED_AT_MS.into(), AMQPValue::LongLongInt(7));
        stored.insert(RETRY_ATTEMPTS.into(), AMQPValue::LongLongInt(3));
        stored.insert(FAILING_SINCE_MS.into(), AMQPValue::LongLongInt(5));
        stored.insert(DEATH.into(), AMQPValue::FieldArray(Vec::new().into()));
        stored.insert(
            "x-failure-reason".into(),
            broker::long_string("email_conflict"),
        );
        let headers = replay_headers(stored, 2);
        let get = |name: &str| headers.inner().get(name).cloned();
        assert_eq!(
            get(ORIGINAL_RECEIVED_AT_MS),
            Some(AMQPValue::LongLongInt(7))
        );
        assert_eq!(get(REPLAY_COUNT), Some(AMQPValue::LongLongInt(3)));
        for dropped in DROPPED_HEADERS {
            assert_eq!(get(dropped), None, "{dropped}");
        }
        assert_eq!(
            get("x-failure-reason"),
            Some(broker::long_string("email_conflict"))
        );
    }
}
