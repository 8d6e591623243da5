//! The dead-letter store in PostgreSQL (`dead_letters`, `dead_letter_actions`,
//! `dead_letter_history`): every statement that writes it, and the reads the `dlq` commands and
//! the console share. The rule for "no longer needed" lives here and only here.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use entity::dead_letters;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ConnectionTrait, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
    Value,
};
use serde::Serialize;

use super::letter::{Arrival, Filter, Status};
use crate::db::{Pool, statement};

/// Whether the database already reflects a letter, so replaying it would change nothing: its
/// user was deleted since (a tombstone: deletion is final, and that is all a `user.deleted`
/// asks), or, for a `user.created`/`user.updated`, the user has a workspace and a row at least
/// as new as the event. A letter with no user id (a malformed body) is always still needed.
/// Written over the table's own name, so both raw statements and the query builder use it.
pub const NO_LONGER_NEEDED: &str = "(dead_letters.user_id IS NOT NULL AND (\
     EXISTS (SELECT 1 FROM user_tombstones t WHERE t.user_id = dead_letters.user_id) \
     OR (dead_letters.event_type IN ('user.created', 'user.updated') AND EXISTS ( \
       SELECT 1 FROM users u JOIN workspaces w ON w.user_id = u.id WHERE u.id = dead_letters.user_id \
       AND (dead_letters.event_updated_at IS NULL OR u.clerk_updated_at >= dead_letters.event_updated_at)))))";

/// Keeps arriving letters, one statement for a batch: a new svix id is a new open row; a known
/// one reopens with the new failure only when it failed later than the row says, so the same
/// letter taken twice (a redelivery after a crash) changes nothing. A letter with no failure
/// time only ever adds a row. Each kept failure is a history row.
const KEEP: &str = "WITH incoming AS ( \
       SELECT * FROM jsonb_to_recordset($1::jsonb) AS r(svix_id text, event_type text, \
         user_id text, body text, headers jsonb, properties jsonb, event_updated_at timestamptz, \
         reason text, detail text, attempts int, first_failed_at timestamptz, \
         last_failed_at timestamptz, replay_count int)), \
     timed AS ( \
       INSERT INTO dead_letters AS d (svix_id, event_type, user_id, body, headers, properties, \
         event_updated_at, reason, detail, attempts, first_failed_at, last_failed_at, replay_count) \
       SELECT svix_id, event_type, user_id, decode(body, 'base64'), headers, properties, \
         event_updated_at, reason, detail, attempts, first_failed_at, last_failed_at, replay_count \
       FROM incoming WHERE last_failed_at IS NOT NULL \
       ON CONFLICT (svix_id) DO UPDATE SET event_type = EXCLUDED.event_type, \
         user_id = EXCLUDED.user_id, body = EXCLUDED.body, headers = EXCLUDED.headers, \
         properties = EXCLUDED.properties, event_updated_at = EXCLUDED.event_updated_at, \
         reason = EXCLUDED.reason, detail = EXCLUDED.detail, attempts = EXCLUDED.attempts, \
         first_failed_at = LEAST(d.first_failed_at, EXCLUDED.first_failed_at), \
         last_failed_at = EXCLUDED.last_failed_at, \
         replay_count = GREATEST(d.replay_count, EXCLUDED.replay_count), \
         status = 'open', updated_at = clock_timestamp() \
       WHERE EXCLUDED.last_failed_at > d.last_failed_at \
       RETURNING d.id, d.reason, d.attempts, d.last_failed_at), \
     untimed AS ( \
       INSERT INTO dead_letters (svix_id, event_type, user_id, body, headers, properties, \
         event_updated_at, reason, detail, attempts, first_failed_at, last_failed_at, replay_count) \
       SELECT svix_id, event_type, user_id, decode(body, 'base64'), headers, properties, \
         event_updated_at, reason, detail, attempts, COALESCE(first_failed_at, clock_timestamp()), \
         clock_timestamp(), replay_count \
       FROM incoming WHERE last_failed_at IS NULL \
       ON CONFLICT (svix_id) DO NOTHING \
       RETURNING id, reason, attempts, last_failed_at) \
     INSERT INTO dead_letter_history (dead_letter_id, at, event, reason, attempts) \
     SELECT id, last_failed_at, 'failed', reason, attempts FROM timed \
     UNION ALL SELECT id, last_failed_at, 'failed', reason, attempts FROM untimed";

/// The ids in $1 (a JSON array) as a set to match `id` against.
const IDS: &str = "(SELECT jsonb_array_elements_text($1::jsonb)::bigint)";

const START_ACTION: &str = "INSERT INTO dead_letter_actions (actor, source, action, filter, note, chosen) \
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";

/// Marks one letter replayed (its republish was confirmed) and counts it on its action. The
/// history says it was replayed when its transaction began, before the publish: the event may
/// fail again before this commits.
const MARK_REPLAYED: &str = "WITH replayed AS ( \
       UPDATE dead_letters SET status = 'replayed', replay_count = replay_count + 1, \
         updated_at = clock_timestamp() WHERE id = $1 RETURNING id), \
     counted AS (UPDATE dead_letter_actions SET changed = changed + 1 WHERE id = $2) \
     INSERT INTO dead_letter_history (dead_letter_id, at, event, action_id) \
     SELECT id, now(), 'replayed', $2 FROM replayed";

const PURGE_CLOSED: &str = "DELETE FROM dead_letters WHERE id IN ( \
       SELECT id FROM dead_letters WHERE status <> 'open' AND updated_at < clock_timestamp() - $1 * interval '1 second' \
       LIMIT $2)";

/// Who acted, from where: written on every action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub source: Source,
}

/// Where an action came from: the `source` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Cli,
    Console,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Cli => "cli",
            Source::Console => "console",
        }
    }
}

/// What an operator did: the `action` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Replay,
    Discard,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Replay => "replay",
            Action::Discard => "discard",
        }
    }
}

/// Keeps `arrivals` (deduplicated by svix id, the latest failure winning) in one statement.
pub async fn keep(db: &Pool, arrivals: &[Arrival]) -> Result<(), DbErr> {
    let mut latest: BTreeMap<String, (Option<DateTime<Utc>>, serde_json::Value)> = BTreeMap::new();
    for arrival in arrivals {
        let mut json = serde_json::to_value(arrival).map_err(|e| DbErr::Custom(e.to_string()))?;
        without_nul(&mut json);
        let id = json["svix_id"].as_str().unwrap_or_default().to_owned();
        let newer = latest
            .get(&id)
            .is_none_or(|(at, _)| arrival.last_failed_at > *at);
        if newer {
            latest.insert(id, (arrival.last_failed_at, json));
        }
    }
    let batch: Vec<serde_json::Value> = latest.into_values().map(|(_, json)| json).collect();
    db.execute_raw(statement(KEEP, [serde_json::Value::Array(batch).into()]))
        .await?;
    Ok(())
}

/// PostgreSQL's text and jsonb cannot hold U+0000, which a header or an id from any producer
/// may: each becomes U+FFFD, so such a letter is kept (and can be read) rather than refused on
/// every attempt. The body is base64 here and kept byte for byte.
fn without_nul(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) if text.contains('\0') => {
            *text = text.replace('\0', "\u{FFFD}");
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_nul),
        serde_json::Value::Object(map) => {
            let keys: Vec<String> = map.keys().filter(|k| k.contains('\0')).cloned().collect();
            for key in keys {
                if let Some(inner) = map.remove(&key) {
                    map.insert(key.replace('\0', "\u{FFFD}"), inner);
                }
            }
            map.values_mut().for_each(without_nul);
        }
        _ => {}
    }
}

/// The order letters are listed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Newest failure first, ties by id: the console's, paged by keyset.
    NewestFirst,
    /// As they arrived: `worker dlq list`'s (the dead-letter queue's order before the store).
    OldestFirst,
}

/// The letters matching `filter` in `order`, after the keyset `page` (newest first only).
pub async fn list(
    db: &Pool,
    filter: &Filter,
    order: Order,
    page: Option<(DateTime<Utc>, i64)>,
    limit: Option<u64>,
) -> Result<Vec<dead_letters::Model>, DbErr> {
    use dead_letters::Column;
    let mut query = dead_letters::Entity::find().filter(filter.condition());
    query = match order {
        Order::NewestFirst => {
            if let Some((last_failed_at, id)) = page {
                query = query.filter(super::letter::after(last_failed_at, id));
            }
            query
                .order_by_desc(Column::LastFailedAt)
                .order_by_desc(Column::Id)
        }
        Order::OldestFirst => query.order_by_asc(Column::Id),
    };
    if let Some(limit) = limit {
        query = query.limit(within_postgres(limit));
    }
    query.all(db).await
}

/// A LIMIT PostgreSQL takes (a BIGINT): a larger `--limit` means no limit.
fn within_postgres(limit: u64) -> u64 {
    limit.min(i64::MAX as u64)
}

#[derive(FromQueryResult)]
struct ReasonCount {
    reason: String,
    n: i64,
}

/// Letters matching `filter`, counted by reason.
pub async fn counts_by_reason(db: &Pool, filter: &Filter) -> Result<BTreeMap<String, u64>, DbErr> {
    let rows = dead_letters::Entity::find()
        .select_only()
        .column(dead_letters::Column::Reason)
        .column_as(Expr::cust("count(*)"), "n")
        .filter(filter.condition())
        .group_by(dead_letters::Column::Reason)
        .into_model::<ReasonCount>()
        .all(db)
        .await?;
    Ok(to_counts(rows))
}

fn to_counts(rows: Vec<ReasonCount>) -> BTreeMap<String, u64> {
    rows.into_iter()
        .map(|row| (row.reason, u64::try_from(row.n).unwrap_or_default()))
        .collect()
}

/// A letter chosen for a bulk action, with what its summary counts.
#[derive(Clone, Debug, PartialEq, Eq, FromQueryResult)]
pub struct Chosen {
    pub id: i64,
    pub reason: String,
    pub event_type: String,
}

/// The letters matching `filter` now, oldest first, within its limit: the snapshot a bulk action
/// acts on, so letters arriving (or changing) later are never touched by it.
pub async fn snapshot(db: &Pool, filter: &Filter) -> Result<Vec<Chosen>, DbErr> {
    use dead_letters::Column;
    let mut query = dead_letters::Entity::find()
        .select_only()
        .columns([Column::Id, Column::Reason, Column::EventType])
        .filter(filter.condition())
        .order_by_asc(Column::Id);
    if let Some(limit) = filter.limit {
        query = query.limit(within_postgres(limit as u64));
    }
    query.into_model::<Chosen>().all(db).await
}

/// Which of `ids` are no longer needed (see [`NO_LONGER_NEEDED`]).
pub async fn no_longer_needed(db: &Pool, ids: &[i64]) -> Result<BTreeSet<i64>, DbErr> {
    let sql = format!("SELECT id FROM dead_letters WHERE id IN {IDS} AND {NO_LONGER_NEEDED}");
    let rows = db.query_all_raw(statement(&sql, [ids_json(ids)])).await?;
    rows.iter()
        .map(|row| row.try_get::<i64>("", "id"))
        .collect()
}

/// One letter by svix id.
pub async fn find(db: &Pool, svix_id: &str) -> Result<Option<dead_letters::Model>, DbErr> {
    dead_letters::Entity::find()
        .filter(sea_orm::ColumnTrait::eq(
            &dead_letters::Column::SvixId,
            svix_id,
        ))
        .one(db)
        .await
}

/// One event in a letter's life, with who caused it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, FromQueryResult)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    /// `failed`, `replayed`, `resolved` or `discarded`.
    pub event: String,
    pub reason: Option<String>,
    pub attempts: Option<i32>,
    pub actor: Option<String>,
    pub source: Option<String>,
    pub note: Option<String>,
}

/// A letter's history in the order it happened (a failure that arrives while a replay of the
/// same letter commits waits for it, so insertion order is the causal order).
pub async fn history(db: &Pool, dead_letter_id: i64) -> Result<Vec<HistoryEntry>, DbErr> {
    const HISTORY: &str = "SELECT h.at, h.event, h.reason, h.attempts, a.actor, a.source, a.note \
         FROM dead_letter_history h LEFT JOIN dead_letter_actions a ON a.id = h.action_id \
         WHERE h.dead_letter_id = $1 ORDER BY h.id";
    HistoryEntry::find_by_statement(statement(HISTORY, [dead_letter_id.into()]))
        .all(db)
        .await
}

/// Records an operator's action on `chosen` letters; its `changed` count grows as it goes.
pub async fn start_action(
    db: &impl ConnectionTrait,
    actor: &Actor,
    action: Action,
    filter: &Filter,
    note: Option<&str>,
    chosen: usize,
) -> Result<i64, DbErr> {
    let filter = serde_json::to_value(filter).map_err(|e| DbErr::Custom(e.to_string()))?;
    let values: [Value; 6] = [
        actor.name.as_str().into(),
        actor.source.as_str().into(),
        action.as_str().into(),
        filter.into(),
        note.map(str::to_owned).into(),
        i64::try_from(chosen).unwrap_or(i64::MAX).into(),
    ];
    let row = db
        .query_one_raw(statement(START_ACTION, values))
        .await?
        .ok_or_else(|| DbErr::RecordNotInserted)?;
    row.try_get("", "id")
}

/// Locks one letter for a replay while it is still open; `None` when it is not (replayed or
/// discarded meanwhile, or being replayed by someone else right now).
pub async fn lock_open(
    txn: &impl ConnectionTrait,
    id: i64,
) -> Result<Option<dead_letters::Model>, DbErr> {
    use sea_orm::sea_query::LockBehavior;
    use sea_orm::sea_query::LockType;
    dead_letters::Entity::find_by_id(id)
        .filter(sea_orm::ColumnTrait::eq(
            &dead_letters::Column::Status,
            Status::Open.as_str(),
        ))
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .one(txn)
        .await
}

/// Marks a letter replayed for `action_id`, inside the transaction that locked it.
pub async fn mark_replayed(
    txn: &impl ConnectionTrait,
    id: i64,
    action_id: i64,
) -> Result<(), DbErr> {
    txn.execute_raw(statement(MARK_REPLAYED, [id.into(), action_id.into()]))
        .await?;
    Ok(())
}

/// Discards those of `ids` still open, for `action_id`; returns how many it changed.
pub async fn discard(db: &impl ConnectionTrait, ids: &[i64], action_id: i64) -> Result<u64, DbErr> {
    let sql = format!(
        "WITH discarded AS ( \
           UPDATE dead_letters SET status = 'discarded', updated_at = clock_timestamp() \
           WHERE id IN {IDS} AND status = 'open' RETURNING id), \
         history AS (INSERT INTO dead_letter_history (dead_letter_id, event, action_id) \
           SELECT id, 'discarded', $2 FROM discarded) \
         UPDATE dead_letter_actions SET changed = (SELECT count(*) FROM discarded) WHERE id = $2 \
         RETURNING changed"
    );
    let row = db
        .query_one_raw(statement(&sql, [ids_json(ids), action_id.into()]))
        .await?;
    let changed: i64 = row
        .map(|r| r.try_get("", "changed"))
        .transpose()?
        .unwrap_or(0);
    Ok(u64::try_from(changed).unwrap_or_default())
}

/// Resolves every open letter that is no longer needed, as reconcile run `run_id`'s action;
/// returns how many.
pub async fn resolve_no_longer_needed(db: &Pool, run_id: i64) -> Result<u64, DbErr> {
    let sql = format!(
        "WITH resolved AS ( \
           UPDATE dead_letters SET status = 'resolved', updated_at = clock_timestamp() \
           WHERE status = 'open' AND {NO_LONGER_NEEDED} RETURNING id), \
         action AS (INSERT INTO dead_letter_actions (actor, source, action, filter, chosen, changed) \
           SELECT 'reconcile', 'reconcile', 'resolve', jsonb_build_object('reconcile_run', $1::bigint), \
             count(*), count(*) FROM resolved HAVING count(*) > 0 RETURNING id) \
         INSERT INTO dead_letter_history (dead_letter_id, event, action_id) \
         SELECT r.id, 'resolved', a.id FROM resolved r CROSS JOIN action a"
    );
    let result = db.execute_raw(statement(&sql, [run_id.into()])).await?;
    Ok(result.rows_affected())
}

/// Deletes up to `batch` closed letters unchanged for `retention`; returns how many.
pub async fn purge_closed(
    db: &Pool,
    retention: std::time::Duration,
    batch: u64,
) -> Result<u64, DbErr> {
    let values: [Value; 2] = [
        retention.as_secs_f64().into(),
        i64::try_from(batch).unwrap_or(i64::MAX).into(),
    ];
    Ok(db
        .execute_raw(statement(PURGE_CLOSED, values))
        .await?
        .rows_affected())
}

fn ids_json(ids: &[i64]) -> Value {
    serde_json::Value::from(ids.to_vec()).into()
}
