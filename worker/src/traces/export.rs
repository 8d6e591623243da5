//! Exporting the product's spans by OTLP, configured by the standard `OTEL_*` variables.
//!
//! - On only when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//!   (the exporter would otherwise send to localhost), and not turned off by
//!   `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
//! - `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`: `http/protobuf` (the default) or `grpc`; anything
//!   else is refused at start (the SDK would quietly fall back to HTTP).
//! - Read by the SDK itself: `OTEL_SERVICE_NAME` (default here `worker`),
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `_ARG` (default
//!   `parentbased_always_on`), `OTEL_BSP_*` (queue size, batch size, delay, export timeout),
//!   `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` and `_HEADERS`.
//!
//! Spans leave in batches from a bounded queue on the SDK's own thread ([`super::queue`]): a
//! collector that is slow or down costs provisioning nothing but dropped spans, counted.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanExporter,
};
use tracing::warn;

use super::queue::{Admitted, Counted, Gate};

const ENDPOINTS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
const PROTOCOLS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];
const SUPPORTED_PROTOCOLS: [&str; 2] = ["http/protobuf", "grpc"];
const QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
/// The SDK's default for [`QUEUE_SIZE`].
const DEFAULT_QUEUE_SIZE: usize = 2048;
/// The service name when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` gives one.
const DEFAULT_SERVICE_NAME: &str = "worker";

/// Why traces could not be set up as configured; the process refuses to start (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{variable}={value:?} is not a supported OTLP protocol (use http/protobuf or grpc)")]
    Protocol {
        variable: &'static str,
        value: String,
    },
    #[error("the OTLP trace exporter cannot be built: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The running export: what the log set-up layers over, and what shutdown flushes.
pub struct Export {
    provider: SdkTracerProvider,
}

impl Export {
    /// Builds the OTLP export the environment asks for; `None` when it asks for none. Must run
    /// inside the Tokio runtime (the gRPC transport's channel lives there).
    pub fn from_env() -> Result<Option<Self>, ExportError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if !wanted(env) {
            return Ok(None);
        }
        check_protocol(env)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder().build()?;
        Ok(Some(Self::with_exporter(exporter)))
    }

    /// Exports to `exporter` through the bounded, counted queue: what [`Self::from_env`] does
    /// with the OTLP exporter, and what tests do with an in-memory one.
    pub fn with_exporter<E: SpanExporter + 'static>(exporter: E) -> Self {
        let queue_size = queue_size(|name| std::env::var(name).ok());
        let admitted = Admitted::default();
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(queue_size)
            .build();
        let processor = BatchSpanProcessor::builder(Counted::new(exporter, admitted.clone()))
            .with_batch_config(batch)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Gate::new(processor, admitted, queue_size))
            .with_resource(resource())
            .build();
        Self { provider }
    }

    /// The tracer the OpenTelemetry layer creates spans with.
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("worker")
    }

    /// Sends every span queued so far, waiting for the export: for tests, which read what an
    /// in-memory exporter received.
    pub fn flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.provider.force_flush()
    }

    /// Flushes within `timeout`, then stops the exporter.
    pub fn shutdown(self, timeout: Duration) {
        if let Err(err) = self.provider.shutdown_with_timeout(timeout) {
            warn!(error = %err, "stopping the trace exporter failed; queued spans are dropped");
        }
    }
}

/// Whether the environment asks for trace export.
fn wanted(env: impl Fn(&str) -> Option<String>) -> bool {
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let no_exporter = env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    let endpoint = ENDPOINTS.iter().any(|name| env(name).is_some());
    endpoint && !disabled && !no_exporter
}

/// Refuses a protocol the exporter would not honour.
fn check_protocol(env: impl Fn(&str) -> Option<String>) -> Result<(), ExportError> {
    for variable in PROTOCOLS {
        if let Some(value) = env(variable)
            && !SUPPORTED_PROTOCOLS.contains(&value.trim())
        {
            return Err(ExportError::Protocol { variable, value });
        }
    }
    Ok(())
}

/// `OTEL_BSP_MAX_QUEUE_SIZE` as the SDK reads it (a number, else the default).
fn queue_size(env: impl Fn(&str) -> Option<String>) -> usize {
    env(QUEUE_SIZE)
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(DEFAULT_QUEUE_SIZE)
}

/// The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, the SDK's own
/// attributes), named `worker` rather than `unknown_service:worker` when nothing names it.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let service = opentelemetry::Key::new("service.name");
    let unnamed = detected
        .get(&service)
        .is_none_or(|name| name.as_str().starts_with("unknown_service"));
    match unnamed {
        true => Resource::builder()
            .with_service_name(DEFAULT_SERVICE_NAME)
            .build(),
        false => detected,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn traces_are_on_only_with_an_endpoint_and_not_turned_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let traces_endpoint = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        );
        assert!(!wanted(env(&[])));
        assert!(!wanted(env(&[("OTEL_SERVICE_NAME", "worker")])));
        assert!(wanted(env(&[endpoint])));
        assert!(wanted(env(&[traces_endpoint])));
        assert!(!wanted(env(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")])));
        assert!(!wanted(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])));
        assert!(wanted(env(&[endpoint, ("OTEL_SDK_DISABLED", "false")])));
    }

    #[test]
    fn a_protocol_the_exporter_would_not_honour_is_refused() {
        for good in ["grpc", "http/protobuf"] {
            assert!(check_protocol(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", good)])).is_ok());
        }
        let refused = check_protocol(env(&[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")]));
        let message = refused.map_err(|e| e.to_string()).unwrap_err();
        assert!(
            message.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
            "{message}"
        );
    }

    #[test]
    fn the_queue_size_is_read_as_the_sdk_reads_it() {
        assert_eq!(queue_size(env(&[])), DEFAULT_QUEUE_SIZE);
        assert_eq!(queue_size(env(&[(QUEUE_SIZE, "16")])), 16);
        assert_eq!(queue_size(env(&[(QUEUE_SIZE, "many")])), DEFAULT_QUEUE_SIZE);
    }
}
