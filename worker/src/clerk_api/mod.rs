//! Clerk's Backend API, read-only: list the instance's users page by page (cursor paging), count
//! them, and ask which of a batch of ids still exist. Requests are paced below Clerk's rate limit, a 429 waits for its `Retry-After`,
//! 5xx answers and network errors are retried with backoff, and 401/403 stop at once. The secret
//! key is sent in the `Authorization` header only, never logged or put in an error.

mod settings;

use std::collections::HashSet;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Request, StatusCode, header};
use backon::{BackoffBuilder, ExponentialBuilder};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::Mutex;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{debug, warn};
use url::Url;

use crate::domain::UserId;

pub use settings::ClerkApiSettings;

/// Most users Clerk returns in one page of `GET /v1/users`.
pub const PAGE_LIMIT: u32 = 500;

/// Most ids one `GET /v1/users?user_id=...` takes.
pub const MAX_USER_IDS: usize = 100;

/// Why a Clerk API call failed (after whatever retries it deserved).
#[derive(Debug, thiserror::Error)]
pub enum ClerkApiError {
    /// Clerk refused the secret key: retrying cannot help.
    #[error(
        "Clerk refused the secret key ({status}): check CLERK_SECRET_KEY is the instance's \
         secret key (sk_live_... or sk_test_...)"
    )]
    Unauthorized { status: StatusCode },
    /// An answer that is neither success nor retryable, or retries ran out on one.
    #[error("Clerk answered {status} to {path}")]
    Status { status: StatusCode, path: String },
    /// The request could not be sent or its answer read, after retries.
    #[error("cannot reach Clerk's API at {path}: {detail}")]
    Network { path: String, detail: String },
    /// The answer is not the documented shape.
    #[error("Clerk's answer to {path} is not the documented shape: {source}")]
    Shape {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot set up TLS for Clerk's API: {0}")]
    Tls(#[source] rustls::Error),
    /// CLERK_API_URL cannot take the API's paths.
    #[error("CLERK_API_URL cannot be a base for the API's paths")]
    BaseUrl,
}

/// A paced, retrying client of Clerk's Backend API.
pub struct ClerkApi {
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
    base: Url,
    secret_key: SecretString,
    pace: Mutex<Interval>,
    max_retries: u32,
}

#[derive(Deserialize)]
struct TotalCount {
    total_count: u64,
}

/// An answer: its status, headers and whole body (Clerk's pages are at most 500 users).
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// What one attempt asks the retry loop to do.
enum Attempt {
    Done(Response),
    /// Wait this long, then try again.
    Again(Duration, ClerkApiError),
    Fail(ClerkApiError),
}

impl ClerkApi {
    /// A client for `settings`; TLS is rustls with the ring provider.
    pub fn new(settings: &ClerkApiSettings) -> Result<Self, ClerkApiError> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(ClerkApiError::Tls)?
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new()).build(connector);
        if settings.api_url.cannot_be_a_base() {
            return Err(ClerkApiError::BaseUrl);
        }
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / settings.rate));
        pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            http,
            base: settings.api_url.clone(),
            secret_key: settings.secret_key.clone(),
            timeout: settings.timeout,
            pace: Mutex::new(pace),
            max_retries: settings.max_retries,
        })
    }

    /// `GET /v1/users/count`: how many users the instance has (sizes the progress display).
    pub async fn count_users(&self) -> Result<u64, ClerkApiError> {
        let url = self.url(&["v1", "users", "count"])?;
        let response = self.get(url).await?;
        let count: TotalCount = decode(response, "/v1/users/count")?;
        Ok(count.total_count)
    }

    /// `GET /v1/users?limit&order_by=+created_at` from `at`: one page of user objects, oldest
    /// first, left raw for the webhook parser. Walk them with [`UserPages`].
    pub async fn list_users(&self, at: PageAt<'_>) -> Result<Vec<Box<RawValue>>, ClerkApiError> {
        let mut url = self.url(&["v1", "users"])?;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("limit", &PAGE_LIMIT.to_string())
                .append_pair("order_by", "+created_at");
            match at {
                PageAt::First => {}
                PageAt::After(id) => {
                    query.append_pair("starting_after", id);
                }
                PageAt::Offset(offset) => {
                    query.append_pair("offset", &offset.to_string());
                }
            }
        }
        let response = self.get(url).await?;
        decode(response, "/v1/users")
    }

    /// Which of `ids` (at most [`MAX_USER_IDS`]) Clerk still has: one
    /// `GET /v1/users?user_id=...`, whose answer leaves out the ids it does not find. Where the
    /// API ignores the filter (it answers users not asked for), each id is asked on its own.
    pub async fn existing_users(&self, ids: &[UserId]) -> Result<HashSet<String>, ClerkApiError> {
        let mut url = self.url(&["v1", "users"])?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("limit", &MAX_USER_IDS.to_string());
            for id in ids {
                query.append_pair("user_id", id.as_ref());
            }
        }
        let response = self.get(url).await?;
        let found: Vec<Box<RawValue>> = decode(response, "/v1/users")?;
        let asked: HashSet<&str> = ids.iter().map(AsRef::as_ref).collect();
        let found: HashSet<String> = found.iter().filter_map(|raw| id_of(raw)).collect();
        if found.iter().all(|id| asked.contains(id.as_str())) {
            return Ok(found);
        }
        warn!("Clerk's API ignored the user_id filter; confirming each id on its own");
        let mut existing = HashSet::new();
        for id in ids {
            if self.user_exists(id).await? {
                existing.insert(id.as_ref().to_owned());
            }
        }
        Ok(existing)
    }

    /// `GET /v1/users/{id}`: false only for a 404 with Clerk's `resource_not_found` error (the
    /// user no longer exists); any other 404 (a proxy, a wrong CLERK_API_URL) is an error.
    pub async fn user_exists(&self, id: &UserId) -> Result<bool, ClerkApiError> {
        let url = self.url(&["v1", "users", id.as_ref()])?;
        let response = self.get(url).await?;
        if response.status != StatusCode::NOT_FOUND {
            return Ok(true);
        }
        if is_resource_not_found(&response.body) {
            return Ok(false);
        }
        Err(ClerkApiError::Status {
            status: StatusCode::NOT_FOUND,
            path: "/v1/users/{id}".to_owned(),
        })
    }

    fn url(&self, segments: &[&str]) -> Result<Url, ClerkApiError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClerkApiError::BaseUrl)?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// One paced GET with the retry policy; answers a success or a 404.
    async fn get(&self, url: Url) -> Result<Response, ClerkApiError> {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times()
            .build();
        let mut retries = 0;
        loop {
            self.pace.lock().await.tick().await;
            let sent = self.send(&url).await;
            let delay = backoff.next().unwrap_or(Duration::from_secs(30));
            match judge(sent, url.path(), delay) {
                Attempt::Done(response) => return Ok(response),
                Attempt::Again(wait, err) if retries < self.max_retries => {
                    retries += 1;
                    warn!(error = %err, retry_in = ?wait, retries, "Clerk API call failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Attempt::Again(_, err) | Attempt::Fail(err) => return Err(err),
            }
        }
    }
}

impl ClerkApi {
    /// One GET with the bearer token, read whole within the timeout; errors as text.
    async fn send(&self, url: &Url) -> Result<Response, String> {
        let request = Request::get(url.as_str())
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.secret_key.expose_secret()),
            )
            .header(
                header::USER_AGENT,
                concat!("provisioning-worker/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|err| err.to_string())?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|err| err.to_string())?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|err| format!("reading the answer: {err}"))?;
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body: body.to_bytes(),
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// Where a page of `GET /v1/users` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageAt<'a> {
    First,
    /// After the user with this id (cursor paging: nothing is skipped when users are deleted
    /// meanwhile, and each page costs Clerk the same however deep).
    After(&'a str),
    /// After this many users: only where the API ignores the cursor.
    Offset(u64),
}

/// Walks every page of `GET /v1/users`, oldest user first, with `starting_after`. Where the API
/// ignores the cursor (its answer repeats users of the previous page), or a page ends in a user
/// without an id (no cursor to give), paging goes on by offset from there. A cursor the API
/// refuses (422: its user was deleted between two pages) costs that one page by offset.
#[derive(Debug, Default)]
pub struct UserPages {
    /// Ids of the last page: an answer that repeats one ignored the cursor.
    previous: HashSet<String>,
    last_id: Option<String>,
    listed: u64,
    by_offset: bool,
    done: bool,
}

impl UserPages {
    /// The next page; None after the last one.
    pub async fn next(
        &mut self,
        api: &ClerkApi,
    ) -> Result<Option<Vec<Box<RawValue>>>, ClerkApiError> {
        if self.done {
            return Ok(None);
        }
        let mut page = match api.list_users(self.at()).await {
            Err(ClerkApiError::Status { status, .. })
                if status == StatusCode::UNPROCESSABLE_ENTITY && self.at_cursor() =>
            {
                warn!(
                    listed = self.listed,
                    "Clerk refused the cursor (its user may be gone); this page by offset"
                );
                api.list_users(PageAt::Offset(self.listed)).await?
            }
            answer => answer?,
        };
        if self.at_cursor() && self.repeats_previous(&page) {
            warn!(
                listed = self.listed,
                "Clerk's API ignored starting_after (it answered earlier users again); paging by offset"
            );
            self.by_offset = true;
            page = api.list_users(self.at()).await?;
        }
        self.take(&page);
        Ok(Some(page))
    }

    fn at(&self) -> PageAt<'_> {
        match (&self.last_id, self.by_offset) {
            (_, true) => PageAt::Offset(self.listed),
            (None, false) => PageAt::First,
            (Some(last), false) => PageAt::After(last),
        }
    }

    fn at_cursor(&self) -> bool {
        matches!(self.at(), PageAt::After(_))
    }

    fn repeats_previous(&self, page: &[Box<RawValue>]) -> bool {
        page.iter()
            .filter_map(|raw| id_of(raw))
            .any(|id| self.previous.contains(&id))
    }

    fn take(&mut self, page: &[Box<RawValue>]) {
        self.previous = page.iter().filter_map(|raw| id_of(raw)).collect();
        self.listed += page.len() as u64;
        self.done = page.len() < PAGE_LIMIT as usize;
        match page.last().and_then(|raw| id_of(raw)) {
            Some(last) => self.last_id = Some(last),
            // No id to start the next page after: the offset still says where it starts.
            None => self.by_offset = true,
        }
    }
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<String>,
}

/// The `id` of a raw user object, if it has one.
pub fn id_of(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<IdOnly>(raw.get())
        .ok()
        .and_then(|user| user.id)
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
}

/// Clerk's error body for a resource that does not exist.
fn is_resource_not_found(body: &[u8]) -> bool {
    serde_json::from_slice::<ErrorBody>(body)
        .is_ok_and(|body| body.errors.iter().any(|e| e.code == "resource_not_found"))
}

/// Decides what an answer (or a failure to get one) means.
fn judge(sent: Result<Response, String>, path: &str, backoff: Duration) -> Attempt {
    let response = match sent {
        Ok(response) => response,
        Err(detail) => {
            let path = path.to_owned();
            return Attempt::Again(backoff, ClerkApiError::Network { path, detail });
        }
    };
    let status = response.status;
    debug!(%status, path, "Clerk API answer");
    let error = ClerkApiError::Status {
        status,
        path: path.to_owned(),
    };
    match status {
        s if s.is_success() || s == StatusCode::NOT_FOUND => Attempt::Done(response),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Attempt::Fail(ClerkApiError::Unauthorized { status })
        }
        StatusCode::TOO_MANY_REQUESTS => {
            Attempt::Again(retry_after(&response).unwrap_or(backoff), error)
        }
        s if s.is_server_error() => Attempt::Again(backoff, error),
        _ => Attempt::Fail(error),
    }
}

/// `Retry-After` in seconds, as Clerk sends it, at most [`MAX_RETRY_AFTER`]: an answer must
/// not be able to park a run for hours.
fn retry_after(response: &Response) -> Option<Duration> {
    let value = response.headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    let seconds = value.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// The longest wait a 429's `Retry-After` can ask for; Clerk's windows are 10 s.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The largest answer read: a page of 500 users is a few MiB; anything far beyond is not Clerk.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

fn decode<T: serde::de::DeserializeOwned>(
    response: Response,
    path: &str,
) -> Result<T, ClerkApiError> {
    if response.status == StatusCode::NOT_FOUND {
        return Err(ClerkApiError::Status {
            status: StatusCode::NOT_FOUND,
            path: path.to_owned(),
        });
    }
    serde_json::from_slice(&response.body).map_err(|source| ClerkApiError::Shape {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn too_many_requests(retry_after: &str) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, retry_after.parse().unwrap());
        Response {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers,
            body: Bytes::new(),
        }
    }

    #[test]
    fn only_clerks_resource_not_found_body_says_a_user_is_gone() {
        let clerk = br#"{"errors":[{"message":"not found","long_message":"User not found","code":"resource_not_found"}]}"#;
        assert!(is_resource_not_found(clerk));
        for other in [
            &b"<html>404 Not Found</html>"[..],
            br#"{"errors":[{"code":"not_found_elsewhere"}]}"#,
            b"",
        ] {
            assert!(!is_resource_not_found(other));
        }
    }

    #[test]
    fn retry_after_is_taken_in_seconds_and_capped() {
        assert_eq!(
            retry_after(&too_many_requests("7")),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&too_many_requests("86400")),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_after(&too_many_requests("soon")), None);
    }
}
