//! Batch provisioning: several users' `user.created`/`user.updated` in one transaction, with
//! multi-row statements, so the per-transaction cost (round trips, commit flush) is shared.
//!
//! The rules are exactly those of one event at a time (per-user lock, tombstones, last writer
//! wins, derived usernames); the caller falls back to one event per transaction when a batch
//! fails, so one bad event never costs its batch-mates more than that retry.

use std::collections::HashMap;

use chrono::SecondsFormat;
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use serde_json::json;

use super::{Outcome, Provisioned, UserWrite, finish, outcome_of, statement};
use crate::domain::{UserProfile, UsernameChoice, WorkspaceName};
use crate::error::ProvisionError;

/// The batch as rows: $1 is a JSON array of users.
const ROWS: &str = "jsonb_to_recordset($1::jsonb) AS e(id text, email text, username text, fallback text, \
                    derived boolean, first_name text, last_name text, avatar_url text, updated_at timestamptz)";

/// Locks every user of the batch, in one global order so two batches never deadlock.
fn lock_users() -> String {
    format!(
        "SELECT pg_advisory_xact_lock(h) FROM \
         (SELECT DISTINCT hashtextextended(e.id, 0) AS h FROM {ROWS}) AS l ORDER BY h"
    )
}

/// The multi-row form of the upsert in `provision_user` (migration `m20261129_000004`).
fn upsert_users() -> String {
    format!(
        r#"
INSERT INTO users AS u (id, email, username, first_name, last_name, avatar_url, clerk_updated_at)
SELECT
    e.id, e.email,
    CASE WHEN e.derived AND EXISTS (SELECT 1 FROM users o WHERE o.username = e.username AND o.id <> e.id)
         THEN e.fallback ELSE e.username END,
    e.first_name, e.last_name, e.avatar_url, e.updated_at
FROM {ROWS}
WHERE NOT EXISTS (SELECT 1 FROM user_tombstones t WHERE t.user_id = e.id AND t.deleted_at >= e.updated_at)
ON CONFLICT (id) DO UPDATE SET
    email = EXCLUDED.email,
    -- EXCLUDED has only table columns: the row's `derived` flag is looked up in the batch.
    username = CASE WHEN (SELECT r.derived FROM {ROWS_AGAIN} WHERE r.id = EXCLUDED.id LIMIT 1)
                    THEN u.username ELSE EXCLUDED.username END,
    first_name = EXCLUDED.first_name,
    last_name = EXCLUDED.last_name,
    avatar_url = EXCLUDED.avatar_url,
    clerk_updated_at = EXCLUDED.clerk_updated_at,
    updated_at = now()
WHERE u.clerk_updated_at < EXCLUDED.clerk_updated_at
RETURNING u.id, (xmax = 0) AS inserted
"#,
        ROWS_AGAIN = ROWS.replace(" AS e(", " AS r(")
    )
}

/// For users the upsert did not write: absent (a tombstone stopped it), or how the stored row
/// compares with the event.
fn stored_is_newer() -> String {
    format!(
        "SELECT e.id, u.clerk_updated_at > e.updated_at AS newer FROM {ROWS} LEFT JOIN users u ON u.id = e.id"
    )
}

/// The multi-row form of the workspace step in `provision_user`: creates the missing workspaces
/// ($1 user ids as a JSON array, $2 name) and returns those it created.
const CREATE_WORKSPACES: &str = r#"
INSERT INTO workspaces (user_id, name) SELECT jsonb_array_elements_text($1::jsonb), $2
ON CONFLICT ON CONSTRAINT unique_user_workspace DO NOTHING
RETURNING user_id, id
"#;

/// The workspaces of the users in $1 (a JSON array of ids), for those the insert found existing.
/// A separate statement, run only when needed: sign-ups never pay for it, and its plan (cached
/// per connection) cannot be a scan of the whole table chosen while the table was still empty.
const EXISTING_WORKSPACES: &str = "SELECT user_id, id FROM workspaces \
     WHERE user_id = ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))";

/// Provisions distinct users' changes in one transaction; results come back in input order.
/// Any error rolls the whole batch back (and is classified as for one event).
pub async fn provision_batch(
    db: &DatabaseConnection,
    profiles: &[&UserProfile],
) -> Result<Vec<Provisioned>, ProvisionError> {
    let txn = db.begin().await.map_err(ProvisionError::from_db)?;
    let result = provision_in(&txn, profiles).await;
    finish(txn, result).await
}

async fn provision_in(
    txn: &DatabaseTransaction,
    profiles: &[&UserProfile],
) -> Result<Vec<Provisioned>, DbErr> {
    let rows = rows(profiles);
    txn.execute_raw(statement(&lock_users(), [rows.clone().into()]))
        .await?;
    let mut writes: HashMap<String, UserWrite> = HashMap::new();
    for row in txn
        .query_all_raw(statement(&upsert_users(), [rows.clone().into()]))
        .await?
    {
        let id: String = row.try_get("", "id")?;
        let inserted: bool = row.try_get("", "inserted")?;
        writes.insert(
            id,
            if inserted {
                UserWrite::Inserted
            } else {
                UserWrite::Updated
            },
        );
    }
    let mut absent = Vec::new();
    if writes.len() < profiles.len() {
        for row in txn
            .query_all_raw(statement(&stored_is_newer(), [rows.into()]))
            .await?
        {
            let id: String = row.try_get("", "id")?;
            if writes.contains_key(&id) {
                continue;
            }
            match row.try_get::<Option<bool>>("", "newer")? {
                None => absent.push(id),
                Some(true) => {
                    writes.insert(id, UserWrite::Stale);
                }
                Some(false) => {
                    writes.insert(id, UserWrite::Unchanged);
                }
            }
        }
    }
    let present: Vec<&str> = profiles
        .iter()
        .map(|p| p.id.as_ref())
        .filter(|id| !absent.iter().any(|a| a == id))
        .collect();
    let mut workspaces = ensure_workspaces(txn, &present).await?;
    profiles
        .iter()
        .map(|profile| {
            let id = profile.id.as_ref();
            let Some(write) = writes.remove(id) else {
                return Ok(Provisioned {
                    outcome: Outcome::Stale,
                    workspace_id: None,
                });
            };
            let (workspace_id, created) = workspaces
                .remove(id)
                .ok_or_else(|| DbErr::RecordNotFound(format!("workspace of {id} vanished")))?;
            Ok(Provisioned {
                outcome: outcome_of(write, created),
                workspace_id: Some(workspace_id),
            })
        })
        .collect()
}

/// Each user's workspace id and whether this transaction created it.
async fn ensure_workspaces(
    txn: &DatabaseTransaction,
    user_ids: &[&str],
) -> Result<HashMap<String, (String, bool)>, DbErr> {
    let mut workspaces = HashMap::new();
    let values = [
        json!(user_ids).into(),
        WorkspaceName::default().as_ref().into(),
    ];
    for row in txn
        .query_all_raw(statement(CREATE_WORKSPACES, values))
        .await?
    {
        workspaces.insert(row.try_get("", "user_id")?, (row.try_get("", "id")?, true));
    }
    let existing: Vec<&str> = user_ids
        .iter()
        .copied()
        .filter(|id| !workspaces.contains_key(*id))
        .collect();
    if !existing.is_empty() {
        for row in txn
            .query_all_raw(statement(EXISTING_WORKSPACES, [json!(existing).into()]))
            .await?
        {
            workspaces.insert(row.try_get("", "user_id")?, (row.try_get("", "id")?, false));
        }
    }
    Ok(workspaces)
}

/// The batch as one JSON parameter: one statement per step, whatever the batch size.
fn rows(profiles: &[&UserProfile]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = profiles
        .iter()
        .map(|p| {
            let (username, fallback, derived) = match &p.username {
                UsernameChoice::Chosen(name) => (name.as_ref(), None, false),
                UsernameChoice::Derived(pair) => (pair.preferred.as_ref(), Some(pair.fallback.as_ref()), true),
            };
            json!({
                "id": p.id.as_ref(),
                "email": p.email.as_ref(),
                "username": username,
                "fallback": fallback,
                "derived": derived,
                "first_name": p.first_name.as_ref().map(AsRef::<str>::as_ref),
                "last_name": p.last_name.as_ref().map(AsRef::<str>::as_ref),
                "avatar_url": p.avatar_url.as_ref().map(AsRef::<str>::as_ref),
                "updated_at": p.updated_at.as_datetime().to_rfc3339_opts(SecondsFormat::Micros, true),
            })
        })
        .collect();
    serde_json::Value::Array(rows)
}
