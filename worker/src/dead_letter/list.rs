//! `worker dlq list`: the matching dead letters from the store, and counts by reason.

use std::collections::BTreeMap;

use serde::Serialize;

use super::store::{self, Order};
use super::{DeadLetter, DlqError, Filter};
use crate::db::Pool;

/// What `dlq list` prints.
#[derive(Debug, Serialize)]
pub struct Listing {
    /// In the order they arrived.
    pub dead_letters: Vec<DeadLetter>,
    /// Over every matching dead letter, `--limit` or not.
    pub counts_by_reason: BTreeMap<String, usize>,
    pub total: usize,
}

/// Lists the letters matching `filter`, marking those no longer needed.
pub async fn list(db: &Pool, filter: &Filter) -> Result<Listing, DlqError> {
    let limit = filter.limit.map(|l| l as u64);
    let rows = store::list(db, filter, Order::OldestFirst, None, limit).await?;
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let no_longer_needed = store::no_longer_needed(db, &ids).await?;
    let counts_by_reason: BTreeMap<String, usize> = store::counts_by_reason(db, filter)
        .await?
        .into_iter()
        .map(|(reason, n)| (reason, n as usize))
        .collect();
    Ok(Listing {
        dead_letters: rows
            .iter()
            .map(|row| DeadLetter {
                no_longer_needed: no_longer_needed.contains(&row.id),
                ..DeadLetter::from(row)
            })
            .collect(),
        total: counts_by_reason.values().sum(),
        counts_by_reason,
    })
}
