//! A local stand-in for Clerk's Backend API, speaking exactly its documented shape for the calls
//! `worker reconcile` makes: `GET /v1/users` (limit 1-500, `order_by` `+created_at` or
//! `-created_at` (the default), `offset`, or the cursor `starting_after` (the id of the last user
//! of the previous page; 422 with a non-zero offset or another order), and up to 100 `user_id`
//! filters that leave out ids not found; a JSON array of user objects), `GET /v1/users/count`,
//! `GET /v1/users/{id}` (404 `resource_not_found` when unknown), the bearer check (401), and, on
//! request, a 429 with `Retry-After` or a 500 on a chosen request. It can also play an API that
//! ignores the cursor, as older ones did.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// The fake instance: its users in creation order, and its request log.
pub struct FakeClerk {
    pub addr: SocketAddr,
    state: Arc<Instance>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Instance {
    secret: String,
    users: Mutex<Vec<Value>>,
    /// Users `GET /v1/users/{id}` knows but the list skips (as offset paging can).
    unlisted: Mutex<HashSet<String>>,
    requests: AtomicU64,
    /// `GET /v1/users` requests: walking the list, and confirming ids with `user_id`.
    list_requests: AtomicU64,
    confirm_requests: AtomicU64,
    ignore_cursor: AtomicBool,
    /// Answer `user_id` filters with the whole list, as an API that does not know them would.
    ignore_user_id_filter: AtomicBool,
    /// Answer the next `starting_after` with 422, as Clerk does for a cursor whose user is gone.
    refuse_cursor: AtomicBool,
    /// Milliseconds every answer waits before it is sent.
    delay_ms: AtomicU64,
    /// Request numbers (1-based) answered 429 with `Retry-After: 1`, or 500.
    throttle: Mutex<HashSet<u64>>,
    fail: Mutex<HashSet<u64>>,
    answered: Mutex<HashMap<u16, u64>>,
}

impl FakeClerk {
    /// Serves on 127.0.0.1 (a free port) accepting `secret` as the bearer token.
    pub async fn start(secret: &str) -> Self {
        let state = Arc::new(Instance {
            secret: secret.to_owned(),
            ..Instance::default()
        });
        let app = Router::new()
            .route("/v1/users", get(list))
            .route("/v1/users/count", get(count))
            .route("/v1/users/{id}", get(one))
            .layer(middleware::from_fn_with_state(state.clone(), gate))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port for the Clerk stand-in");
        let addr = listener.local_addr().expect("its address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            state,
            server,
        }
    }

    /// The base URL to give as CLERK_API_URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a user object (newest `created_at` last).
    pub fn add(&self, user: Value) {
        lock(&self.state.users).push(user);
    }

    /// Replaces the user with the same id.
    pub fn replace(&self, user: Value) {
        let mut users = lock(&self.state.users);
        if let Some(slot) = users.iter_mut().find(|u| u["id"] == user["id"]) {
            *slot = user;
        }
    }

    /// Removes a user, as a deletion in Clerk does.
    pub fn remove(&self, id: &str) {
        lock(&self.state.users).retain(|u| u["id"] != id);
    }

    /// Keeps `id` out of the list while `GET /v1/users/{id}` still finds it.
    pub fn hide_from_list(&self, id: &str) {
        lock(&self.state.unlisted).insert(id.to_owned());
    }

    /// Answers request number `n` (1-based, counted from now on) with 429 `Retry-After: 1`.
    pub fn throttle_request(&self, n: u64) {
        let base = self.requests();
        lock(&self.state.throttle).insert(base + n);
    }

    /// Answers request number `n` (1-based, counted from now on) with a 500.
    pub fn fail_request(&self, n: u64) {
        let base = self.requests();
        lock(&self.state.fail).insert(base + n);
    }

    /// From now on, answer `starting_after` as if it were not there (the first page again).
    pub fn ignore_cursor(&self) {
        self.state.ignore_cursor.store(true, Ordering::SeqCst);
    }

    /// From now on, answer `user_id` filters as if they were not there.
    pub fn ignore_user_id_filter(&self) {
        self.state
            .ignore_user_id_filter
            .store(true, Ordering::SeqCst);
    }

    /// Answers the next request with `starting_after` 422, as for a cursor user deleted between
    /// two pages.
    pub fn refuse_next_cursor(&self) {
        self.state.refuse_cursor.store(true, Ordering::SeqCst);
    }

    /// Makes every answer from now on wait `delay` (a slow API, or a long run to interrupt).
    pub fn slow_down(&self, delay: std::time::Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(millis, Ordering::SeqCst);
    }

    /// `GET /v1/users` requests that walked the list (no `user_id` filter).
    pub fn list_requests(&self) -> u64 {
        self.state.list_requests.load(Ordering::SeqCst)
    }

    /// `GET /v1/users?user_id=...` requests (orphan confirmations).
    pub fn confirm_requests(&self) -> u64 {
        self.state.confirm_requests.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// How many answers had this status.
    pub fn answered(&self, status: u16) -> u64 {
        lock(&self.state.answered)
            .get(&status)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FakeClerk {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn clerk_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"errors": [{"message": message, "long_message": message, "code": code}]});
    (status, axum::Json(body)).into_response()
}

/// The bearer check, and the injected 429s and 500s, before any route.
async fn gate(State(state): State<Arc<Instance>>, request: Request, next: Next) -> Response {
    let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let response = if !authorised(&state, request.headers()) {
        clerk_error(
            StatusCode::UNAUTHORIZED,
            "authentication_invalid",
            "Invalid authentication",
        )
    } else if lock(&state.throttle).contains(&n) {
        let mut response = clerk_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "Too many requests",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        response
    } else if lock(&state.fail).contains(&n) {
        clerk_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_clerk_error",
            "Something went wrong",
        )
    } else {
        next.run(request).await
    };
    *lock(&state.answered)
        .entry(response.status().as_u16())
        .or_default() += 1;
    response
}

fn authorised(state: &Instance, headers: &HeaderMap) -> bool {
    let expected = format!("Bearer {}", state.secret);
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected)
}

fn unprocessable(message: &str) -> Response {
    clerk_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "form_param_value_invalid",
        message,
    )
}

/// The query of `GET /v1/users`, repeated `user_id`s included.
struct ListQuery {
    limit: usize,
    offset: usize,
    descending: bool,
    starting_after: Option<String>,
    user_ids: Vec<String>,
}

fn list_query(raw: Option<String>) -> Result<ListQuery, &'static str> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let one = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let number = |key: &str, default: usize| match one(key) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().map_err(|_| "bad number"),
    };
    let limit = number("limit", 10)?;
    let offset = number("offset", 0)?;
    if !(1..=500).contains(&limit) {
        return Err("limit must be 1 to 500");
    }
    let descending = match one("order_by").as_deref() {
        None | Some("-created_at") => true,
        Some("+created_at" | "created_at") => false,
        Some(_) => return Err("unsupported order_by"),
    };
    let starting_after = one("starting_after");
    if starting_after.is_some() && offset != 0 {
        return Err("starting_after cannot be combined with offset");
    }
    let user_ids: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "user_id")
        .map(|(_, v)| v.clone())
        .collect();
    if user_ids.len() > 100 {
        return Err("at most 100 user_id values");
    }
    Ok(ListQuery {
        limit,
        offset,
        descending,
        starting_after,
        user_ids,
    })
}

async fn list(State(state): State<Arc<Instance>>, RawQuery(raw): RawQuery) -> Response {
    let query = match list_query(raw) {
        Ok(query) => query,
        Err(refused) => return unprocessable(refused),
    };
    let counter = match query.user_ids.is_empty() {
        true => &state.list_requests,
        false => &state.confirm_requests,
    };
    counter.fetch_add(1, Ordering::SeqCst);
    let unlisted = lock(&state.unlisted).clone();
    let id = |u: &Value| u["id"].as_str().unwrap_or_default().to_owned();
    let filtered =
        !query.user_ids.is_empty() && !state.ignore_user_id_filter.load(Ordering::SeqCst);
    let mut users: Vec<Value> = lock(&state.users)
        .iter()
        .filter(|u| match !filtered {
            true => !unlisted.contains(&id(u)),
            false => query.user_ids.contains(&id(u)),
        })
        .cloned()
        .collect();
    if query.descending {
        users.reverse();
    }
    if query.starting_after.is_some() && state.refuse_cursor.swap(false, Ordering::SeqCst) {
        return unprocessable("starting_after names no user");
    }
    let cursor = match (
        &query.starting_after,
        state.ignore_cursor.load(Ordering::SeqCst),
    ) {
        (Some(after), false) => match users.iter().position(|u| id(u) == *after) {
            Some(at) => at + 1,
            None => return unprocessable("starting_after names no user"),
        },
        _ => 0,
    };
    let page: Vec<Value> = users
        .into_iter()
        .skip(cursor + query.offset)
        .take(query.limit)
        .collect();
    axum::Json(page).into_response()
}

async fn count(State(state): State<Arc<Instance>>) -> Response {
    let total = lock(&state.users).len();
    axum::Json(json!({"object": "total_count", "total_count": total})).into_response()
}

async fn one(State(state): State<Arc<Instance>>, Path(id): Path<String>) -> Response {
    let user = lock(&state.users).iter().find(|u| u["id"] == id).cloned();
    match user {
        Some(user) => axum::Json(user).into_response(),
        None => clerk_error(StatusCode::NOT_FOUND, "resource_not_found", "not found"),
    }
}
