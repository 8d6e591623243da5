//! Batch provisioning: several users' `user.created`/`user.updated` in one statement, hence one
//! transaction and one round trip, so the per-transaction cost (round trips, commit flush) is
//! shared.
//!
//! Each user goes through `provision_user`, the very function one event at a time uses, so the
//! rules are the same by construction. The caller falls back to one event per transaction when a
//! batch fails, so one bad event never costs its batch-mates more than that retry.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use sea_orm::{DbErr, FromQueryResult};
use serde_json::json;

use super::answer::ProvisionUserRow;
use super::{Provisioned, event_at, statement, username_parameters};
use crate::db::Pool;
use crate::domain::{UserProfile, WorkspaceName};
use crate::error::ProvisionError;

/// $1 the batch as a JSON array of users (distinct ids), $2 the workspace name. Users go through
/// `provision_user` in the order of their lock keys (the sorted subquery is not flattened), so
/// two batches never wait for each other's locks in a cycle.
const PROVISION_USERS: &str = r#"
SELECT e.id, p.user_write, p.workspace_id, p.workspace_created, p.reassigned_user_id,
    p.reassigned_username, p.superseded
FROM (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS r(id text, email text, username text,
        fallback text, derived boolean, first_name text, last_name text, avatar_url text,
        updated_at timestamptz, event_at timestamptz, digest text)
    ORDER BY hashtextextended(r.id, 0)
) AS e
CROSS JOIN LATERAL provision_user(e.id, e.email, e.username, e.fallback, e.derived,
    e.first_name, e.last_name, e.avatar_url, e.updated_at, e.event_at, decode(e.digest, 'hex'),
    $2) AS p
"#;

/// One user's answer within the batch: whose, and `provision_user`'s own row.
#[derive(FromQueryResult)]
struct BatchRow {
    id: String,
    #[sea_orm(nested)]
    answer: ProvisionUserRow,
}

/// Provisions distinct users' changes in one transaction; results come back in input order.
/// Any error rolls the whole batch back (and is classified as for one event).
pub async fn provision_batch(
    db: &Pool,
    profiles: &[&UserProfile],
) -> Result<Vec<Provisioned>, ProvisionError> {
    let values = [
        rows(profiles).into(),
        WorkspaceName::default().as_ref().into(),
    ];
    let rows = BatchRow::find_by_statement(statement(PROVISION_USERS, values))
        .all(db)
        .await
        .map_err(ProvisionError::from_db)?;
    let mut by_user = HashMap::with_capacity(rows.len());
    for row in rows {
        let provisioned = Provisioned::try_from(row.answer).map_err(ProvisionError::from_db)?;
        by_user.insert(row.id, provisioned);
    }
    profiles
        .iter()
        .map(|profile| {
            by_user.remove(profile.id.as_ref()).ok_or_else(|| {
                let missing = format!("no result for {} in its batch", profile.id);
                ProvisionError::Transient(DbErr::RecordNotFound(missing))
            })
        })
        .collect()
}

/// The batch as one JSON parameter: one statement whatever the batch size.
fn rows(profiles: &[&UserProfile]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = profiles
        .iter()
        .map(|p| {
            let (username, fallback, derived) = username_parameters(p);
            json!({
                "id": p.id.as_ref(),
                "email": p.email.as_ref(),
                "username": username,
                "fallback": fallback,
                "derived": derived,
                "first_name": p.first_name.as_ref().map(AsRef::<str>::as_ref),
                "last_name": p.last_name.as_ref().map(AsRef::<str>::as_ref),
                "avatar_url": p.avatar_url.as_ref().map(AsRef::<str>::as_ref),
                "updated_at": rfc3339(p.updated_at.as_datetime()),
                "event_at": rfc3339(event_at(p)),
                "digest": hex(&p.content_digest()),
            })
        })
        .collect();
    serde_json::Value::Array(rows)
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
