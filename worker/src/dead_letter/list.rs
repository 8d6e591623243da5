//! `worker dlq list`: every matching dead letter, without removing any, and counts by reason.

use std::collections::BTreeMap;

use serde::Serialize;

use super::browser::Browser;
use super::{DeadLetter, DlqError, Filter};
use crate::config::BrokerSettings;

/// What `dlq list` prints.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub dead_letters: Vec<DeadLetter>,
    /// Over every matching dead letter, `--limit` or not.
    pub counts_by_reason: BTreeMap<String, usize>,
    pub total: usize,
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
            listing.add(DeadLetter::from_message(&message), filter);
        }
        Ok::<_, DlqError>(())
    }
    .await;
    browser.close().await;
    result.map(|()| listing)
}

impl Listing {
    /// Counts `letter` if it matches, and keeps it while within `--limit`.
    fn add(&mut self, letter: DeadLetter, filter: &Filter) {
        if !filter.matches(&letter) {
            return;
        }
        self.total += 1;
        *self
            .counts_by_reason
            .entry(letter.reason.clone())
            .or_default() += 1;
        if filter
            .limit
            .is_none_or(|limit| self.dead_letters.len() < limit)
        {
            self.dead_letters.push(letter);
        }
    }
}
