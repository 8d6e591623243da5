//! Bulk replay and discard: the operator previews what a filter matches now, and the action then
//! applies to exactly the letters of that preview (their ids travel in the form), never to the
//! filter evaluated again: letters that arrive in between are not touched.

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use axum::Form;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use super::ConsoleState;
use super::actions::{note, replay_detached};
use super::page::{Refusal, render};
use super::pages::ListQuery;
use super::session::ActingOperator;
use crate::dead_letter::store::{self, Actor, Source};
use crate::dead_letter::{self, Filter, Status};

/// The most letters one preview holds (and one bulk action acts on).
pub const MAX_LETTERS: usize = 10_000;

#[derive(Template)]
#[template(path = "console/preview.html")]
struct PreviewPage {
    operator: String,
    read_only: bool,
    chosen: usize,
    capped: bool,
    no_longer_needed: usize,
    by_reason: Vec<(String, usize)>,
    ids: String,
    filter: String,
}

pub async fn preview(
    State(state): State<ConsoleState>,
    ActingOperator(operator): ActingOperator,
    Form(query): Form<ListQuery>,
) -> Result<Response, Refusal> {
    let filter = Filter {
        limit: Some(MAX_LETTERS),
        ..query.filter(Some(Status::Open))?
    };
    let chosen = store::snapshot(&state.db, &filter).await?;
    let ids: Vec<i64> = chosen.iter().map(|c| c.id).collect();
    let no_longer_needed = store::no_longer_needed(&state.db, &ids).await?.len();
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for letter in &chosen {
        *by_reason.entry(letter.reason.clone()).or_default() += 1;
    }
    Ok(render(&PreviewPage {
        operator: operator.name,
        read_only: state.read_only,
        chosen: ids.len(),
        capped: ids.len() == MAX_LETTERS,
        no_longer_needed,
        by_reason: by_reason.into_iter().collect(),
        ids: ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","),
        filter: serde_json::to_string(&filter).unwrap_or_default(),
    }))
}

#[derive(Deserialize)]
pub struct Bulk {
    ids: String,
    #[serde(default)]
    filter: String,
    action: String,
    #[serde(default)]
    note: String,
}

#[derive(Template)]
#[template(path = "console/done.html")]
struct DonePage {
    operator: String,
    read_only: bool,
    outcome: String,
}

pub async fn act(
    State(state): State<ConsoleState>,
    ActingOperator(operator): ActingOperator,
    Form(bulk): Form<Bulk>,
) -> Result<Response, Refusal> {
    let ids = parse_ids(&bulk.ids)?;
    // The filter is recorded as the operator saw it in the preview; it chooses nothing here.
    let filter = recorded_filter(&bulk.filter)?;
    let actor = Actor {
        name: operator.name.clone(),
        source: Source::Console,
    };
    let outcome = match bulk.action.as_str() {
        "replay" => {
            let count = ids.len();
            let done = replay_detached(&state, ids, filter, actor).await?;
            format!(
                "Replayed {} of {count} letters ({} were no longer open).",
                done.replayed, done.not_open
            )
        }
        "discard" => {
            let note = note(&bulk.note)?;
            let discarded =
                dead_letter::discard_ids(&state.db, &ids, &filter, &actor, &note).await?;
            format!("Discarded {discarded} of {} letters.", ids.len())
        }
        other => return Err(Refusal::BadRequest(format!("no action {other:?}"))),
    };
    Ok(render(&DonePage {
        operator: operator.name,
        read_only: state.read_only,
        outcome,
    }))
}

/// The filter the preview showed, for the audit: the open letters it matched (the preview's cap
/// is not part of what the operator asked for).
fn recorded_filter(json: &str) -> Result<Filter, Refusal> {
    let filter: Filter = serde_json::from_str(json).map_err(|_| {
        Refusal::BadRequest("the preview's filter is not one this console wrote".into())
    })?;
    Ok(Filter {
        status: Some(Status::Open),
        limit: None,
        ..filter
    })
}

/// The preview's ids: distinct numbers, at most [`MAX_LETTERS`].
fn parse_ids(text: &str) -> Result<Vec<i64>, Refusal> {
    let ids: BTreeSet<i64> = text
        .split(',')
        .filter(|id| !id.is_empty())
        .map(|id| id.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| Refusal::BadRequest("the preview's letters are not a list of ids".into()))?;
    if ids.is_empty() || ids.len() > MAX_LETTERS {
        return Err(Refusal::BadRequest(format!(
            "a bulk action takes 1 to {MAX_LETTERS} letters from a preview"
        )));
    }
    Ok(ids.into_iter().collect())
}
