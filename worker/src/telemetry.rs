//! Log and trace set-up: `RUST_LOG` filters the logs (default `info`), `LOG_FORMAT` picks JSON or
//! text, on stderr; traces go to OTLP when configured ([`crate::traces`]), and then every JSON
//! log line written inside a traced span carries its `trace_id` and `span_id`.
//!
//! No level shows a secret. One library line would: lapin traces every frame it sends, and the
//! connection's Start-Ok frame carries the SASL response, user and password (as a byte list).
//! That line is dropped whatever `RUST_LOG` says ([`shows_no_secret`]).

use std::fmt;

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::{LookupSpan, Registry};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt as format};

use crate::config::LogFormat;
use crate::traces::{self, Export};

/// Set once traces are on: only then can a log line be inside a traced span.
static TRACING: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber once, at start-up, with `export`'s layer when traces are on.
/// A second call (tests) is a no-op.
pub fn init(format: LogFormat, export: Option<&Export>) {
    let env_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logged = env_filter
        .and(filter_fn(shows_no_secret))
        .and(filter_fn(|metadata| !traces::is_product_span(metadata)));
    let logs = format::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .map_event_format(WithTraceIds)
            .with_filter(logged)
            .boxed(),
        LogFormat::Text => logs.with_filter(logged).boxed(),
    };
    // Only what the spans say: no source location, thread, target or busy/idle times, which
    // would double every span's size and its cost on the hot path; and no OpenTelemetry
    // context made current on every poll of an instrumented future (nothing here reads it: the
    // propagation takes each span's own).
    let traced = export.map(|export| {
        tracing_opentelemetry::layer()
            .with_tracer(export.tracer())
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(filter_fn(traces::is_product_span))
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(traced)
        .try_init();
    if installed.is_ok() && export.is_some() {
        TRACING.store(true, Ordering::Relaxed);
    }
}

/// False for lapin's trace line of each frame it writes (its `next_msg` field): the first frames
/// of a connection carry the credentials.
fn shows_no_secret(metadata: &Metadata<'_>) -> bool {
    let frame_trace =
        metadata.target().starts_with("lapin") && metadata.fields().field("next_msg").is_some();
    !frame_trace
}

/// A JSON event format that adds the `trace_id` and `span_id` of the traced span the line was
/// written in (none when traces are off, or outside any traced span).
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Read before formatting: the formatter holds the span's extensions while it writes.
        let Some((trace_id, span_id)) = current_trace_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.trim_end().strip_suffix('}') {
            Some(object) => writeln!(
                writer,
                "{object},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            ),
            None => writer.write_str(&line),
        }
    }
}

/// The ids of the innermost traced span around the current one, if any. Walked in the registry
/// itself: the log layer's own view leaves traced spans out.
fn current_trace_ids() -> Option<(TraceId, SpanId)> {
    if !TRACING.load(Ordering::Relaxed) {
        return None;
    }
    let current = tracing::Span::current().id()?;
    tracing::dispatcher::get_default(|dispatch| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let traced = registry
            .span(&current)?
            .scope()
            .find(|span| traces::is_product_span(span.metadata()))?
            .id();
        let context = tracing_opentelemetry::get_otel_context(&traced, dispatch)?;
        let span = context.span();
        let ids = span.span_context();
        ids.is_valid().then(|| (ids.trace_id(), ids.span_id()))
    })
}
