//! `worker ingress` and `worker run` in this process (and as processes where signals, exit
//! statuses or log lines are the point): Svix verification, 2xx only after the broker confirmed,
//! and a signed webhook becoming a provisioned workspace end to end.

use std::time::Duration;

use integration_tests::app::TestApp;
use integration_tests::broker::TestBroker;
use integration_tests::clerk::{UserEvent, fixture};
use integration_tests::ops::series;
use integration_tests::process::WorkerProcess;
use integration_tests::proxy::CuttableProxy;
use integration_tests::webhook::{OTHER_SECRET, SECRET, Webhook};
use integration_tests::{TestDb, eventually};
use lapin::types::AMQPValue;
use worker::metrics;

const WORKER: &str = env!("CARGO_BIN_EXE_worker-under-test");

fn ingress_env(broker: &TestBroker, secret: &str) -> Vec<(&'static str, String)> {
    let mut env = broker.env();
    env.push(("CLERK_WEBHOOK_SECRET", secret.to_owned()));
    env
}

/// The ingress's environment with its broker connection going through `proxy`.
fn env_through(broker: &TestBroker, proxy: &CuttableProxy) -> Vec<(&'static str, String)> {
    let mut env = ingress_env(broker, SECRET);
    env.retain(|(key, _)| *key != "AMQP_URL");
    env.push(("AMQP_URL", format!("amqp://guest:guest@{}/%2f", proxy.addr)));
    env
}

async fn ingress(broker: &TestBroker, secret: &str) -> TestApp {
    let app = TestApp::spawn(&["ingress"], &ingress_env(broker, secret)).await;
    app.wait_ready(Duration::from_secs(30)).await;
    app
}

/// `worker ingress` as a process, for tests of signals and log lines.
async fn ingress_process(broker: &TestBroker, secret: &str) -> WorkerProcess {
    let mut process =
        WorkerProcess::spawn(WORKER, &["ingress"], &ingress_env(broker, secret)).await;
    process.wait_ready(Duration::from_secs(30)).await;
    process
}

fn user_created() -> Vec<u8> {
    fixture("user_created.json")
}

#[tokio::test]
async fn a_signed_webhook_is_published_byte_for_byte_after_the_broker_confirmed() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker, SECRET).await;
    let webhook = Webhook::signed(SECRET, &user_created());
    let (status, body) = webhook.post(ingress.ingress_addr).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");

    let messages = broker.take_all(&broker.topology.queue).await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.body, user_created(), "byte for byte");
    assert_eq!(message.message_id.as_deref(), Some(webhook.id.as_str()));
    assert_eq!(message.routing_key, "user.created");
    assert_eq!(
        message
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(*message.properties.delivery_mode(), Some(2), "persistent");
    assert!(message.properties.timestamp().is_some());
    let received = message.headers.inner().get("x-received-at-ms");
    assert!(matches!(received, Some(AMQPValue::LongLongInt(ms)) if *ms > 1_700_000_000_000));
}

#[tokio::test]
async fn the_unbranded_webhook_headers_work_too() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker, SECRET).await;
    let webhook = Webhook::signed(SECRET, &user_created());
    let response = reqwest::Client::new()
        .post(format!("http://{}/webhooks/clerk", ingress.ingress_addr))
        .header("webhook-id", &webhook.id)
        .header("webhook-timestamp", webhook.timestamp.to_string())
        .header("webhook-signature", &webhook.signature)
        .body(webhook.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
}

#[tokio::test]
async fn any_of_several_secrets_is_accepted_and_decoys_do_not_matter() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker, &format!("{OTHER_SECRET} {SECRET}")).await;
    for secret in [SECRET, OTHER_SECRET] {
        let (status, body) = Webhook::signed(secret, &user_created())
            .post(ingress.ingress_addr)
            .await;
        assert_eq!(status, 202, "{body}");
    }

    let mut decoyed = Webhook::signed(SECRET, &user_created());
    decoyed.signature = format!(
        "v1,bm9wZQ== v2,{} {} v1,AAAA",
        &decoyed.signature[3..],
        decoyed.signature
    );
    assert_eq!(decoyed.post(ingress.ingress_addr).await.0, 202);
    assert_eq!(broker.take_all(&broker.topology.queue).await.len(), 3);
}

#[tokio::test]
async fn bad_signatures_are_401_with_a_json_error_and_nothing_is_published() {
    let broker = TestBroker::new().await;
    let ingress = ingress_process(&broker, SECRET).await;
    let addr = ingress.ingress_addr;
    let now = chrono::Utc::now().timestamp();

    let mut tampered = Webhook::signed(SECRET, &user_created());
    tampered.body[10] ^= 1;
    let wrong_secret = Webhook::signed(OTHER_SECRET, &user_created());
    // The exact 300 s boundary is a unit test with an injected clock; here the two clocks (this
    // test's and the server's) can be a second or more apart on a loaded machine.
    let stale = Webhook::signed_at(SECRET, &user_created(), "msg_stale", now - 330);
    let future = Webhook::signed_at(SECRET, &user_created(), "msg_future", now + 330);
    let cases = [
        (tampered.post(addr).await, "invalid_signature"),
        (wrong_secret.post(addr).await, "invalid_signature"),
        (stale.post(addr).await, "timestamp_out_of_tolerance"),
        (future.post(addr).await, "timestamp_out_of_tolerance"),
    ];
    for ((status, body), code) in cases {
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], code, "{body}");
        assert!(body["detail"].is_string());
        let text = body.to_string();
        assert!(
            !text.contains(&tampered.signature[3..]) && !text.contains(&SECRET[6..]),
            "{text}"
        );
    }
    let valid = Webhook::signed(SECRET, &user_created());
    for header in ["svix-id", "svix-timestamp", "svix-signature"] {
        let (status, body) = valid.post_without(addr, &[header]).await;
        assert_eq!(status, 401, "{header}: {body}");
        assert_eq!(body["error"], "missing_header");
        assert!(body["detail"].as_str().unwrap().contains(header));
    }
    assert!(broker.take_all(&broker.topology.queue).await.is_empty());
    assert!(
        !ingress.logs().contains(&SECRET[6..]),
        "the secret never reaches the logs"
    );
}

#[tokio::test]
async fn oversized_and_malformed_bodies_are_refused() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker, SECRET).await;
    let addr = ingress.ingress_addr;

    let huge = Webhook::signed(SECRET, &vec![b'a'; 1024 * 1024]);
    let (status, body) = huge.post(addr).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );

    let not_json = Webhook::signed(SECRET, b"this is not json");
    let (status, body) = not_json.post(addr).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_payload")),
        "{body}"
    );

    let no_type = Webhook::signed(SECRET, br#"{"data":{"id":"user_1"},"object":"event"}"#);
    let (status, body) = no_type.post(addr).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_payload")),
        "{body}"
    );
    assert!(broker.take_all(&broker.topology.queue).await.is_empty());
}

#[tokio::test]
async fn types_the_worker_does_not_handle_are_answered_200_counted_and_not_published() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker, SECRET).await;
    for body in [
        &br#"{"type":"session.created","object":"event","data":{"id":"sess_1"}}"#[..],
        br#"{"type":"organization.created","object":"event","data":{"id":"org_1"}}"#,
    ] {
        let (status, answer) = Webhook::signed(SECRET, body)
            .post(ingress.ingress_addr)
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["status"], "ignored");
    }
    assert!(broker.take_all(&broker.topology.queue).await.is_empty());
    let counted = ingress
        .expect_metric(&series(
            metrics::WEBHOOK_REQUESTS,
            &[("status", "200"), ("type", "session.created")],
        ))
        .await;
    assert_eq!(counted, 1.0);
}

#[tokio::test]
async fn an_unroutable_publish_is_503() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker, SECRET).await;
    broker.unbind_main_queue().await;
    let (status, body) = Webhook::signed(SECRET, &user_created())
        .post(ingress.ingress_addr)
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "broker_unavailable");
    assert!(
        body["detail"].as_str().unwrap().contains("returned"),
        "{body}"
    );
}

#[tokio::test]
async fn the_ingress_starts_without_the_broker_answers_503_and_recovers_when_it_is_back() {
    let broker = TestBroker::new().await;
    let proxy = CuttableProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    proxy.cut().await;
    let env = env_through(&broker, &proxy);
    let ingress = TestApp::spawn(&["ingress"], &env).await;

    eventually("the ingress to answer without a broker", Duration::from_secs(20), || async {
        let webhook = Webhook::signed(SECRET, &user_created());
        matches!(webhook.post(ingress.ingress_addr).await, (503, body) if body["error"] == "broker_unavailable")
    })
    .await;
    let (status, readiness) = ingress.readyz().await;
    assert_eq!(status, 503);
    assert!(
        readiness.contains(r#""broker_ingress":false"#),
        "{readiness}"
    );
    assert!(!ingress.stopped());

    proxy.restore();
    ingress.wait_ready(Duration::from_secs(30)).await;
    let (status, body) = Webhook::signed(SECRET, &user_created())
        .post(ingress.ingress_addr)
        .await;
    assert_eq!(status, 202, "{body}");

    proxy.cut().await;
    eventually(
        "a 503 once the broker is gone again",
        Duration::from_secs(20),
        || async {
            Webhook::signed(SECRET, &user_created())
                .post(ingress.ingress_addr)
                .await
                .0
                == 503
        },
    )
    .await;
    proxy.restore();
    eventually("a 202 once it is back", Duration::from_secs(30), || async {
        Webhook::signed(SECRET, &user_created())
            .post(ingress.ingress_addr)
            .await
            .0
            == 202
    })
    .await;
}

#[tokio::test]
async fn a_confirm_that_does_not_come_within_publish_timeout_is_503() {
    let broker = TestBroker::new().await;
    let proxy = CuttableProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut env = env_through(&broker, &proxy);
    env.push(("PUBLISH_TIMEOUT", "500ms".into()));
    let ingress = TestApp::spawn(&["ingress"], &env).await;
    ingress.wait_ready(Duration::from_secs(30)).await;

    proxy.stall();
    let started = std::time::Instant::now();
    let (status, body) = Webhook::signed(SECRET, &user_created())
        .post(ingress.ingress_addr)
        .await;
    proxy.resume();
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("no confirm"),
        "{body}"
    );
    eprintln!("answered 503 after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_negative_confirm_is_503() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker, SECRET).await;
    // A full queue that rejects publishes makes the broker nack.
    let policy = format!("{}full", broker.settings.name_prefix);
    let pattern = format!("^{}$", broker.topology.queue.replace('.', "\\."));
    rabbitmqctl(&[
        "set_policy",
        "--apply-to",
        "queues",
        &policy,
        &pattern,
        r#"{"max-length":0}"#,
    ]);
    let answer = async {
        let mut last = (0, serde_json::Value::Null);
        for _ in 0..50 {
            last = Webhook::signed(SECRET, &user_created())
                .post(ingress.ingress_addr)
                .await;
            if last.0 == 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }
    .await;
    rabbitmqctl(&["clear_policy", &policy]);
    let (status, body) = answer;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("refused"),
        "{body}"
    );
}

fn rabbitmqctl(args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(args)
        .arg("-q")
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

#[tokio::test]
async fn no_secret_or_an_undecodable_one_refuses_to_start() {
    let broker = TestBroker::new().await;
    for (secret, expected) in [
        ("", "CLERK_WEBHOOK_SECRET is empty"),
        ("whsec_***", "not a whsec_ secret"),
    ] {
        let mut process =
            WorkerProcess::spawn(WORKER, &["ingress"], &ingress_env(&broker, secret)).await;
        let status = process.wait_exit(Duration::from_secs(20)).await;
        assert_eq!(status.code(), Some(2));
        assert!(process.logs().contains(expected), "{}", process.logs());
    }
}

#[tokio::test]
async fn sigterm_stops_the_ingress_with_exit_zero() {
    let broker = TestBroker::new().await;
    let mut ingress = ingress_process(&broker, SECRET).await;
    assert_eq!(
        Webhook::signed(SECRET, &user_created())
            .post(ingress.ingress_addr)
            .await
            .0,
        202
    );
    ingress.terminate();
    assert!(ingress.wait_exit(Duration::from_secs(20)).await.success());
}

#[tokio::test]
async fn ingress_metrics_count_requests_by_status_and_time_the_confirms() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker, SECRET).await;
    for _ in 0..3 {
        Webhook::signed(SECRET, &user_created())
            .post(ingress.ingress_addr)
            .await;
    }
    Webhook::signed(OTHER_SECRET, &user_created())
        .post(ingress.ingress_addr)
        .await;
    let page = ingress.metrics().await;
    let value = |series: &str| integration_tests::ops::expect_metric_value(&page, series);
    assert_eq!(
        value(&series(
            metrics::WEBHOOK_REQUESTS,
            &[("status", "202"), ("type", "user.created")]
        )),
        3.0
    );
    assert_eq!(
        value(&series(
            metrics::WEBHOOK_REQUESTS,
            &[("status", "401"), ("type", "unknown")]
        )),
        1.0
    );
    assert_eq!(value(&format!("{}_count", metrics::WEBHOOK_DURATION)), 4.0);
    assert_eq!(
        value(&format!("{}_count", metrics::WEBHOOK_PUBLISH_CONFIRM)),
        3.0
    );
    assert!(
        page.contains(&series(
            &format!("{}_bucket", metrics::WEBHOOK_PUBLISH_CONFIRM),
            &[("le", "0.001")]
        )),
        "{page}"
    );
}

/// Waits for `user_id`'s workspace and returns the user's (email, username).
async fn provisioned(db: &TestDb, user_id: &str) -> (String, String) {
    let workspaces = format!("SELECT count(*) FROM workspaces WHERE user_id = '{user_id}'");
    eventually(
        &format!("{user_id}'s workspace"),
        Duration::from_secs(20),
        || async { db.scalar(&workspaces).await == 1 },
    )
    .await;
    let row = db
        .rows(&format!(
            "SELECT email, username FROM users WHERE id = '{user_id}'"
        ))
        .await;
    let text = |field: &str| row[0][field].as_str().unwrap_or_default().to_owned();
    (text("email"), text("username"))
}

#[tokio::test]
async fn worker_run_turns_each_shared_example_into_its_documented_state() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let mut env = ingress_env(&broker, SECRET);
    env.push(("DATABASE_URL", db.settings.expose_url().to_owned()));
    let mut run = TestApp::spawn(&["run"], &env).await;
    run.wait_ready(Duration::from_secs(30)).await;
    let post = |name: &str| {
        let webhook = Webhook::signed(SECRET, &fixture(name));
        let addr = run.ingress_addr;
        async move { webhook.post(addr).await.0 }
    };
    let row = |sql: &'static str| {
        let db = &db;
        async move { db.rows(sql).await.into_iter().next().unwrap_or_default() }
    };

    assert_eq!(post("user_created.json").await, 202);
    assert_eq!(
        provisioned(&db, "user_39BL7AjFtiageEwS3wHL0KvAXLh").await,
        ("marta.lopez@example.com".into(), "marta_lopez".into())
    );

    assert_eq!(
        post("user_created_null_username_second_email_primary.json").await,
        202
    );
    assert_eq!(
        provisioned(&db, "user_3IUHw5u6kOqRgyTUEVE6dSQYtQE").await,
        ("kenji+signup@example.org".into(), "kenji_signup".into())
    );

    assert_eq!(post("user_created_phone_only.json").await, 202);
    eventually(
        "the phone-only dead letter",
        Duration::from_secs(20),
        || async {
            run.expect_metric(&series(
                metrics::WORKSPACE_FAILED,
                &[("reason", "missing_email")],
            ))
            .await
                == 1.0
        },
    )
    .await;

    assert_eq!(post("user_updated.json").await, 202);
    eventually("marta's update", Duration::from_secs(20), || async {
        row("SELECT username FROM users WHERE id = 'user_39BL7AjFtiageEwS3wHL0KvAXLh'").await["username"] == "marta_lg"
    })
    .await;
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM workspaces WHERE user_id = 'user_39BL7AjFtiageEwS3wHL0KvAXLh'"
        )
        .await,
        1
    );

    assert_eq!(post("user_deleted.json").await, 202);
    eventually("marta's deletion", Duration::from_secs(20), || async {
        db.scalar("SELECT count(*) FROM users WHERE id = 'user_39BL7AjFtiageEwS3wHL0KvAXLh'")
            .await
            == 0
    })
    .await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces").await,
        1,
        "only kenji's is left"
    );

    let page = run.metrics().await;
    let value = |series: &str| integration_tests::ops::expect_metric_value(&page, series);
    assert_eq!(value(metrics::WORKSPACE_CREATED), 2.0);
    assert_eq!(
        value(&series(
            metrics::WEBHOOK_REQUESTS,
            &[("status", "202"), ("type", "user.created")]
        )),
        3.0
    );
    assert_eq!(
        value(&series(
            metrics::EVENTS_PROCESSED,
            &[("type", "user.deleted"), ("outcome", "deleted")]
        )),
        1.0
    );
    let dead = integration_tests::dead_letters::take_all(&broker, &db).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].header("x-failure-reason").as_deref(),
        Some("missing_email")
    );

    // A burst of sign-ups through the whole product.
    for i in 0..20 {
        let body = UserEvent::created(
            &format!("user_2burst{i:03}"),
            &format!("burst{i}@example.com"),
            None,
        )
        .body();
        assert_eq!(
            Webhook::signed(SECRET, &body)
                .post(run.ingress_addr)
                .await
                .0,
            202
        );
    }
    eventually("the burst", Duration::from_secs(30), || async {
        db.scalar("SELECT count(*) FROM workspaces").await == 21
    })
    .await;
    run.terminate();
    let stopped = run.wait_stopped(Duration::from_secs(30)).await;
    assert!(stopped.is_ok(), "{stopped:?}");
}
