//! Traces (OpenTelemetry): one trace per sign-up, from the webhook to the database commit.
//!
//! Off unless an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, see [`export`]); then the product's spans ([`spans`],
//! the only spans the OpenTelemetry layer takes) are exported by OTLP, over HTTP/protobuf or
//! gRPC, in batches from a bounded queue whose drops are counted ([`queue`]). Off, every span
//! constructor returns a disabled span and nothing is read from or written to headers: tracing
//! costs nothing then.
//!
//! The W3C trace context travels in the AMQP message headers ([`propagation`]): the consumer's
//! span of an event's first delivery is a child of the ingress's publish; a later delivery (a
//! retry, a redelivery or a replay) starts a trace of its own with a link to the first, so one
//! trace is never stretched over hours of retries.

pub mod export;
pub mod propagation;
pub mod queue;
pub mod spans;

pub use export::{Export, ExportError};

/// The target every product span is created under; the OpenTelemetry layer takes only these,
/// and the log layer leaves them out (so logs look the same whether traces are on or off).
pub const TARGET: &str = "worker::traces";

/// Whether traces are on in this process: a caller with work to do before it builds a span
/// (reading headers) asks first, so that work costs nothing with traces off.
pub fn on() -> bool {
    tracing::span_enabled!(target: TARGET, tracing::Level::INFO)
}

/// Whether `metadata` is one of the product's trace spans.
pub fn is_product_span(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && metadata.target().starts_with(TARGET)
}
