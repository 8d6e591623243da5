//! What an operator does from the console: replay or discard one letter. Every action is a POST
//! (refused cross-site by the router's CSRF layer), refused in read-only mode (each takes an
//! [`ActingOperator`]), and recorded with the operator's name.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::ConsoleState;
use super::page::Refusal;
use super::session::{ActingOperator, Operator};
use crate::dead_letter::store::{self, Actor, Source};
use crate::dead_letter::{self, Filter, Status};

/// The open letter `svix_id`, and the filter that names it, for the audit.
async fn open_letter(state: &ConsoleState, svix_id: &str) -> Result<(i64, Filter), Refusal> {
    let row = store::find(&state.db, svix_id)
        .await?
        .ok_or_else(|| Refusal::NotFound(format!("No dead letter has svix id {svix_id}.")))?;
    if row.status != Status::Open.as_str() {
        return Err(Refusal::BadRequest(format!(
            "{svix_id} is {}: only open letters are replayed or discarded.",
            row.status
        )));
    }
    let filter = Filter {
        ids: vec![svix_id.to_owned()],
        ..Filter::open()
    };
    Ok((row.id, filter))
}

fn actor(operator: Operator) -> Actor {
    Actor {
        name: operator.name,
        source: Source::Console,
    }
}

fn letter_page(svix_id: &str) -> Response {
    let path = utf8_percent_encode(svix_id, NON_ALPHANUMERIC);
    Redirect::to(&format!("/dead-letters/{path}")).into_response()
}

/// Longest discard reason kept.
pub const MAX_NOTE: usize = 500;

/// A discard's reason as typed: trimmed, at most [`MAX_NOTE`] characters, not empty.
pub fn note(typed: &str) -> Result<String, Refusal> {
    let note = typed.trim();
    if note.is_empty() {
        return Err(Refusal::BadRequest("Say why it is discarded.".into()));
    }
    Ok(note.chars().take(MAX_NOTE).collect())
}

/// Replays `ids` in a task of its own, which finishes each letter's publish and commit even if
/// the request that asked goes away (a closed tab, a proxy's timeout): a replay cut between the
/// confirm and the commit would publish that letter again next time.
pub async fn replay_detached(
    state: &ConsoleState,
    ids: Vec<i64>,
    filter: Filter,
    actor: Actor,
) -> Result<dead_letter::Replayed, Refusal> {
    let (broker, db) = (state.broker.clone(), state.db.clone());
    let task = tokio::spawn(async move {
        let stop = CancellationToken::new();
        dead_letter::replay_ids(&broker, &db, &ids, &filter, &actor, &stop).await
    });
    match task.await {
        Ok(done) => Ok(done?),
        Err(error) => Err(Refusal::Failed(error.to_string())),
    }
}

pub async fn replay_one(
    State(state): State<ConsoleState>,
    ActingOperator(operator): ActingOperator,
    Path(svix_id): Path<String>,
) -> Result<Response, Refusal> {
    let (id, filter) = open_letter(&state, &svix_id).await?;
    replay_detached(&state, vec![id], filter, actor(operator)).await?;
    Ok(letter_page(&svix_id))
}

#[derive(Deserialize)]
pub struct Discard {
    note: String,
}

pub async fn discard_one(
    State(state): State<ConsoleState>,
    ActingOperator(operator): ActingOperator,
    Path(svix_id): Path<String>,
    Form(discard): Form<Discard>,
) -> Result<Response, Refusal> {
    let note = note(&discard.note)?;
    let (id, filter) = open_letter(&state, &svix_id).await?;
    dead_letter::discard_ids(&state.db, &[id], &filter, &actor(operator), &note).await?;
    Ok(letter_page(&svix_id))
}
