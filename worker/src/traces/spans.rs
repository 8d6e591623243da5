//! Every span the product exports, with its attributes: the one home of their names. Attribute
//! names follow OpenTelemetry's semantic conventions (HTTP, messaging, database); values are
//! names, ids and codes only: no email, no person's name, no secret, no SQL parameter.
//!
//! With traces off these spans are disabled: built for nothing, recorded nowhere.

use opentelemetry::trace::SpanContext;
use tracing::field::Empty;
use tracing::{Span, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{TARGET, propagation};

/// The ingress's route, as `http.route` names it.
pub const WEBHOOK_ROUTE: &str = "/webhooks/clerk";
const RABBITMQ: &str = "rabbitmq";
const POSTGRESQL: &str = "postgresql";

/// One webhook request, the root of a sign-up's trace (a server span). A `traceparent` the
/// request carries is honoured only when `trusted` (`INGRESS_TRUST_TRACEPARENT`): otherwise an
/// outsider would choose our trace ids.
pub fn webhook_request(headers: &axum::http::HeaderMap, trusted: bool) -> Span {
    let span = info_span!(
        target: TARGET,
        parent: None,
        "webhook request",
        otel.name = "POST /webhooks/clerk",
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = "POST",
        http.route = WEBHOOK_ROUTE,
        url.path = WEBHOOK_ROUTE,
        network.protocol.version = "1.1",
        http.response.status_code = Empty,
        error.type = Empty,
        messaging.message.id = Empty,
        clerk.event_type = Empty,
    );
    if trusted && !span.is_disabled() {
        let _ = span.set_parent(propagation::extract_http(headers));
    }
    span
}

/// What the ingress answered: the status, and the refusal's code when it refused.
pub fn record_answer(span: &Span, status: u16, refusal: Option<&'static str>) {
    span.record("http.response.status_code", status);
    if let Some(code) = refusal {
        span.record("error.type", code);
    }
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
}

/// Checking the Svix signature of a request's body.
pub fn verify_signature() -> Span {
    info_span!(target: TARGET, "verify signature", otel.status_code = Empty, error.type = Empty)
}

/// Publishing an event to the broker, until its confirm: the context the message carries.
pub fn publish(exchange: &str, routing_key: &str, message_id: &str) -> Span {
    info_span!(
        target: TARGET,
        "publish",
        otel.name = format!("publish {exchange}").as_str(),
        otel.kind = "producer",
        otel.status_code = Empty,
        error.type = Empty,
        messaging.system = RABBITMQ,
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = exchange,
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.message.id = message_id,
    )
}

/// Where a delivery's span starts: under the publisher's span, or a trace of its own linked to
/// the context the message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lineage {
    /// The event's first delivery: a child of the span that published it.
    Child,
    /// A redelivery, a retry from a delay queue or a replay: a new trace, linked.
    Linked,
}

/// One delivery taken from `queue` to its end (a consumer span), named after the queue: a
/// retry comes back through another exchange than the event's first delivery.
pub fn delivery(
    delivery: &lapin::message::Delivery,
    queue: &str,
    lineage: Lineage,
    attempt: u32,
) -> Span {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str());
    let span = info_span!(
        target: TARGET,
        parent: None,
        "delivery",
        otel.name = format!("process {queue}").as_str(),
        otel.kind = "consumer",
        otel.status_code = Empty,
        error.type = Empty,
        messaging.system = RABBITMQ,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = delivery.exchange.as_str(),
        messaging.destination.subscription.name = queue,
        messaging.rabbitmq.destination.routing_key = delivery.routing_key.as_str(),
        messaging.rabbitmq.message.delivery_tag = delivery.delivery_tag,
        messaging.message.id = message_id,
        worker.attempt = attempt,
        clerk.user_id = Empty,
        clerk.event_type = Empty,
        worker.outcome = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let headers = delivery.properties.headers().as_ref();
    match lineage {
        Lineage::Child => {
            let _ = span.set_parent(propagation::extract(headers));
        }
        Lineage::Linked => {
            if let Some(first) = propagation::carried(headers) {
                span.add_link(first);
            }
        }
    }
    span
}

/// Names the event a delivery (or a request) carries, once parsed.
pub fn record_event(span: &Span, event_type: &str, user_id: Option<&str>) {
    span.record("clerk.event_type", event_type);
    if let Some(user_id) = user_id {
        span.record("clerk.user_id", user_id);
    }
}

/// What became of a delivery: its outcome, or the failure's reason code.
pub fn record_outcome(span: &Span, outcome: &str) {
    span.record("worker.outcome", outcome);
}

/// Marks `span` failed with a stable code (a failure reason, a refusal): never a message that
/// could quote a value.
pub fn record_error(span: &Span, code: &str) {
    span.record("error.type", code);
    span.record("otel.status_code", "error");
}

/// The attempt a delivery ended on (its span starts with the first attempt it makes).
pub fn record_attempt(span: &Span, attempt: u32) {
    span.record("worker.attempt", attempt);
}

/// One transaction for several deliveries: a trace of its own, linked to each delivery's span.
pub fn batch(delivery_spans: &[&Span]) -> Span {
    let span = info_span!(
        target: TARGET,
        parent: None,
        "provision batch",
        otel.status_code = Empty,
        error.type = Empty,
        worker.batch.size = delivery_spans.len(),
    );
    if !span.is_disabled() {
        for delivery in delivery_spans {
            span.add_link(span_context(delivery));
        }
    }
    span
}

/// `span`'s own context, for a link to it.
pub fn span_context(span: &Span) -> SpanContext {
    use opentelemetry::trace::TraceContextExt;
    span.context().span().span_context().clone()
}

/// One provisioning transaction (one event, or a batch).
pub fn transaction() -> Span {
    info_span!(
        target: TARGET,
        "transaction",
        otel.name = "provisioning transaction",
        otel.kind = "client",
        otel.status_code = Empty,
        error.type = Empty,
        db.system = POSTGRESQL,
        db.system.name = POSTGRESQL,
    )
}

/// One statement: its operation (`SELECT`, `INSERT`, ...) and a summary naming what it touches
/// (`SELECT provision_user`); never its parameters.
pub fn statement(operation: &'static str, summary: &'static str) -> Span {
    info_span!(
        target: TARGET,
        "statement",
        otel.name = summary,
        otel.kind = "client",
        otel.status_code = Empty,
        error.type = Empty,
        db.system = POSTGRESQL,
        db.system.name = POSTGRESQL,
        db.operation.name = operation,
        db.query.summary = summary,
    )
}

/// One reconcile run: a trace of its own.
pub fn reconcile_run() -> Span {
    info_span!(
        target: TARGET,
        parent: None,
        "reconcile run",
        otel.status_code = Empty,
        error.type = Empty,
    )
}

/// Replaying one dead letter: a trace of its own, linked to the trace the letter's event first
/// had when its headers carry one.
pub fn replay(message_id: &str, headers: &lapin::types::FieldTable) -> Span {
    let span = info_span!(
        target: TARGET,
        parent: None,
        "replay dead letter",
        otel.kind = "producer",
        otel.status_code = Empty,
        error.type = Empty,
        messaging.system = RABBITMQ,
        messaging.message.id = message_id,
    );
    if !span.is_disabled()
        && let Some(original) = propagation::carried(Some(headers))
    {
        span.add_link(original);
    }
    span
}
