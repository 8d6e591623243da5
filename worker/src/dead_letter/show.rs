//! One dead letter in full, for `worker dlq show` and the console's letter page: the payload,
//! every header, its history, and what the database holds for its user now, so an operator
//! sees whether a replay is still needed.

use serde::Serialize;

use super::store::{self, HistoryEntry};
use super::{DeadLetter, DlqError};
use crate::db::Pool;
use crate::users::{self, Found, UserKey};

/// Everything known about one letter.
#[derive(Debug, Serialize)]
pub struct LetterView {
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// The body as JSON when it is JSON, else as text (bytes that are not UTF-8 replaced).
    pub body: serde_json::Value,
    pub body_is_json: bool,
    pub headers: serde_json::Value,
    pub properties: serde_json::Value,
    pub arrived_at: String,
    pub updated_at: String,
    pub history: Vec<HistoryEntry>,
    /// The user as the database holds it now (`worker user show`), when the letter names one.
    pub user: Option<Found>,
}

/// The letter with svix id `svix_id`, if the store has it.
pub async fn show(db: &Pool, svix_id: &str) -> Result<Option<LetterView>, DlqError> {
    let Some(row) = store::find(db, svix_id).await? else {
        return Ok(None);
    };
    let no_longer_needed = store::no_longer_needed(db, &[row.id])
        .await?
        .contains(&row.id);
    let user = match &row.user_id {
        Some(id) => users::find(db, &UserKey::Id(id.clone())).await?,
        None => None,
    };
    let parsed = serde_json::from_slice::<serde_json::Value>(&row.body).ok();
    Ok(Some(LetterView {
        letter: DeadLetter {
            no_longer_needed,
            ..DeadLetter::from(&row)
        },
        body_is_json: parsed.is_some(),
        body: parsed.unwrap_or_else(|| {
            serde_json::Value::String(String::from_utf8_lossy(&row.body).into_owned())
        }),
        headers: row.headers.clone(),
        properties: row.properties.clone(),
        arrived_at: super::timestamp(row.arrived_at.to_utc()),
        updated_at: super::timestamp(row.updated_at.to_utc()),
        history: store::history(db, row.id).await?,
        user,
    }))
}
