//! What an operator does from the console: replay or discard one letter. Every action is a POST
//! (refused cross-site by the router's CSRF layer), refused in read-only mode, and recorded
//! with the operator's name.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::ConsoleState;
use super::page::Refusal;
use super::session::Operator;
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
    let path: String = url::form_urlencoded::byte_serialize(svix_id.as_bytes()).collect();
    Redirect::to(&format!("/dead-letters/{path}")).into_response()
}

pub async fn replay_one(
    State(state): State<ConsoleState>,
    operator: Operator,
    Path(svix_id): Path<String>,
) -> Result<Response, Refusal> {
    if state.read_only {
        return Err(Refusal::ReadOnly);
    }
    let (id, filter) = open_letter(&state, &svix_id).await?;
    let stop = CancellationToken::new();
    dead_letter::replay_ids(
        &state.broker,
        &state.db,
        &[id],
        &filter,
        &actor(operator),
        &stop,
    )
    .await?;
    Ok(letter_page(&svix_id))
}

#[derive(Deserialize)]
pub struct Discard {
    note: String,
}

pub async fn discard_one(
    State(state): State<ConsoleState>,
    operator: Operator,
    Path(svix_id): Path<String>,
    Form(discard): Form<Discard>,
) -> Result<Response, Refusal> {
    if state.read_only {
        return Err(Refusal::ReadOnly);
    }
    let note = discard.note.trim();
    if note.is_empty() {
        return Err(Refusal::BadRequest("Say why it is discarded.".into()));
    }
    let (id, filter) = open_letter(&state, &svix_id).await?;
    dead_letter::discard_ids(&state.db, &[id], &filter, &actor(operator), note).await?;
    Ok(letter_page(&svix_id))
}
