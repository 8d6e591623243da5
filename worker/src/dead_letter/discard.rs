//! `worker dlq discard` (and the console's discard): close chosen open letters for good, with the
//! operator's reason, audited. A discarded letter is never replayed and is purged after
//! `DEAD_LETTER_RETENTION`.

use serde::Serialize;

use super::store::{self, Action, Actor};
use super::{DlqError, Filter};
use crate::db::Pool;

/// What a discard did (or, dry, would do).
#[derive(Debug, Default, Serialize)]
pub struct DiscardSummary {
    pub dry_run: bool,
    /// Letters matching when it started.
    pub chosen: usize,
    /// Letters it closed (0 when dry; fewer than chosen when some were replayed meanwhile).
    pub discarded: u64,
}

/// Discards the open letters matching `filter` now (a snapshot), with `note` as the reason.
/// Refuses a filter that chooses by nothing (it never discards everything) and an empty note.
pub async fn discard(
    db: &Pool,
    filter: &Filter,
    actor: &Actor,
    note: &str,
    dry_run: bool,
) -> Result<DiscardSummary, DlqError> {
    let chooses = !filter.ids.is_empty()
        || filter.reason.is_some()
        || filter.event_type.is_some()
        || filter.user_id.is_some();
    if !chooses {
        return Err(DlqError::Refused(
            "discard needs --id, --reason, --type or --user: it never discards everything",
        ));
    }
    if note.trim().is_empty() {
        return Err(DlqError::Refused("a discard must say why"));
    }
    let ids: Vec<i64> = store::snapshot(db, filter)
        .await?
        .iter()
        .map(|c| c.id)
        .collect();
    let mut summary = DiscardSummary {
        dry_run,
        chosen: ids.len(),
        discarded: 0,
    };
    if !dry_run {
        summary.discarded = discard_ids(db, &ids, filter, actor, note).await?;
    }
    Ok(summary)
}

/// Discards exactly `ids` (those still open), recording `filter` as what chose them; returns
/// how many it closed. The action and its effect commit together: no audit row for a discard
/// that failed.
pub async fn discard_ids(
    db: &Pool,
    ids: &[i64],
    filter: &Filter,
    actor: &Actor,
    note: &str,
) -> Result<u64, DlqError> {
    let txn = db.begin().await?;
    let action =
        store::start_action(&txn, actor, Action::Discard, filter, Some(note), ids.len()).await?;
    let discarded = store::discard(&txn, ids, action).await?;
    txn.commit().await?;
    Ok(discarded)
}
