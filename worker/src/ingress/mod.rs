//! The webhook ingress: `POST /webhooks/clerk`, Svix-verified, answering 2xx only once the event
//! is safely in the broker. Clerk (through Svix) retries any non-2xx for about a day, so every
//! failure that a retry can fix is a 503.
//!
//! The Svix headers and the timestamp are checked before the body is read, so an unsigned or
//! stale request costs no body. The body is then read within a size and a time limit, verified
//! as raw bytes, and only its `type` is read; it is published byte for byte and the consumer
//! parses it. At most `max_concurrency` requests are in progress; more are refused at once.
//! The connection-level limits (head size, head and idle timeouts, shutdown) are [`server`]'s.

mod publisher;
pub mod signature;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::{info, instrument, warn};

pub use crate::http_server::{ServerLimits, serve};
pub use publisher::Publisher;
use signature::{SignatureError, SignedHeaders, Verifier};

use crate::broker::PublishError;
use crate::clerk;
use crate::metrics::Metrics;
use crate::topology::header::RECEIVED_AT_MS;

/// What the handler needs, shared by every request.
#[derive(Clone)]
pub struct IngressState {
    pub verifier: Arc<Verifier>,
    pub publisher: Arc<Publisher>,
    pub publish_timeout: Duration,
    pub metrics: Metrics,
    pub limits: RequestLimits,
    /// One permit per request in progress (`INGRESS_MAX_CONCURRENCY`).
    pub slots: Arc<Semaphore>,
}

/// The per-request limits (`INGRESS_*` settings).
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Largest body in bytes (larger: 413).
    pub max_body: usize,
    /// From the complete head to the whole body (longer: 408).
    pub body_timeout: Duration,
    /// From the complete head to the answer (longer: 503).
    pub request_timeout: Duration,
}

pub fn router(state: IngressState) -> Router {
    Router::new()
        .route("/webhooks/clerk", post(receive))
        .with_state(state)
}

/// A request that did well.
enum Accepted {
    /// In the broker, confirmed.
    Queued { event_type: String, id: String },
    /// A type the worker does not handle: answered 2xx so Clerk stops retrying, not published.
    Ignored { event_type: String },
}

/// Why a request was refused; each maps to one status and a stable code.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("more webhook requests are in progress than the limit; retry later")]
    Overloaded,
    #[error("the request did not finish within {0:?}")]
    TimedOut(Duration),
    #[error("the body is larger than the limit")]
    TooLarge,
    #[error("the body did not arrive within {0:?}")]
    BodyTimedOut(Duration),
    #[error("the body could not be read: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the event could not be queued: {0}")]
    Unavailable(#[from] PublishError),
}

impl Refused {
    fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Unreadable(_) | Self::NotJson(_) => StatusCode::BAD_REQUEST,
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::Overloaded | Self::TimedOut(_) | Self::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Overloaded => "overloaded",
            Self::TimedOut(_) => "request_timeout",
            Self::TooLarge => "body_too_large",
            Self::BodyTimedOut(_) => "body_timeout",
            Self::Unreadable(_) => "unreadable_body",
            Self::Signature(err) => err.code(),
            Self::NotJson(_) => "invalid_payload",
            Self::Unavailable(_) => "broker_unavailable",
        }
    }
}

/// Only the field routing needs; the rest of the body is the consumer's business.
#[derive(Deserialize)]
struct EventType {
    #[serde(rename = "type")]
    event_type: String,
}

#[instrument(skip_all, fields(event_id))]
async fn receive(State(state): State<IngressState>, request: Request) -> Response {
    let started = Instant::now();
    // Held until the answer is ready; none left means refused at once, body unread.
    let outcome = match state.slots.clone().try_acquire_owned() {
        Ok(_slot) => within_deadline(&state, request).await,
        Err(_) => Err(Refused::Overloaded),
    };
    let (status, event_type, body) = answer(outcome);
    state
        .metrics
        .record_webhook(status.as_u16(), event_type.as_deref(), started.elapsed());
    (status, Json(body)).into_response()
}

/// The status, the type label and the JSON body of an outcome, logged.
fn answer(outcome: Result<Accepted, Refused>) -> (StatusCode, Option<String>, serde_json::Value) {
    match outcome {
        Ok(Accepted::Queued { event_type, id }) => {
            info!(event_id = %id, event_type = %event_type, "webhook queued");
            let body = json!({"status": "queued", "id": id});
            (StatusCode::ACCEPTED, Some(event_type), body)
        }
        Ok(Accepted::Ignored { event_type }) => {
            info!(event_type = %event_type, "webhook type not handled; ignored");
            (
                StatusCode::OK,
                Some(event_type),
                json!({"status": "ignored"}),
            )
        }
        Err(refused) => {
            warn!(status = refused.status().as_u16(), error = refused.code(), detail = %refused, "webhook refused");
            let body = json!({"error": refused.code(), "detail": refused.to_string()});
            (refused.status(), None, body)
        }
    }
}

/// [`accept`] within the request deadline, so Svix hears our answer before its own 15 s end.
async fn within_deadline(state: &IngressState, request: Request) -> Result<Accepted, Refused> {
    let deadline = state.limits.request_timeout;
    tokio::time::timeout(deadline, accept(state, request))
        .await
        .unwrap_or(Err(Refused::TimedOut(deadline)))
}

async fn accept(state: &IngressState, request: Request) -> Result<Accepted, Refused> {
    let received_at_ms = Utc::now().timestamp_millis();
    let (parts, body) = request.into_parts();
    let signed = SignedHeaders::from_headers(&parts.headers)?;
    tracing::Span::current().record("event_id", signed.id.as_str());
    signed.check_timestamp(received_at_ms / 1000)?;
    let body = read_body(body, &state.limits).await?;
    state
        .verifier
        .verify(&signed, &body, received_at_ms / 1000)?;
    let EventType { event_type } =
        serde_json::from_slice(&body).map_err(|err| Refused::NotJson(err.to_string()))?;
    if !clerk::is_supported(&event_type) {
        return Ok(Accepted::Ignored { event_type });
    }
    let properties = properties(&signed, received_at_ms);
    let started = Instant::now();
    let published = state
        .publisher
        .publish(&event_type, &body, properties, state.publish_timeout)
        .await;
    state.metrics.record_publish_confirm(started.elapsed());
    published?;
    Ok(Accepted::Queued {
        event_type,
        id: signed.id,
    })
}

/// The whole body, at most `max_body` bytes and within `body_timeout`. A declared length over
/// the limit is refused before a byte of the body is read.
async fn read_body(body: Body, limits: &RequestLimits) -> Result<Bytes, Refused> {
    let max = limits.max_body;
    if body.size_hint().lower() > u64::try_from(max).unwrap_or(u64::MAX) {
        return Err(Refused::TooLarge);
    }
    let collected = tokio::time::timeout(limits.body_timeout, Limited::new(body, max).collect())
        .await
        .map_err(|_| Refused::BodyTimedOut(limits.body_timeout))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(Refused::TooLarge),
        Err(err) => Err(Refused::Unreadable(err.to_string())),
    }
}

/// Persistent JSON with the Svix id as message id, so every hop can name the event.
fn properties(signed: &SignedHeaders, received_at_ms: i64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        RECEIVED_AT_MS.into(),
        AMQPValue::LongLongInt(received_at_ms),
    );
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(signed.id.as_str().into())
        .with_timestamp(u64::try_from(received_at_ms / 1000).unwrap_or_default())
        .with_headers(headers)
}

#[cfg(test)]
mod tests {
    use futures::{StreamExt, stream};

    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_body: 16,
        body_timeout: Duration::from_millis(200),
        request_timeout: Duration::from_secs(10),
    };

    /// A body that sends `first` and then nothing, ever.
    fn stalled(first: &'static [u8]) -> Body {
        let chunks = stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(first))])
            .chain(stream::pending());
        Body::from_stream(chunks)
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let body = read_body(Body::from("{\"type\":\"x\"}"), &LIMITS).await;
        assert_eq!(body.unwrap(), Bytes::from_static(b"{\"type\":\"x\"}"));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_too_large_declared_or_streamed() {
        let declared = Body::from(vec![b'a'; 17]);
        assert!(matches!(
            read_body(declared, &LIMITS).await,
            Err(Refused::TooLarge)
        ));
        let chunks = stream::iter(
            [b"0123456789", b"0123456789"]
                .map(|chunk| Ok::<_, std::io::Error>(Bytes::from_static(chunk))),
        );
        assert!(matches!(
            read_body(Body::from_stream(chunks), &LIMITS).await,
            Err(Refused::TooLarge)
        ));
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_a_body_timeout() {
        let read = read_body(stalled(b"{\"ty"), &LIMITS).await;
        assert!(matches!(read, Err(Refused::BodyTimedOut(_))));
    }

    #[test]
    fn every_refusal_has_its_public_status_and_code() {
        let cases = [
            (Refused::Overloaded, 503, "overloaded"),
            (
                Refused::TimedOut(LIMITS.request_timeout),
                503,
                "request_timeout",
            ),
            (Refused::TooLarge, 413, "body_too_large"),
            (
                Refused::BodyTimedOut(LIMITS.body_timeout),
                408,
                "body_timeout",
            ),
            (Refused::Unreadable(String::new()), 400, "unreadable_body"),
            (Refused::NotJson(String::new()), 400, "invalid_payload"),
            (
                Refused::Unavailable(PublishError::NotConfirmMode),
                503,
                "broker_unavailable",
            ),
        ];
        for (refused, status, code) in cases {
            assert_eq!((refused.status().as_u16(), refused.code()), (status, code));
        }
    }
}
