//! Traces as the tests read them: an OTLP receiver of their own that speaks HTTP/protobuf
//! (`POST /v1/traces`) and gRPC (`TraceService/Export`) on one port, a collector that accepts
//! connections and never answers, and one shape for a span whether it came over OTLP or from an
//! in-memory exporter.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use tokio::net::TcpListener;

/// A finished span, as a test asserts on it.
#[derive(Clone, Debug)]
pub struct Span {
    /// The exporting process's `service.name`.
    pub service: String,
    pub name: String,
    /// `server`, `client`, `producer`, `consumer` or `internal`.
    pub kind: &'static str,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Every attribute's value, as text.
    pub attributes: BTreeMap<String, String>,
    /// (trace id, span id) of each linked span.
    pub links: Vec<(String, String)>,
    /// `error` when the span says it failed.
    pub status: &'static str,
}

impl Span {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }
}

/// Spans of a finished in-memory export, in the same shape.
pub fn from_sdk(spans: Vec<opentelemetry_sdk::trace::SpanData>) -> Vec<Span> {
    use opentelemetry::trace::{SpanKind, Status};
    spans
        .into_iter()
        .map(|span| {
            let parent = span.parent_span_id;
            Span {
                service: String::new(),
                name: span.name.into_owned(),
                kind: match span.span_kind {
                    SpanKind::Server => "server",
                    SpanKind::Client => "client",
                    SpanKind::Producer => "producer",
                    SpanKind::Consumer => "consumer",
                    SpanKind::Internal => "internal",
                },
                trace_id: span.span_context.trace_id().to_string(),
                span_id: span.span_context.span_id().to_string(),
                parent_span_id: match parent == opentelemetry::trace::SpanId::INVALID {
                    true => String::new(),
                    false => parent.to_string(),
                },
                attributes: span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                    .collect(),
                links: span
                    .links
                    .iter()
                    .map(|link| {
                        let context = &link.span_context;
                        (
                            context.trace_id().to_string(),
                            context.span_id().to_string(),
                        )
                    })
                    .collect(),
                status: match span.status {
                    Status::Error { .. } => "error",
                    _ => "unset",
                },
            }
        })
        .collect()
}

/// The spans of one export request.
fn from_otlp(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default();
        let service = attributes(&resource.attributes)
            .remove("service.name")
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                spans.push(Span {
                    service: service.clone(),
                    kind: match span.kind {
                        2 => "server",
                        3 => "client",
                        4 => "producer",
                        5 => "consumer",
                        _ => "internal",
                    },
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
                        .collect(),
                    status: match span.status.map(|status| status.code) {
                        Some(2) => "error",
                        _ => "unset",
                    },
                });
            }
        }
    }
    spans
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(n)) => n.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a receiver has been sent so far.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    pub fn spans(&self) -> Vec<Span> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn extend(&self, spans: Vec<Span>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(spans);
    }
}

/// An OTLP receiver on a port of its own: HTTP/protobuf and gRPC on the same address.
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("its address");
        let received = Received::default();
        let grpc =
            tonic::service::Routes::new(TraceServiceServer::new(GrpcReceiver(received.clone())))
                .into_axum_router();
        let app = axum::Router::new()
            .route("/v1/traces", post(receive_http))
            .with_state(received.clone())
            .merge(grpc);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            received,
            task,
        }
    }

    /// The endpoint as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive_http(State(received): State<Received>, body: Bytes) -> StatusCode {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            received.extend(from_otlp(request));
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

struct GrpcReceiver(Received);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.extend(from_otlp(request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A collector that accepts connections and never answers (a hung process, a black-holed
/// port): exports to it wait for their timeout.
pub struct SilentCollector {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SilentCollector {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the silent collector");
        let addr = listener.local_addr().expect("its address");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Self { addr, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SilentCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The spans of the trace whose root is the webhook request for `svix_id`, once `expected`
/// of them arrived (or whatever arrived by `timeout`).
pub async fn trace_of(
    spans: impl Fn() -> Vec<Span>,
    svix_id: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Span> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let all = spans();
        let trace = all
            .iter()
            .find(|span| {
                span.kind == "server" && span.attribute("messaging.message.id") == Some(svix_id)
            })
            .map(|root| root.trace_id.clone());
        let of_trace: Vec<Span> = match trace {
            Some(trace) => all
                .into_iter()
                .filter(|span| span.trace_id == trace)
                .collect(),
            None => Vec::new(),
        };
        if of_trace.len() >= expected || tokio::time::Instant::now() >= deadline {
            return of_trace;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The one span of `spans` named `name`; fails the test, listing them, otherwise.
pub fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|span| span.name == name).collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "{} spans named {name:?} among {:?}",
            found.len(),
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        ),
    }
}

/// Fails the test when a span attribute holds one of `secrets` (an email, a name, a secret).
pub fn assert_no_attribute_holds(spans: &[Span], secrets: &[&str]) {
    for span in spans {
        for (name, value) in &span.attributes {
            for secret in secrets {
                assert!(
                    !value.contains(secret),
                    "span {:?} attribute {name} holds {secret:?}",
                    span.name
                );
            }
        }
    }
}
