//! The console's pages: log in and out, the dead letters (filtered, paged by keyset, counted by
//! reason) and one letter in full. Readable without JavaScript; every control labelled.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::ConsoleState;
use super::page::{Refusal, render};
use super::session::{self, Operator};
use crate::dead_letter::store::{self, Order};
use crate::dead_letter::{self, Filter, Status, timestamp};
use crate::metrics::RecentRates;
use crate::users::{self, UserKey};

/// Letters per page.
const PAGE: u64 = 50;
/// The status choices of the filter, `any` last.
const STATUSES: [&str; 5] = ["open", "replayed", "resolved", "discarded", "any"];

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    needs_token: bool,
    error: Option<&'static str>,
}

pub async fn login_form(State(state): State<ConsoleState>) -> Response {
    render(&LoginPage {
        needs_token: state.key.needs_token(),
        error: None,
    })
}

#[derive(Deserialize)]
pub struct Login {
    name: String,
    #[serde(default)]
    token: String,
}

/// Checks the token (in constant time) and sets the session cookie naming the operator.
pub async fn log_in(State(state): State<ConsoleState>, Form(login): Form<Login>) -> Response {
    let refuse = |error| {
        let mut page = render(&LoginPage {
            needs_token: state.key.needs_token(),
            error: Some(error),
        });
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        page
    };
    let Some(name) = session::operator_name(&login.name) else {
        return refuse(
            "Give your name (letters, digits, spaces, . - _ @ ', at most 64): it is recorded with what you do.",
        );
    };
    if !state.key.accepts(&login.token) {
        tracing::warn!(operator = %name, "console login with a wrong token");
        return refuse("That is not the console's token.");
    }
    tracing::info!(operator = %name, "console login");
    let cookie = session::set_cookie(&state.key.seal(&name), state.secure_cookie);
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to("/dead-letters"),
    )
        .into_response()
}

pub async fn log_out(State(state): State<ConsoleState>) -> Response {
    let cookie = session::clear_cookie(state.secure_cookie);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

/// The dead-letter list's query string: the filter as typed, and the keyset cursor.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub reason: String,
    #[serde(default, rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub svix_id: String,
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub until: String,
    #[serde(default)]
    pub status: String,
    /// `<last failed, µs>.<id>` of the last letter of the page before (PostgreSQL keeps
    /// microseconds: a cursor in milliseconds would skip letters within its last one).
    #[serde(default)]
    pub after: String,
}

impl ListQuery {
    /// The status filter as typed, `open` when none was.
    pub fn status_or_open(&self) -> &str {
        match self.status.as_str() {
            "" => "open",
            status => status,
        }
    }

    /// The filter these fields ask for (`status` apart: see [`Self::status_filter`]).
    pub fn filter(&self, status: Option<Status>) -> Result<Filter, Refusal> {
        let text = |value: &str| Some(value.trim().to_owned()).filter(|v| !v.is_empty());
        Ok(Filter {
            reason: text(&self.reason),
            event_type: text(&self.event_type),
            user_id: text(&self.user),
            ids: text(&self.svix_id).into_iter().collect(),
            since: time(&self.since, "since")?,
            until: time(&self.until, "until")?,
            status,
            limit: None,
        })
    }

    /// The status chosen: `None` for any.
    pub fn status_filter(&self) -> Result<Option<Status>, Refusal> {
        match self.status_or_open() {
            "open" => Ok(Some(Status::Open)),
            "replayed" => Ok(Some(Status::Replayed)),
            "resolved" => Ok(Some(Status::Resolved)),
            "discarded" => Ok(Some(Status::Discarded)),
            "any" => Ok(None),
            other => Err(Refusal::BadRequest(format!("no status {other:?}"))),
        }
    }

    fn page(&self) -> Result<Option<(DateTime<Utc>, i64)>, Refusal> {
        if self.after.is_empty() {
            return Ok(None);
        }
        let bad = || Refusal::BadRequest("a page cursor this console did not write".into());
        let (micros, id) = self.after.split_once('.').ok_or_else(bad)?;
        let at = micros
            .parse()
            .ok()
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(bad)?;
        Ok(Some((at, id.parse().map_err(|_| bad())?)))
    }

    /// This list's address, continuing after `(at, id)`.
    fn link_after(&self, at: DateTime<Utc>, id: i64) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("reason", &self.reason),
            ("type", &self.event_type),
            ("user", &self.user),
            ("svix_id", &self.svix_id),
            ("since", &self.since),
            ("until", &self.until),
            ("status", &self.status),
        ] {
            if !value.is_empty() {
                query.append_pair(name, value);
            }
        }
        query.append_pair("after", &format!("{}.{id}", at.timestamp_micros()));
        format!("/dead-letters?{}", query.finish())
    }
}

fn time(value: &str, field: &str) -> Result<Option<DateTime<Utc>>, Refusal> {
    match value.trim() {
        "" => Ok(None),
        text => DateTime::parse_from_rfc3339(text)
            .map(|t| Some(t.to_utc()))
            .map_err(|_| {
                Refusal::BadRequest(format!(
                    "{field}: an RFC 3339 time, e.g. 2026-12-01T00:00:00Z"
                ))
            }),
    }
}

/// One row of the list.
struct Row {
    svix_id: String,
    event_type: String,
    user_id: String,
    reason: String,
    attempts: String,
    last_failed_at: String,
    status: String,
    no_longer_needed: bool,
}

#[derive(Template)]
#[template(path = "console/dead_letters.html")]
struct DeadLettersPage {
    operator: String,
    read_only: bool,
    query: ListQuery,
    statuses: [&'static str; 5],
    counts: Vec<(String, u64)>,
    total: u64,
    letters: Vec<Row>,
    next: Option<String>,
}

pub async fn dead_letters(
    State(state): State<ConsoleState>,
    operator: Operator,
    Query(query): Query<ListQuery>,
) -> Result<Response, Refusal> {
    let filter = query.filter(query.status_filter()?)?;
    let rows = store::list(
        &state.db,
        &filter,
        Order::NewestFirst,
        query.page()?,
        Some(PAGE),
    )
    .await?;
    let counts = store::counts_by_reason(&state.db, &filter).await?;
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let no_longer_needed = store::no_longer_needed(&state.db, &ids).await?;
    let next = match rows.len() as u64 {
        PAGE => rows
            .last()
            .map(|last| query.link_after(last.last_failed_at.to_utc(), last.id)),
        _ => None,
    };
    let letters = rows
        .iter()
        .map(|row| Row {
            svix_id: row.svix_id.clone(),
            event_type: row.event_type.clone(),
            user_id: row.user_id.clone().unwrap_or_else(|| "-".into()),
            reason: row.reason.clone(),
            attempts: row.attempts.map_or("-".into(), |n| n.to_string()),
            last_failed_at: timestamp(row.last_failed_at.to_utc()),
            status: row.status.clone(),
            no_longer_needed: no_longer_needed.contains(&row.id),
        })
        .collect();
    Ok(render(&DeadLettersPage {
        operator: operator.name,
        read_only: state.read_only,
        total: counts.values().sum(),
        counts: counts.into_iter().collect(),
        query,
        statuses: STATUSES,
        letters,
        next,
    }))
}

/// One history entry as the page shows it.
struct HistoryLine {
    at: String,
    event: String,
    by: String,
    why: String,
}

#[derive(Template)]
#[template(path = "console/letter.html")]
struct LetterPage {
    operator: String,
    read_only: bool,
    svix_id: String,
    event_type: String,
    user_id: String,
    status: String,
    no_longer_needed: bool,
    reason: String,
    detail: String,
    attempts: String,
    first_failed_at: String,
    last_failed_at: String,
    replay_count: i64,
    user: String,
    history: Vec<HistoryLine>,
    body: String,
    headers: Vec<(String, String)>,
}

pub async fn letter(
    State(state): State<ConsoleState>,
    operator: Operator,
    Path(svix_id): Path<String>,
) -> Result<Response, Refusal> {
    let view = dead_letter::show(&state.db, &svix_id)
        .await?
        .ok_or_else(|| Refusal::NotFound(format!("No dead letter has svix id {svix_id}.")))?;
    let dash = || "-".to_owned();
    let letter = &view.letter;
    let pretty = |value: &serde_json::Value| {
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    };
    let body = match (&view.body, view.body_is_json) {
        (serde_json::Value::String(text), false) => text.clone(),
        (value, _) => pretty(value),
    };
    let headers = view
        .headers
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(name, value)| {
                    let shown = value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned);
                    (name.clone(), shown)
                })
                .collect()
        })
        .unwrap_or_default();
    let history = view
        .history
        .iter()
        .map(|entry| HistoryLine {
            at: timestamp(entry.at),
            event: entry.event.clone(),
            by: match (&entry.actor, &entry.source) {
                (Some(actor), Some(source)) => format!("{actor} ({source})"),
                _ => dash(),
            },
            why: entry
                .reason
                .clone()
                .or_else(|| entry.note.clone())
                .unwrap_or_else(dash),
        })
        .collect();
    let user = match &view.user {
        Some(found) => serde_json::to_string_pretty(found).unwrap_or_default(),
        None => "No row for this user: not provisioned (or the letter names no user).".into(),
    };
    Ok(render(&LetterPage {
        operator: operator.name,
        read_only: state.read_only,
        svix_id: letter.svix_id.clone().unwrap_or_else(dash),
        event_type: letter.event_type.clone(),
        user_id: letter.user_id.clone().unwrap_or_else(dash),
        status: letter.status.clone(),
        no_longer_needed: letter.no_longer_needed,
        reason: letter.reason.clone(),
        detail: letter.detail.clone().unwrap_or_else(dash),
        attempts: letter.attempts.map_or_else(dash, |n| n.to_string()),
        first_failed_at: letter.first_failed_at.clone().unwrap_or_else(dash),
        last_failed_at: letter.last_failed_at.clone().unwrap_or_else(dash),
        replay_count: letter.replay_count,
        user,
        history,
        body,
        headers,
    }))
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    operator: String,
    read_only: bool,
    open: Vec<(String, u64)>,
    open_total: u64,
    last_run: String,
    /// Queue name and what the broker says of it.
    queues: Vec<(String, String)>,
    /// `None` in a process that does not consume.
    throughput: Option<Throughput>,
}

/// This process's consumer over the last minute, in words.
struct Throughput {
    over_seconds: u64,
    events_per_second: String,
    dead_lettered_per_second: String,
    failed_percent: String,
    retries_per_second: String,
}

impl From<RecentRates> for Throughput {
    fn from(rates: RecentRates) -> Self {
        Self {
            over_seconds: rates.over.as_secs(),
            events_per_second: format!("{:.1}", rates.events_per_second),
            dead_lettered_per_second: format!("{:.2}", rates.dead_lettered_per_second),
            failed_percent: format!("{:.1}", rates.failed_share * 100.0),
            retries_per_second: format!("{:.2}", rates.retries_per_second),
        }
    }
}

pub async fn overview(
    State(state): State<ConsoleState>,
    operator: Operator,
) -> Result<Response, Refusal> {
    let open = store::counts_by_reason(&state.db, &Filter::open()).await?;
    let queues = queue_depths(&state.broker).await;
    let last_run = crate::reconcile::runs::recent(&state.db, 1)
        .await?
        .into_iter()
        .next()
        .map_or_else(
            || "None yet.".to_owned(),
            |run| {
                format!(
                    "#{} ({}), started {}: {}; {} repaired",
                    run.id,
                    run.trigger,
                    timestamp(run.started_at),
                    run.result,
                    run.repaired
                )
            },
        );
    Ok(render(&OverviewPage {
        operator: operator.name,
        read_only: state.read_only,
        open_total: open.values().sum(),
        open: open.into_iter().collect(),
        last_run,
        queues,
        throughput: state.consumes.then(|| state.metrics.recent_rates().into()),
    }))
}

/// How long the overview waits for the broker.
const BROKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The main and dead-letter queues' depth and consumers, in words; what failed instead.
async fn queue_depths(broker: &crate::config::BrokerSettings) -> Vec<(String, String)> {
    let topology = crate::topology::Topology::from_settings(broker);
    let names = [topology.queue.clone(), topology.dead_letter_queue.clone()];
    let asked = async {
        let connection = crate::broker::connect_light(broker, "console").await?;
        let channel = connection.create_channel().await?;
        let mut depths = Vec::new();
        for name in &names {
            depths.push(crate::broker::queue_depth(&channel, name).await);
        }
        let _ = connection.close(200, "console overview".into()).await;
        Ok::<_, lapin::Error>(depths)
    };
    match tokio::time::timeout(BROKER_TIMEOUT, asked).await {
        Ok(Ok(depths)) => names
            .iter()
            .zip(depths)
            .map(|(name, depth)| {
                let said = depth.map_or_else(
                    |error| format!("unknown ({error})"),
                    |d| format!("{} ready, {} consumers", d.ready, d.consumers),
                );
                (name.clone(), said)
            })
            .collect(),
        Ok(Err(error)) => vec![("broker".into(), format!("unreachable: {error}"))],
        Err(_) => vec![(
            "broker".into(),
            format!("no answer within {BROKER_TIMEOUT:?}"),
        )],
    }
}

#[derive(Deserialize)]
pub struct UserQuery {
    #[serde(default)]
    q: String,
}

#[derive(Template)]
#[template(path = "console/users.html")]
struct UsersPage {
    operator: String,
    read_only: bool,
    q: String,
    found: Option<String>,
}

/// Finds a user by Clerk id (`user_...`), email (has an `@`) or username.
pub async fn users(
    State(state): State<ConsoleState>,
    operator: Operator,
    Query(query): Query<UserQuery>,
) -> Result<Response, Refusal> {
    let q = query.q.trim().to_owned();
    let found = match q.as_str() {
        "" => None,
        text => {
            let key = if text.starts_with("user_") {
                UserKey::Id(text.to_owned())
            } else if text.contains('@') {
                UserKey::Email(text.to_owned())
            } else {
                UserKey::Username(text.to_owned())
            };
            Some(match users::find(&state.db, &key).await? {
                Some(found) => serde_json::to_string_pretty(&found).unwrap_or_default(),
                None => format!("No user with {text}."),
            })
        }
    };
    Ok(render(&UsersPage {
        operator: operator.name,
        read_only: state.read_only,
        q,
        found,
    }))
}
