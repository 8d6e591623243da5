//! The W3C trace context (`traceparent`, `tracestate`) in AMQP message headers and HTTP
//! requests. The propagator is set here, explicitly: OpenTelemetry's global one does nothing
//! until a process installs one.

use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes `span`'s trace context into `headers`; nothing when the span is not traced.
pub fn inject(span: &Span, headers: &mut FieldTable) {
    if span.is_disabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// The trace context `headers` carry; an empty context when they carry none (or a bad one).
pub fn extract(headers: Option<&FieldTable>) -> Context {
    match headers {
        Some(headers) => TraceContextPropagator::new().extract(&HeaderExtractor(headers)),
        None => Context::new(),
    }
}

/// The span context `headers` carry, if a valid one.
pub fn carried(headers: Option<&FieldTable>) -> Option<SpanContext> {
    let context = extract(headers);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// The trace context an HTTP request carries.
pub fn extract_http(headers: &axum::http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers))
}

struct HeaderInjector<'a>(&'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.into(), AMQPValue::LongString(value.into_bytes().into()));
    }
}

struct HeaderExtractor<'a>(&'a FieldTable);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
            AMQPValue::ShortString(value) => Some(value.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|key| key.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    #[test]
    fn a_context_written_into_headers_reads_back_the_same() {
        let sent = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        );
        let mut headers = FieldTable::default();
        let context = Context::new().with_remote_span_context(sent.clone());
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut headers));
        assert!(headers.inner().contains_key("traceparent"));
        let read = carried(Some(&headers)).unwrap();
        assert_eq!(
            (read.trace_id(), read.span_id(), read.trace_flags()),
            (sent.trace_id(), sent.span_id(), sent.trace_flags())
        );
        assert_eq!(read.trace_state().header(), "vendor=value");
    }

    #[test]
    fn headers_without_a_valid_context_carry_none() {
        assert!(carried(None).is_none());
        let mut headers = FieldTable::default();
        assert!(carried(Some(&headers)).is_none());
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString("garbage".into()),
        );
        assert!(carried(Some(&headers)).is_none());
        headers.insert("traceparent".into(), AMQPValue::LongLongInt(7));
        assert!(carried(Some(&headers)).is_none());
    }
}
