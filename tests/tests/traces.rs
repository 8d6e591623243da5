//! One trace per sign-up, read from an in-memory exporter behind the product's own export queue:
//! a signed webhook through the in-process application is one trace from the request to the
//! statement that provisioned it; a retried event and a replayed dead letter are traces of their
//! own, linked to the first; no span attribute holds an email, a name or a secret.
//!
//! This binary installs the process's subscriber with traces on, so it holds only these tests.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::clerk::UserEvent;
use integration_tests::clerk_api::FakeClerk;
use integration_tests::stack::Stack;
use integration_tests::traces::{Span, assert_no_attribute_holds, from_sdk, named, trace_of};
use integration_tests::webhook::{SECRET, Webhook};
use integration_tests::{dead_letters, eventually};
use opentelemetry_sdk::trace::InMemorySpanExporter;
use tokio_util::sync::CancellationToken;
use worker::config::LogFormat;
use worker::db::Pool;
use worker::dead_letter::store::{Actor, Source};
use worker::dead_letter::{Filter, ReplayPlan};
use worker::traces::Export;

static TRACES: OnceLock<(InMemorySpanExporter, Export)> = OnceLock::new();

/// Every span finished so far in this process.
fn finished() -> Vec<Span> {
    let (exporter, export) = TRACES.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let export = Export::with_exporter(exporter.clone());
        worker::telemetry::init(LogFormat::Json, Some(&export));
        (exporter, export)
    });
    let _ = export.flush();
    from_sdk(exporter.get_finished_spans().unwrap_or_default())
}

const WAIT: Duration = Duration::from_secs(30);

/// Spans of `svix_id`'s event outside the trace `first_trace`, once `at_least` of them
/// satisfy `done`.
async fn later_spans(
    svix_id: &str,
    first_trace: &str,
    name: &str,
    done: impl Fn(&[Span]) -> bool,
) -> Vec<Span> {
    let mut found = Vec::new();
    eventually("the later spans", WAIT, || {
        found = finished()
            .into_iter()
            .filter(|span| {
                span.name == name
                    && span.trace_id != first_trace
                    && (span.attribute("messaging.message.id") == Some(svix_id)
                        || name == "replay dead letter")
            })
            .collect();
        let ready = done(&found);
        async move { ready }
    })
    .await;
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_up_is_one_trace_from_the_webhook_to_the_statement_that_provisioned_it() {
    finished();
    let stack = Stack::new().await;
    let app = stack
        .start(&["run"], &[("CLERK_WEBHOOK_SECRET", SECRET)])
        .await;
    let mut user = UserEvent::created(
        "user_2traced",
        "marguerite.secret@example.com",
        Some("m_hidden"),
    );
    user.first_name = Some("Marguerite".to_owned());
    user.last_name = Some("Yourcenar".to_owned());
    let webhook = Webhook::signed(SECRET, &user.body());
    assert_eq!(webhook.post(app.ingress_addr).await.0, 202);

    let spans = trace_of(finished, &webhook.id, 6, WAIT).await;
    let exchange = &stack.broker.topology.exchange;
    let request = named(&spans, "POST /webhooks/clerk");
    let verify = named(&spans, "verify signature");
    let publish = named(&spans, &format!("publish {exchange}"));
    let process = named(&spans, &format!("process {}", stack.broker.topology.queue));
    let transaction = named(&spans, "provisioning transaction");
    let statement = named(&spans, "SELECT provision_user");

    assert!(request.is_root(), "the request starts the trace");
    assert_eq!(request.kind, "server");
    assert_eq!(request.attribute("http.request.method"), Some("POST"));
    assert_eq!(request.attribute("http.route"), Some("/webhooks/clerk"));
    assert_eq!(request.attribute("http.response.status_code"), Some("202"));
    assert_eq!(
        request.attribute("messaging.message.id"),
        Some(webhook.id.as_str())
    );
    for child in [verify, publish] {
        assert_eq!(
            child.parent_span_id, request.span_id,
            "{} under the request",
            child.name
        );
    }
    assert_eq!(publish.kind, "producer");
    assert_eq!(process.kind, "consumer");
    assert_eq!(
        process.parent_span_id, publish.span_id,
        "the delivery continues the publish"
    );
    assert_eq!(transaction.parent_span_id, process.span_id);
    assert_eq!(statement.parent_span_id, transaction.span_id);
    assert_eq!(statement.kind, "client");
    for messaging in [publish, process] {
        assert_eq!(messaging.attribute("messaging.system"), Some("rabbitmq"));
        assert_eq!(
            messaging.attribute("messaging.destination.name"),
            Some(exchange.as_str())
        );
        assert_eq!(
            messaging.attribute("messaging.message.id"),
            Some(webhook.id.as_str())
        );
    }
    assert_eq!(process.attribute("clerk.user_id"), Some("user_2traced"));
    assert_eq!(process.attribute("worker.attempt"), Some("1"));
    assert_eq!(process.attribute("worker.outcome"), Some("created"));
    for database in [transaction, statement] {
        assert_eq!(database.attribute("db.system"), Some("postgresql"));
    }
    assert_eq!(statement.attribute("db.operation.name"), Some("SELECT"));
    assert_no_attribute_holds(
        &spans,
        &[
            "marguerite.secret",
            "m_hidden",
            "Marguerite",
            "Yourcenar",
            SECRET,
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_event_and_its_replay_are_traces_of_their_own_linked_to_the_first() {
    finished();
    let stack = Stack::new().await;
    stack
        .db
        .execute("INSERT INTO users (id, email, username) VALUES ('user_2holder', 'held@example.com', 'holder')")
        .await;
    let app = stack
        .start(
            &["run"],
            &[
                ("CLERK_WEBHOOK_SECRET", SECRET),
                ("CONFLICT_RETRY_WINDOW", "1s"),
                ("RETRY_INITIAL_DELAY", "20ms"),
                ("RETRY_MAX_DELAY", "500ms"),
            ],
        )
        .await;
    let claimant = UserEvent::created("user_2claimant", "held@example.com", Some("claimant"));
    let webhook = Webhook::signed(SECRET, &claimant.body());
    assert_eq!(webhook.post(app.ingress_addr).await.0, 202);
    dead_letters::stored(&stack.db, 1).await;

    let first = trace_of(finished, &webhook.id, 6, WAIT).await;
    let exchange = &stack.broker.topology.exchange;
    let publish = named(&first, &format!("publish {exchange}"));
    let deferred = named(&first, &format!("process {}", stack.broker.topology.queue));
    assert_eq!(deferred.attribute("worker.outcome"), Some("deferred"));
    assert_eq!(deferred.attribute("error.type"), Some("email_conflict"));
    assert_eq!(deferred.status, "error");
    let origin = (publish.trace_id.clone(), publish.span_id.clone());

    let process = format!("process {}", stack.broker.topology.queue);
    let retries = later_spans(&webhook.id, &publish.trace_id, &process, |spans| {
        spans
            .iter()
            .any(|span| span.attribute("worker.outcome") == Some("dead_lettered"))
    })
    .await;
    for retry in &retries {
        assert!(retry.is_root(), "a retry starts a trace of its own");
        assert_eq!(
            retry.links,
            std::slice::from_ref(&origin),
            "a retry links to the publish"
        );
        let attempt: u32 = retry.attribute("worker.attempt").unwrap().parse().unwrap();
        assert!(attempt >= 2, "a retry is attempt {attempt}");
    }

    stack
        .db
        .execute("UPDATE users SET email = 'moved@example.com' WHERE id = 'user_2holder'")
        .await;
    let plan = ReplayPlan {
        filter: Filter {
            reason: Some("email_conflict".to_owned()),
            ..Filter::open()
        },
        dry_run: false,
        actor: Actor {
            name: "tester".to_owned(),
            source: Source::Cli,
        },
    };
    let pool = Pool::from(stack.db.conn.clone());
    let replayed = worker::dead_letter::replay(
        &stack.broker.settings,
        &pool,
        &plan,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(replayed.replayed, 1);
    eventually("the replayed user", WAIT, || async {
        stack.users().await == 2
    })
    .await;

    let replay = later_spans(
        &webhook.id,
        &publish.trace_id,
        "replay dead letter",
        |spans| spans.iter().any(|span| span.links.contains(&origin)),
    )
    .await;
    assert!(
        replay.iter().all(Span::is_root),
        "a replay is a trace of its own"
    );
    let provisioned = later_spans(&webhook.id, &publish.trace_id, &process, |spans| {
        spans
            .iter()
            .any(|span| span.attribute("worker.outcome") == Some("created"))
    })
    .await;
    let replayed_delivery = provisioned
        .iter()
        .find(|span| span.attribute("worker.outcome") == Some("created"))
        .unwrap();
    assert!(replayed_delivery.is_root());
    assert_eq!(
        replayed_delivery.links,
        [origin],
        "the replayed event links to its first trace"
    );
    assert_no_attribute_holds(&finished(), &["held@example.com", SECRET]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_one_span_linked_to_each_delivery_it_provisioned() {
    finished();
    let stack = Stack::new().await;
    let ids: Vec<String> = (0..6)
        .map(|i| format!("msg_batch{i}_{}", stack.db.name))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let user = UserEvent::created(
            &format!("user_2batch{i}"),
            &format!("batch{i}@example.com"),
            None,
        );
        stack.broker.publish("user.created", &user.body(), id).await;
    }
    let _worker = stack.start(&["consume"], &[("BATCH_SIZE", "8")]).await;
    eventually("six workspaces", WAIT, || async {
        stack.workspaces().await == 6
    })
    .await;

    let process = format!("process {}", stack.broker.topology.queue);
    let mut spans = Vec::new();
    eventually("a batch span and its deliveries", WAIT, || {
        spans = finished();
        let ready = spans.iter().any(|span| {
            span.name == "provision batch"
                && span.links.len() >= 2
                && span.links.iter().all(|(trace, id)| {
                    spans.iter().any(|d| {
                        &d.trace_id == trace
                            && &d.span_id == id
                            && d.name == process
                            && ids
                                .iter()
                                .any(|ours| d.attribute("messaging.message.id") == Some(ours))
                    })
                })
        });
        async move { ready }
    })
    .await;
    let batch = spans
        .iter()
        .find(|span| {
            span.name == "provision batch"
                && span.links.iter().any(|(trace, id)| {
                    spans.iter().any(|d| {
                        &d.trace_id == trace
                            && &d.span_id == id
                            && ids
                                .iter()
                                .any(|ours| d.attribute("messaging.message.id") == Some(ours))
                    })
                })
        })
        .unwrap();
    assert!(batch.is_root(), "a batch is a trace of its own");
    assert_eq!(
        batch.attribute("worker.batch.size"),
        Some(batch.links.len().to_string().as_str())
    );
    for (trace, id) in &batch.links {
        let delivery = spans
            .iter()
            .find(|d| &d.trace_id == trace && &d.span_id == id)
            .unwrap();
        assert_eq!(delivery.kind, "consumer");
        assert_eq!(delivery.attribute("worker.outcome"), Some("created"));
        assert!(
            delivery
                .attribute("clerk.user_id")
                .is_some_and(|u| u.starts_with("user_2batch"))
        );
    }
    let transaction = spans
        .iter()
        .find(|s| s.name == "provisioning transaction" && s.parent_span_id == batch.span_id)
        .expect("the batch's transaction");
    assert!(
        spans
            .iter()
            .any(|s| s.name == "SELECT provision_user" && s.parent_span_id == transaction.span_id),
        "its statement"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_traceparent_is_honoured_only_when_trusted() {
    finished();
    let stack = Stack::new().await;
    let upstream_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let upstream_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{upstream_trace}-{upstream_span}-01");
    for trusted in ["false", "true"] {
        let app = stack
            .start(
                &["ingress"],
                &[
                    ("CLERK_WEBHOOK_SECRET", SECRET),
                    ("INGRESS_TRUST_TRACEPARENT", trusted),
                ],
            )
            .await;
        let user = UserEvent::created(
            &format!("user_2parent{trusted}"),
            "parent@example.com",
            None,
        );
        let webhook = Webhook::signed(SECRET, &user.body());
        let (status, _) = webhook
            .post_with(app.ingress_addr, &[("traceparent", &traceparent)])
            .await;
        assert_eq!(status, 202);
        let mut request = None;
        eventually("the request's span", WAIT, || {
            request = finished().into_iter().find(|span| {
                span.kind == "server"
                    && span.attribute("messaging.message.id") == Some(webhook.id.as_str())
            });
            let found = request.is_some();
            async move { found }
        })
        .await;
        let request = request.unwrap();
        match trusted {
            "true" => {
                assert_eq!(request.trace_id, upstream_trace);
                assert_eq!(request.parent_span_id, upstream_span);
            }
            _ => {
                assert_ne!(
                    request.trace_id, upstream_trace,
                    "an outsider chose our trace id"
                );
                assert!(request.is_root());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconcile_run_is_a_trace_of_its_own_holding_its_repairs() {
    finished();
    let stack = Stack::new().await;
    let key = "sk_test_traces_5d2a";
    let clerk = FakeClerk::start(key).await;
    clerk.add(UserEvent::created("user_2repaired", "repaired@example.com", None).data());
    let url = clerk.url();
    let _worker = stack
        .start(
            &["consume"],
            &[
                ("CLERK_API_URL", url.as_str()),
                ("CLERK_SECRET_KEY", key),
                ("CLERK_API_RATE", "1000"),
                ("RECONCILE_INTERVAL", "2s"),
            ],
        )
        .await;
    eventually("the repaired user", WAIT, || async {
        stack.workspaces().await == 1
    })
    .await;

    let mut spans = Vec::new();
    eventually("the run's span holding its repair", WAIT, || {
        spans = finished();
        let ready = spans.iter().any(|repair| {
            repair.name == "SELECT provision_user"
                && root_of(&spans, repair).is_some_and(|root| root.name == "reconcile run")
        });
        async move { ready }
    })
    .await;
    assert_no_attribute_holds(&spans, &["repaired@example.com", key]);
}

/// The root `span` descends from, among `spans`.
fn root_of<'a>(spans: &'a [Span], span: &'a Span) -> Option<&'a Span> {
    let mut current = span;
    while !current.is_root() {
        current = spans
            .iter()
            .find(|s| s.trace_id == current.trace_id && s.span_id == current.parent_span_id)?;
    }
    Some(current)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_whose_batch_failed_still_has_one_span() {
    finished();
    let stack = Stack::new().await;
    stack
        .db
        .execute("INSERT INTO users (id, email, username) VALUES ('user_2owner', 'taken@example.com', 'owner')")
        .await;
    let ids: Vec<String> = (0..4)
        .map(|i| format!("msg_fallback{i}_{}", stack.db.name))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        // The last one's email is taken: its batch fails, and every delivery goes one by one.
        let email = match i {
            3 => "taken@example.com".to_owned(),
            _ => format!("fallback{i}@example.com"),
        };
        let user = UserEvent::created(&format!("user_2fallback{i}"), &email, None);
        stack.broker.publish("user.created", &user.body(), id).await;
    }
    let _worker = stack
        .start(
            &["consume"],
            &[("BATCH_SIZE", "8"), ("CONFLICT_RETRY_WINDOW", "0")],
        )
        .await;
    eventually("three workspaces", WAIT, || async {
        stack.workspaces().await == 3
    })
    .await;

    let process = format!("process {}", stack.broker.topology.queue);
    let spans_of = |id: &str| -> Vec<Span> {
        finished()
            .into_iter()
            .filter(|span| {
                span.name == process && span.attribute("messaging.message.id") == Some(id)
            })
            .collect()
    };
    eventually("every delivery's span", WAIT, || {
        let ready = ids.iter().all(|id| !spans_of(id).is_empty());
        async move { ready }
    })
    .await;
    for id in &ids[..3] {
        let spans = spans_of(id);
        assert_eq!(spans.len(), 1, "one span for {id}: {spans:?}");
        assert_eq!(spans[0].attribute("worker.outcome"), Some("created"));
    }
}
