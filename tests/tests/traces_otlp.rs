//! Traces exported by the real OTLP exporter from `worker` processes to a receiver the test runs:
//! a sign-up's trace arrives whole from two processes (`worker ingress`, `worker consume`) over
//! HTTP/protobuf and over gRPC, and their JSON logs carry its ids; a collector that never answers
//! changes nothing for provisioning, its drops are counted, and SIGTERM still ends the process
//! within its bound; a protocol the exporter would not honour is refused at start.

use std::time::{Duration, Instant};

use integration_tests::clerk::UserEvent;
use integration_tests::eventually;
use integration_tests::ops::{OpsClient, series};
use integration_tests::process::WorkerProcess;
use integration_tests::stack::Stack;
use integration_tests::traces::{Receiver, SilentCollector, named, trace_of};
use integration_tests::webhook::{SECRET, Webhook};
use worker::metrics;

const WORKER: &str = env!("CARGO_BIN_EXE_worker-under-test");
const WAIT: Duration = Duration::from_secs(30);

/// The settings that turn traces on towards `endpoint`, exported every 100 ms.
fn traced<'a>(endpoint: &'a str, protocol: &'a str) -> [(&'static str, &'a str); 3] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]
}

async fn whole_trace_from_two_processes(protocol: &str) {
    let receiver = Receiver::start().await;
    let stack = Stack::new().await;
    let endpoint = receiver.endpoint();
    let otel = traced(&endpoint, protocol);
    let ingress_env = [
        &otel[..],
        &[
            ("OTEL_SERVICE_NAME", "ingress"),
            ("CLERK_WEBHOOK_SECRET", SECRET),
        ],
    ]
    .concat();
    let ingress = stack.spawn(WORKER, &["ingress"], &ingress_env).await;
    let consumer_env = [&otel[..], &[("OTEL_SERVICE_NAME", "consumer")]].concat();
    let consumer = stack.spawn(WORKER, &["consume"], &consumer_env).await;

    let user = UserEvent::created("user_2otlp", "otlp.person@example.com", Some("otlp_name"));
    let webhook = Webhook::signed(SECRET, &user.body());
    assert_eq!(webhook.post(ingress.ingress_addr).await.0, 202);
    let spans = trace_of(|| receiver.received.spans(), &webhook.id, 7, WAIT).await;

    let queue = &stack.broker.topology.queue;
    let request = named(&spans, "POST /webhooks/clerk");
    let publish = named(
        &spans,
        &format!("publish {}", stack.broker.topology.exchange),
    );
    let process = named(&spans, &format!("process {queue}"));
    let statement = named(&spans, "SELECT provision_user");
    named(&spans, "verify signature");
    named(&spans, "provisioning transaction");
    assert_eq!(
        (request.service.as_str(), publish.service.as_str()),
        ("ingress", "ingress")
    );
    assert_eq!(
        (process.service.as_str(), statement.service.as_str()),
        ("consumer", "consumer")
    );
    assert_eq!(
        process.parent_span_id, publish.span_id,
        "across the broker, one trace"
    );
    assert_eq!(process.attribute("worker.outcome"), Some("created"));

    let trace_ids = |logs: String, message: &str| -> Option<(String, String)> {
        let line = logs.lines().find(|line| line.contains(message))?;
        let line: serde_json::Value = serde_json::from_str(line).ok()?;
        Some((
            line["trace_id"].as_str()?.to_owned(),
            line["span_id"].as_str()?.to_owned(),
        ))
    };
    assert_eq!(
        trace_ids(consumer.logs(), "WORKSPACE_CREATED"),
        Some((process.trace_id.clone(), process.span_id.clone())),
        "the consumer's log line names its span"
    );
    assert_eq!(
        trace_ids(ingress.logs(), "webhook queued"),
        Some((request.trace_id.clone(), request.span_id.clone())),
        "the ingress's log line names its span"
    );
}

#[tokio::test]
async fn a_trace_arrives_whole_from_two_processes_over_http_protobuf() {
    whole_trace_from_two_processes("http/protobuf").await;
}

#[tokio::test]
async fn a_trace_arrives_whole_from_two_processes_over_grpc() {
    whole_trace_from_two_processes("grpc").await;
}

#[tokio::test]
async fn a_collector_that_never_answers_changes_nothing_for_provisioning() {
    let collector = SilentCollector::start().await;
    let stack = Stack::new().await;
    let endpoint = collector.endpoint();
    let env = [
        &traced(&endpoint, "http/protobuf")[..],
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "300"),
            ("CLERK_WEBHOOK_SECRET", SECRET),
            ("SHUTDOWN_GRACE_PERIOD", "2s"),
        ],
    ]
    .concat();
    let mut service = stack.spawn(WORKER, &["run"], &env).await;
    for i in 0..40 {
        let user = UserEvent::created(
            &format!("user_2silent{i}"),
            &format!("silent{i}@example.com"),
            None,
        );
        let (status, body) = Webhook::signed(SECRET, &user.body())
            .post(service.ingress_addr)
            .await;
        assert_eq!(status, 202, "{body}");
    }
    eventually("40 workspaces", WAIT, || async {
        stack.workspaces().await == 40
    })
    .await;

    let ops = OpsClient::new(service.ops_addr());
    for reason in ["queue_full", "export_failed"] {
        let dropped = series(metrics::TRACE_SPANS_DROPPED, &[("reason", reason)]);
        eventually(&format!("spans dropped: {reason}"), WAIT, || async {
            ops.metric(&dropped).await.unwrap_or_default() > 0.0
        })
        .await;
    }

    let stopping = Instant::now();
    service.terminate();
    let status = service.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}: {}", service.logs());
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopped in {:?} with a collector that never answers (grace 2 s)",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn a_protocol_the_exporter_would_not_honour_is_refused_at_start() {
    let stack = Stack::new().await;
    let env = stack.env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("CLERK_WEBHOOK_SECRET", SECRET),
    ]);
    let mut process = WorkerProcess::start(WORKER, &["run"], &env);
    let status = process.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{}", process.logs());
    assert!(
        process.logs().contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
        "{}",
        process.logs()
    );
}
