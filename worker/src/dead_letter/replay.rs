//! `worker dlq replay`: republish chosen dead letters to the main exchange, each removed from the
//! dead-letter queue only once the broker confirmed its copy.

use std::collections::BTreeMap;

use chrono::Utc;
use lapin::message::BasicGetMessage;
use lapin::options::BasicAckOptions;
use lapin::types::AMQPValue;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::browser::Browser;
use super::{DeadLetter, DlqError, Filter};
use crate::broker;
use crate::config::BrokerSettings;
use crate::db::Pool;
use crate::domain::event_type::{USER_CREATED, USER_UPDATED};
use crate::topology::header::{
    FAILING_SINCE_MS, ORIGINAL_RECEIVED_AT_MS, RECEIVED_AT_MS, REPLAY_COUNT, RETRY_ATTEMPTS,
};

/// Whether the user of a user.created/updated dead letter is already provisioned.
const HAS_WORKSPACE: &str = "SELECT EXISTS (SELECT 1 FROM users u JOIN workspaces w ON w.user_id = u.id \
                             WHERE u.id = $1) AS provisioned";

pub struct ReplayPlan {
    pub filter: Filter,
    /// Change nothing; report what a replay would do.
    pub dry_run: bool,
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Default, Serialize)]
pub struct ReplaySummary {
    pub dry_run: bool,
    /// Republished and removed from the dead-letter queue (0 when dry).
    pub replayed: usize,
    /// Dead letters that did not match (or were past `--limit`): left where they were.
    pub skipped: usize,
    /// Matching dead letters, by reason and by event type.
    pub by_reason: BTreeMap<String, usize>,
    pub by_type: BTreeMap<String, usize>,
    /// Dry run only: matching letters whose user the database already holds with a workspace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_ops: Option<usize>,
    /// Stopped early by a signal; what was not reached stays in the dead-letter queue.
    pub interrupted: bool,
}

/// Replays the dead letters matching `plan`, until done or `stop` is cancelled. `db` is asked,
/// on a dry run, which replays would be no-ops.
pub async fn replay(
    settings: &BrokerSettings,
    db: Option<&Pool>,
    plan: &ReplayPlan,
    stop: &CancellationToken,
) -> Result<ReplaySummary, DlqError> {
    let mut browser = Browser::open(settings).await?;
    let result = replay_with(&mut browser, db, plan, stop).await;
    browser.close().await;
    result
}

async fn replay_with(
    browser: &mut Browser,
    db: Option<&Pool>,
    plan: &ReplayPlan,
    stop: &CancellationToken,
) -> Result<ReplaySummary, DlqError> {
    let publisher = broker::confirm_channel(&browser.connection).await?;
    let mut summary = ReplaySummary {
        dry_run: plan.dry_run,
        no_ops: (plan.dry_run && db.is_some()).then_some(0),
        ..ReplaySummary::default()
    };
    let exchange = browser.topology.exchange.clone();
    let mut matched = 0;
    while let Some(message) = browser.next().await? {
        if stop.is_cancelled() {
            summary.interrupted = true;
            break;
        }
        let letter = DeadLetter::from_message(&message);
        let within_limit = plan.filter.limit.is_none_or(|limit| matched < limit);
        if !within_limit || !plan.filter.matches(&letter) {
            summary.skipped += 1;
            continue;
        }
        matched += 1;
        *summary.by_reason.entry(letter.reason.clone()).or_default() += 1;
        *summary
            .by_type
            .entry(letter.event_type.clone())
            .or_default() += 1;
        if plan.dry_run {
            if let (Some(db), Some(no_ops)) = (db, summary.no_ops.as_mut()) {
                *no_ops += usize::from(already_provisioned(db, &letter).await?);
            }
            continue;
        }
        republish(&publisher, &exchange, &message, &letter).await?;
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await?;
        summary.replayed += 1;
    }
    Ok(summary)
}

/// The same body, routing key, message id and headers, plus the replay count and a fresh
/// receive time.
async fn republish(
    channel: &lapin::Channel,
    exchange: &str,
    message: &BasicGetMessage,
    letter: &DeadLetter,
) -> Result<(), DlqError> {
    broker::republish(channel, exchange, &message.delivery, |headers| {
        if let Some(original) = headers.inner().get(RECEIVED_AT_MS).cloned() {
            headers.insert(ORIGINAL_RECEIVED_AT_MS.into(), original);
        }
        // A replay starts afresh: no failed attempts, and a whole conflict window.
        for carried in [RETRY_ATTEMPTS, FAILING_SINCE_MS] {
            *headers = broker::without_header(headers, carried);
        }
        let now = Utc::now().timestamp_millis();
        headers.insert(RECEIVED_AT_MS.into(), AMQPValue::LongLongInt(now));
        headers.insert(
            REPLAY_COUNT.into(),
            AMQPValue::LongLongInt(letter.replay_count + 1),
        );
    })
    .await?;
    Ok(())
}

/// A user.created/updated whose user already has a workspace would change nothing new.
async fn already_provisioned(db: &Pool, letter: &DeadLetter) -> Result<bool, DlqError> {
    let (Some(user_id), USER_CREATED | USER_UPDATED) =
        (&letter.user_id, letter.event_type.as_str())
    else {
        return Ok(false);
    };
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        HAS_WORKSPACE,
        [user_id.clone().into()],
    );
    let row = db.query_one_raw(statement).await?;
    Ok(row
        .map(|row| row.try_get::<bool>("", "provisioned"))
        .transpose()?
        .unwrap_or(false))
}
