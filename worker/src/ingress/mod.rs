//! The webhook ingress: `POST /webhooks/clerk`, Svix-verified, answering 2xx only once the event
//! is safely in the broker. Clerk (through Svix) retries any non-2xx for about a day, so every
//! failure that a retry can fix is a 503.
//!
//! The Svix headers and the timestamp are checked before the body is read, so an unsigned or
//! stale request costs no body. The body is then read within its limits ([`body`]), verified
//! as raw bytes, and only its `type` is read; it is published byte for byte and the consumer
//! parses it.
//!
//! What an unverified request can hold is bounded by the connection limit, the head and body
//! timeouts and the body memory budget; the scarce resource, a publish awaiting the broker's
//! confirm, is taken only once the signature verified: at most `INGRESS_MAX_CONCURRENCY`
//! publishes are in flight, and a verified request beyond them is refused at once (503
//! `overloaded`). A verified request also marks its connection trusted, so the connection limit
//! never closes it to make room ([`crate::http_server::trust`]). The connection-level limits
//! (head size, head, idle and write timeouts, shutdown) are [`crate::http_server`]'s.
//!
//! Refusals are counted by reason (`webhook_refused_total`); those of requests without a valid
//! signature are logged at most once per interval ([`RefusalLog`]), the others each time.

mod body;
mod publisher;
pub mod signature;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::{Instrument, Span, info, instrument, warn};

pub use crate::http_server::{ServerLimits, serve};
pub use body::{BodyLimits, BodyMemory};
pub use publisher::Publisher;
use signature::{SignatureError, SignedHeaders, Verifier};

use crate::broker::PublishError;
use crate::clerk;
use crate::http_server::Trust;
use crate::http_server::refusal_log::RefusalLog;
use crate::metrics::Metrics;
use crate::topology::header::RECEIVED_AT_MS;
use crate::traces::{propagation, spans};

/// What the handler needs, shared by every request.
#[derive(Clone)]
pub struct IngressState {
    pub verifier: Arc<Verifier>,
    pub publisher: Arc<Publisher>,
    pub publish_timeout: Duration,
    pub metrics: Metrics,
    pub body_limits: BodyLimits,
    /// From the complete head to the answer (longer: 503).
    pub request_timeout: Duration,
    /// What all bodies being read may hold together (`INGRESS_MAX_BODY_MEMORY`).
    pub body_memory: Arc<BodyMemory>,
    /// One permit per publish awaiting its confirm (`INGRESS_MAX_CONCURRENCY`); only verified
    /// requests take one.
    pub publish_slots: Arc<Semaphore>,
    /// Refusals of unverified requests, logged at most once per interval.
    pub refusal_log: Arc<RefusalLog>,
    /// Whether a request's own `traceparent` is honoured (`INGRESS_TRUST_TRACEPARENT`).
    pub trust_traceparent: bool,
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
    #[error("more webhooks are being published than the limit; retry later")]
    Overloaded,
    #[error("the request did not finish within {0:?}")]
    TimedOut(Duration),
    #[error("the body is larger than the limit")]
    TooLarge,
    #[error("the body did not arrive within {0:?}")]
    BodyTimedOut(Duration),
    #[error("the bodies being read hold all the memory they may; retry later")]
    BodyMemoryFull,
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
            Self::Overloaded | Self::TimedOut(_) | Self::BodyMemoryFull | Self::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The stable code: in the answer's body, the logs and `webhook_refused_total`'s label.
    fn as_str(&self) -> &'static str {
        match self {
            Self::Overloaded => "overloaded",
            Self::TimedOut(_) => "request_timeout",
            Self::TooLarge => "body_too_large",
            Self::BodyTimedOut(_) => "body_timeout",
            Self::BodyMemoryFull => "body_memory_full",
            Self::Unreadable(_) => "unreadable_body",
            Self::Signature(err) => err.as_str(),
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

/// One webhook, in its trace's root span.
async fn receive(State(state): State<IngressState>, request: Request) -> Response {
    let trace = spans::webhook_request(request.headers(), state.trust_traceparent);
    respond(state, request, trace.clone())
        .instrument(trace)
        .await
}

#[instrument(skip_all, fields(event_id))]
async fn respond(state: IngressState, request: Request, trace: Span) -> Response {
    let started = Instant::now();
    let mut verified = false;
    let outcome = within_deadline(&state, request, &mut verified, &trace).await;
    let (status, event_type, body) = answer(&state, outcome, verified, &trace);
    state
        .metrics
        .record_webhook(status.as_u16(), event_type.as_deref(), started.elapsed());
    (status, Json(body)).into_response()
}

/// The status, the type label and the JSON body of an outcome, logged and counted.
fn answer(
    state: &IngressState,
    outcome: Result<Accepted, Refused>,
    verified: bool,
    trace: &Span,
) -> (StatusCode, Option<String>, serde_json::Value) {
    match outcome {
        Ok(Accepted::Queued { event_type, id }) => {
            info!(event_id = %id, event_type = %event_type, "webhook queued");
            spans::record_answer(trace, StatusCode::ACCEPTED.as_u16(), None);
            let body = json!({"status": "queued", "id": id});
            (StatusCode::ACCEPTED, Some(event_type), body)
        }
        Ok(Accepted::Ignored { event_type }) => {
            info!(event_type = %event_type, "webhook type not handled; ignored");
            spans::record_answer(trace, StatusCode::OK.as_u16(), None);
            (
                StatusCode::OK,
                Some(event_type),
                json!({"status": "ignored"}),
            )
        }
        Err(refused) => {
            let status = refused.status();
            spans::record_answer(trace, status.as_u16(), Some(refused.as_str()));
            state.metrics.record_refused(refused.as_str());
            if verified {
                warn!(status = status.as_u16(), error = refused.as_str(), detail = %refused, "verified webhook refused");
            } else {
                state
                    .refusal_log
                    .refused(status.as_u16(), refused.as_str(), &refused);
            }
            let body = json!({"error": refused.as_str(), "detail": refused.to_string()});
            (status, None, body)
        }
    }
}

/// [`accept`] within the request deadline, so Svix hears our answer before its own 15 s end.
async fn within_deadline(
    state: &IngressState,
    request: Request,
    verified: &mut bool,
    trace: &Span,
) -> Result<Accepted, Refused> {
    let deadline = state.request_timeout;
    tokio::time::timeout(deadline, accept(state, request, verified, trace))
        .await
        .unwrap_or(Err(Refused::TimedOut(deadline)))
}

/// Checks, reads, verifies and publishes one webhook; sets `verified` once its signature
/// verified, and marks its connection trusted then.
async fn accept(
    state: &IngressState,
    request: Request,
    verified: &mut bool,
    trace: &Span,
) -> Result<Accepted, Refused> {
    let received_at_ms = Utc::now().timestamp_millis();
    let (parts, body) = request.into_parts();
    let signed = SignedHeaders::from_headers(&parts.headers)?;
    tracing::Span::current().record("event_id", signed.id.as_str());
    signed.check_timestamp(received_at_ms / 1000)?;
    let body = body::read_body(body, state.body_limits, &state.body_memory).await?;
    let verify = spans::verify_signature();
    let verification = verify.in_scope(|| {
        state
            .verifier
            .verify(&signed, &body.bytes, received_at_ms / 1000)
    });
    if let Err(err) = &verification {
        spans::record_error(&verify, err.as_str());
    }
    verification?;
    *verified = true;
    // Only now: an unsigned request's id is whatever its sender wrote.
    trace.record("messaging.message.id", signed.id.as_str());
    let closing = parts
        .extensions
        .get::<Trust>()
        .is_some_and(|trust| !trust.earned());
    if closing {
        // Evicted at the connection limit a moment before it verified: nothing is published
        // on a connection about to close (Svix retries).
        return Err(Refused::Overloaded);
    }
    let EventType { event_type } =
        serde_json::from_slice(&body.bytes).map_err(|err| Refused::NotJson(err.to_string()))?;
    trace.record("clerk.event_type", event_type.as_str());
    if !clerk::is_supported(&event_type) {
        return Ok(Accepted::Ignored { event_type });
    }
    // Held until the confirm; none left means refused at once (Svix retries).
    let _slot = state
        .publish_slots
        .try_acquire()
        .map_err(|_| Refused::Overloaded)?;
    let publish = spans::publish(state.publisher.exchange(), &event_type, &signed.id);
    let properties = properties(&signed, received_at_ms, &publish);
    let started = Instant::now();
    let published = state
        .publisher
        .publish(&event_type, &body.bytes, properties, state.publish_timeout)
        .instrument(publish.clone())
        .await;
    state.metrics.record_publish_confirm(started.elapsed());
    if let Err(err) = &published {
        spans::record_error(&publish, err.as_str());
    }
    published?;
    Ok(Accepted::Queued {
        event_type,
        id: signed.id,
    })
}

/// Persistent JSON with the Svix id as message id, so every hop can name the event, and the
/// trace context of `publish`, so the consumer's span continues its trace.
fn properties(signed: &SignedHeaders, received_at_ms: i64, publish: &Span) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        RECEIVED_AT_MS.into(),
        AMQPValue::LongLongInt(received_at_ms),
    );
    propagation::inject(publish, &mut headers);
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(signed.id.as_str().into())
        .with_timestamp(u64::try_from(received_at_ms / 1000).unwrap_or_default())
        .with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_public_status_and_code() {
        let deadline = Duration::from_secs(1);
        let cases = [
            (Refused::Overloaded, 503, "overloaded"),
            (Refused::TimedOut(deadline), 503, "request_timeout"),
            (Refused::TooLarge, 413, "body_too_large"),
            (Refused::BodyTimedOut(deadline), 408, "body_timeout"),
            (Refused::BodyMemoryFull, 503, "body_memory_full"),
            (Refused::Unreadable(String::new()), 400, "unreadable_body"),
            (Refused::NotJson(String::new()), 400, "invalid_payload"),
            (
                Refused::Unavailable(PublishError::NotConfirmMode),
                503,
                "broker_unavailable",
            ),
        ];
        for (refused, status, code) in cases {
            assert_eq!(
                (refused.status().as_u16(), refused.as_str()),
                (status, code)
            );
        }
    }
}
