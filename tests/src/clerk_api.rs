//! A local stand-in for Clerk's Backend API, speaking exactly its documented shape for the calls
//! `worker reconcile` makes: `GET /v1/users` (limit, offset, `order_by=+created_at`; a JSON array
//! of user objects), `GET /v1/users/count`, `GET /v1/users/{id}` (404 when unknown), the bearer
//! check (401), and, on request, a 429 with `Retry-After` or a 500 on a chosen request.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
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

async fn list(
    State(state): State<Arc<Instance>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let number = |key: &str, default: usize| {
        query
            .get(key)
            .map_or(Ok(default), |v| v.parse::<usize>().map_err(|_| ()))
    };
    let (Ok(limit), Ok(offset)) = (number("limit", 10), number("offset", 0)) else {
        return clerk_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "form_param_format_invalid",
            "bad number",
        );
    };
    if !(1..=500).contains(&limit) || query.get("order_by").is_some_and(|o| o != "+created_at") {
        return clerk_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "form_param_value_invalid",
            "unsupported",
        );
    }
    let unlisted = lock(&state.unlisted).clone();
    let page: Vec<Value> = lock(&state.users)
        .iter()
        .filter(|u| !unlisted.contains(u["id"].as_str().unwrap_or_default()))
        .skip(offset)
        .take(limit)
        .cloned()
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
