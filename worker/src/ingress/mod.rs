//! The webhook ingress: `POST /webhooks/clerk`, Svix-verified, answering 2xx only once the event
//! is safely in the broker. Clerk (through Svix) retries any non-2xx for about a day, so every
//! failure that a retry can fix is a 503.
//!
//! The body is verified as raw bytes, then only its `type` is read; it is published byte for
//! byte and the consumer parses it.

mod publisher;
pub mod signature;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

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
}

pub fn router(state: IngressState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/webhooks/clerk", post(receive))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Serves until `shutdown`: then stops accepting and lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
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
    #[error("the body is larger than the limit")]
    TooLarge,
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
            Self::Unreadable(_) | Self::NotJson(_) => StatusCode::BAD_REQUEST,
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::TooLarge => "body_too_large",
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
async fn receive(
    State(state): State<IngressState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let received_at_ms = Utc::now().timestamp_millis();
    let (status, event_type, body) = match accept(&state, &headers, body, received_at_ms).await {
        Ok(Accepted::Queued { event_type, id }) => {
            info!(event_id = %id, event_type = %event_type, "webhook queued");
            (
                StatusCode::ACCEPTED,
                Some(event_type),
                json!({"status": "queued", "id": id}),
            )
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
    };
    state
        .metrics
        .record_webhook(status.as_u16(), event_type.as_deref(), started.elapsed());
    (status, Json(body)).into_response()
}

async fn accept(
    state: &IngressState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    received_at_ms: i64,
) -> Result<Accepted, Refused> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Refused::TooLarge,
        _ => Refused::Unreadable(rejection.body_text()),
    })?;
    let signed = SignedHeaders::from_headers(headers)?;
    tracing::Span::current().record("event_id", signed.id.as_str());
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
