//! `worker consume` against the real RabbitMQ and PostgreSQL, in this process (and as a process
//! where signals, SIGKILL or its log lines are the point): an event published to the broker
//! becomes a user and a workspace, or a dead letter with its reason; nothing is dropped, whatever
//! happens to the database, the broker or the process.

use std::time::{Duration, Instant};

use integration_tests::app::TestApp;
use integration_tests::clerk::{UserEvent, fixture};
use integration_tests::ops::series;
use integration_tests::process::WorkerProcess;
use integration_tests::proxy::CuttableProxy;
use integration_tests::stack::Stack;
use integration_tests::{eventually, throughout, within};
use worker::metrics;

const WORKER: &str = env!("CARGO_BIN_EXE_worker-under-test");
const MARTA: &str = "user_39BL7AjFtiageEwS3wHL0KvAXLh";

/// Fast retries, so tests do not wait for the production backoff.
const FAST_RETRIES: [(&str, &str); 2] =
    [("RETRY_INITIAL_DELAY", "20ms"), ("RETRY_MAX_DELAY", "1s")];

async fn consume(stack: &Stack, extra: &[(&'static str, &str)]) -> TestApp {
    stack
        .start(&["consume"], &[&FAST_RETRIES[..], extra].concat())
        .await
}

/// `worker consume` as a process, for tests of signals, SIGKILL and log lines.
async fn consume_process(stack: &Stack, extra: &[(&'static str, &str)]) -> WorkerProcess {
    stack
        .spawn(WORKER, &["consume"], &[&FAST_RETRIES[..], extra].concat())
        .await
}

/// The environment `consume` uses, for tests that start the process themselves.
fn env(stack: &Stack, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    stack.env(&[&FAST_RETRIES[..], extra].concat())
}

async fn wait_for_workspaces(stack: &Stack, n: i64, timeout: Duration) {
    eventually(&format!("{n} workspaces"), timeout, || async {
        stack.workspaces().await >= n
    })
    .await;
    assert_eq!(stack.workspaces().await, n);
}

/// Publishes `n` distinct sign-ups, `user_2bulk00000`...
async fn publish_sign_ups(stack: &Stack, n: usize) {
    for i in 0..n {
        let event = UserEvent::created(
            &format!("user_2bulk{i:05}"),
            &format!("bulk{i}@example.com"),
            Some(&format!("bulk_{i}")),
        );
        stack
            .broker
            .publish("user.created", &event.body(), &format!("msg_bulk{i:05}"))
            .await;
    }
}

#[tokio::test]
async fn a_published_user_created_becomes_one_user_and_one_workspace() {
    let stack = Stack::new().await;
    let worker = consume_process(&stack, &[]).await;
    stack
        .broker
        .publish("user.created", &fixture("user_created.json"), "msg_marta_1")
        .await;

    wait_for_workspaces(&stack, 1, Duration::from_secs(20)).await;
    eventually("the ack", Duration::from_secs(10), || async {
        worker.expect_metric(metrics::WORKSPACE_CREATED).await == 1.0
    })
    .await;
    assert_eq!(stack.main_queue_ready().await, 0);
    assert_eq!(
        worker
            .expect_metric(&series(
                metrics::EVENTS_PROCESSED,
                &[("type", "user.created"), ("outcome", "created")]
            ))
            .await,
        1.0
    );
    let created_log = worker
        .logs()
        .lines()
        .find(|l| l.contains("WORKSPACE_CREATED"))
        .map(str::to_owned)
        .expect("a WORKSPACE_CREATED line");
    let line: serde_json::Value = serde_json::from_str(&created_log).unwrap();
    assert_eq!(line["user_id"], MARTA);
    assert_eq!(line["event_id"], "msg_marta_1");
    assert_eq!(line["attempt"], 1);
    assert!(line["duration_ms"].as_f64().is_some());
}

#[tokio::test]
async fn the_same_message_five_times_gives_one_workspace_and_counts_one_creation() {
    let stack = Stack::new().await;
    let worker = consume(&stack, &[]).await;
    for _ in 0..5 {
        stack
            .broker
            .publish(
                "user.created",
                &fixture("user_created.json"),
                "msg_marta_dup",
            )
            .await;
    }
    eventually("five events processed", Duration::from_secs(20), || async {
        worker.metric(metrics::EVENTS_PROCESSED).await == Some(5.0)
    })
    .await;
    assert_eq!(stack.workspaces().await, 1);
    assert_eq!(worker.expect_metric(metrics::WORKSPACE_CREATED).await, 1.0);
    assert_eq!(
        worker
            .expect_metric(&series(
                metrics::EVENTS_PROCESSED,
                &[("type", "user.created"), ("outcome", "already_existed")]
            ))
            .await,
        4.0
    );
}

#[tokio::test]
async fn bad_events_are_dead_lettered_with_their_reason_and_the_queue_keeps_flowing() {
    let stack = Stack::new().await;
    stack.db.execute("INSERT INTO users (id, email, username) VALUES ('user_2owner', 'taken@example.com', 'owner')").await;
    // The conflict is tried twice, then dead-lettered: once more from a delay queue, which
    // returns it no sooner than 100 ms later, when its window of 50 ms is over.
    let retry = [
        ("CONFLICT_RETRY_WINDOW", "50ms"),
        ("RETRY_INITIAL_DELAY", "10ms"),
    ];
    let worker = consume(&stack, &retry).await;
    let malformed = b"{\"type\": \"user.created\", \"data\": {".to_vec();
    let phone_only = fixture("user_created_phone_only.json");
    let conflict = UserEvent::created("user_2thief", "taken@example.com", Some("thief")).body();
    stack
        .broker
        .publish("user.created", &malformed, "msg_bad_json")
        .await;
    stack
        .broker
        .publish("user.created", &phone_only, "msg_phone")
        .await;
    stack
        .broker
        .publish("user.created", &conflict, "msg_conflict")
        .await;
    stack
        .broker
        .publish("user.created", &fixture("user_created.json"), "msg_good")
        .await;

    wait_for_workspaces(&stack, 1, Duration::from_secs(20)).await;
    eventually("three dead letters", Duration::from_secs(20), || async {
        worker.expect_metric(metrics::WORKSPACE_FAILED).await == 3.0
    })
    .await;
    let mut dead = stack.take_dead_letters().await;
    dead.sort_by_key(|m| m.message_id.clone());
    let summary: Vec<(Option<String>, Option<String>)> = dead
        .iter()
        .map(|m| (m.message_id.clone(), m.header("x-failure-reason")))
        .collect();
    assert_eq!(
        summary,
        [
            (Some("msg_bad_json".into()), Some("invalid_payload".into())),
            (Some("msg_conflict".into()), Some("email_conflict".into())),
            (Some("msg_phone".into()), Some("missing_email".into())),
        ]
    );
    let by_id = |id: &str| {
        dead.iter()
            .find(|m| m.message_id.as_deref() == Some(id))
            .unwrap()
    };
    assert_eq!(
        by_id("msg_bad_json").body,
        malformed,
        "body kept byte for byte"
    );
    assert_eq!(by_id("msg_phone").body, phone_only);
    assert_eq!(by_id("msg_conflict").body, conflict);
    for letter in &dead {
        assert_eq!(letter.routing_key, "user.created");
        let conflict = letter.message_id.as_deref() == Some("msg_conflict");
        let attempts = if conflict { "2" } else { "1" };
        assert_eq!(letter.header("x-attempts").as_deref(), Some(attempts));
        assert!(
            letter
                .header("x-failure-detail")
                .is_some_and(|d| !d.is_empty())
        );
        assert!(
            letter
                .header("x-first-failed-at")
                .is_some_and(|t| t.ends_with('Z'))
        );
        assert!(letter.header("x-last-failed-at").is_some());
        assert!(
            letter.header("x-received-at-ms").is_some(),
            "original headers kept"
        );
    }
    assert_eq!(
        worker
            .expect_metric(&series(
                metrics::WORKSPACE_FAILED,
                &[("reason", "missing_email")]
            ))
            .await,
        1.0
    );
    assert_eq!(stack.main_queue_ready().await, 0);
}

#[tokio::test]
async fn unsupported_event_types_are_acked_and_counted_never_retried() {
    let stack = Stack::new().await;
    let worker = consume(&stack, &[]).await;
    let body = br#"{"type":"user.banned","object":"event","data":{"id":"user_2x"}}"#;
    stack
        .broker
        .publish("user.banned", body, "msg_banned")
        .await;
    eventually(
        "the unsupported event counted",
        Duration::from_secs(20),
        || async {
            worker
                .metric(&series(
                    metrics::EVENTS_PROCESSED,
                    &[("type", "user.banned"), ("outcome", "unsupported")],
                ))
                .await
                == Some(1.0)
        },
    )
    .await;
    assert_eq!(stack.main_queue_ready().await, 0);
    assert_eq!(worker.metric(metrics::EVENTS_RETRIED).await, Some(0.0));
    assert!(stack.take_dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_persistent_transient_error_is_retried_then_dead_lettered_as_retries_exhausted() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let stack = Stack::new().await;
    let event = UserEvent::created("user_2locked", "locked@example.com", Some("locked"));
    integration_tests::clerk::provision(&stack.db.conn, &event.body())
        .await
        .unwrap();
    stack
        .db
        .execute(&format!(
            "ALTER DATABASE \"{}\" SET lock_timeout = '50ms'",
            stack.db.name
        ))
        .await;
    let holder = stack.db.conn.begin().await.unwrap();
    holder
        .execute_unprepared("SELECT * FROM users WHERE id = 'user_2locked' FOR UPDATE")
        .await
        .unwrap();

    let worker = consume(&stack, &[("RETRY_MAX_ATTEMPTS", "3")]).await;
    stack
        .broker
        .publish("user.updated", &event.updated(1_000).body(), "msg_locked")
        .await;
    eventually("the dead letter", Duration::from_secs(30), || async {
        worker
            .expect_metric(&series(
                metrics::WORKSPACE_FAILED,
                &[("reason", "retries_exhausted")],
            ))
            .await
            == 1.0
    })
    .await;
    holder.rollback().await.unwrap();
    let dead = stack.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].header("x-failure-reason").as_deref(),
        Some("retries_exhausted")
    );
    assert_eq!(dead[0].header("x-attempts").as_deref(), Some("3"));
    assert!(dead[0].header("x-failure-detail").unwrap().contains("lock"));
    assert_eq!(
        worker
            .expect_metric(&series(metrics::EVENTS_RETRIED, &[("reason", "transient")]))
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_twenty_second_database_outage_loses_and_dead_letters_nothing() {
    let stack = Stack::new().await;
    let proxy = CuttableProxy::start(integration_tests::server_addr()).await;
    let through_proxy = format!("postgres://postgres@{}/{}", proxy.addr, stack.db.name);
    let mut env = env(
        &stack,
        &[
            ("DATABASE_CONNECT_TIMEOUT", "1s"),
            ("RETRY_MAX_DELAY", "5s"),
        ],
    );
    env.retain(|(key, _)| *key != "DATABASE_URL");
    env.push(("DATABASE_URL", through_proxy));
    let worker = TestApp::spawn(&["consume"], &env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    proxy.cut().await;
    publish_sign_ups(&stack, 200).await;
    eventually(
        "/readyz to report the database",
        Duration::from_secs(10),
        || async {
            let (status, body) = worker.readyz().await;
            status == 503 && body.contains(r#""database":false"#)
        },
    )
    .await;
    // The outage lasts 20 s whatever happens; the test fails at the first sign of a write or a
    // dead letter.
    throughout(
        "nothing written, nothing dead-lettered during the outage",
        Duration::from_secs(20),
        || async {
            stack.workspaces().await == 0
                && stack.dead_letters_ready().await == 0
                && worker.metric(metrics::WORKSPACE_FAILED).await == Some(0.0)
        },
    )
    .await;
    proxy.restore();
    let restored = Instant::now();

    wait_for_workspaces(&stack, 200, Duration::from_secs(60)).await;
    eprintln!(
        "all 200 provisioned {:?} after the database came back",
        restored.elapsed()
    );
    assert!(
        stack.take_dead_letters().await.is_empty(),
        "nothing dead-lettered"
    );
    assert_eq!(worker.metric(metrics::WORKSPACE_FAILED).await, Some(0.0));
    assert!(
        worker
            .expect_metric(&series(
                metrics::EVENTS_RETRIED,
                &[("reason", "database_unavailable")]
            ))
            .await
            > 0.0
    );
    eventually("the queue to drain", Duration::from_secs(10), || async {
        stack.main_queue_ready().await == 0
    })
    .await;
}

#[tokio::test]
async fn a_worker_killed_mid_stream_and_restarted_provisions_everything_exactly_once() {
    let stack = Stack::new().await;
    publish_sign_ups(&stack, 1000).await;
    let mut first = consume_process(&stack, &[]).await;
    eventually("some progress", Duration::from_secs(60), || async {
        stack.users().await >= 100
    })
    .await;
    first.kill();
    let at_kill = stack.users().await;
    eprintln!("killed with {at_kill} of 1000 provisioned");
    assert!(at_kill < 1000, "the kill must land mid-stream");

    let _second = consume(&stack, &[]).await;
    wait_for_workspaces(&stack, 1000, Duration::from_secs(120)).await;
    assert_eq!(stack.users().await, 1000);
    assert_eq!(
        stack
            .db
            .scalar("SELECT count(DISTINCT user_id) FROM workspaces")
            .await,
        1000
    );
    assert!(stack.take_dead_letters().await.is_empty());
}

#[tokio::test]
async fn the_worker_reconnects_after_the_broker_closes_its_connection() {
    let stack = Stack::new().await;
    let worker = consume_process(&stack, &[]).await;
    publish_sign_ups(&stack, 10).await;
    wait_for_workspaces(&stack, 10, Duration::from_secs(20)).await;

    close_broker_connection_of(worker.pid());
    eventually("the reconnect", Duration::from_secs(30), || async {
        worker.logs().contains("broker session lost") && worker.readyz().await.0 == 200
    })
    .await;
    for i in 10..30 {
        let event = UserEvent::created(
            &format!("user_2again{i:03}"),
            &format!("again{i}@example.com"),
            None,
        );
        stack
            .broker
            .publish("user.created", &event.body(), &format!("msg_again{i}"))
            .await;
    }
    wait_for_workspaces(&stack, 30, Duration::from_secs(30)).await;
    eventually("the queue to drain", Duration::from_secs(10), || async {
        stack.main_queue_ready().await == 0
    })
    .await;
}

/// Closes the broker connection the worker with `pid` opened, as an operator would.
fn close_broker_connection_of(pid: u32) {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "-q",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let listing = String::from_utf8_lossy(&output.stdout);
    let marker = format!(
        "\"worker@{}#{pid}\"",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into())
    );
    let erlang_pid = listing
        .lines()
        .find(|line| line.contains(&marker))
        .and_then(|line| line.split('\t').next())
        .unwrap_or_else(|| panic!("no connection named {marker} in:\n{listing}"));
    let status = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", erlang_pid, "closed by the test", "-q"])
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_with_events_in_flight_exits_zero_and_loses_nothing() {
    let stack = Stack::new().await;
    publish_sign_ups(&stack, 500).await;
    let mut worker = consume_process(&stack, &[]).await;
    eventually("work in flight", Duration::from_secs(60), || async {
        stack.users().await >= 50
    })
    .await;
    worker.terminate();
    let status = worker.wait_exit(Duration::from_secs(40)).await;
    assert!(
        status.success(),
        "exit status {status:?}; logs:\n{}",
        worker.logs()
    );

    // Every event is either finished or still in the queue: nothing is lost. Delivery is
    // at-least-once, so the broker may still hand back a few it had been acked for as the
    // connection went (provisioning absorbs the repeat); never more than one prefetch window.
    // Deliveries the worker held go back when the broker has handled its closed channel, which
    // can be a moment after the process exits: wait for the queue to hold every unfinished one.
    let finished = worker.logs().matches("WORKSPACE_CREATED").count() as u32;
    within(Duration::from_secs(10), || async {
        finished + stack.main_queue_ready().await >= 500
    })
    .await;
    let ready = stack.main_queue_ready().await;
    eprintln!("stopped after {finished} events; {ready} left in the queue");
    let warnings: Vec<String> = worker
        .logs()
        .lines()
        .filter(|line| line.contains("WARN"))
        .map(str::to_owned)
        .collect();
    assert!(
        finished + ready >= 500,
        "{} events lost; warnings: {warnings:#?}",
        500 - finished - ready
    );
    assert!(
        finished + ready <= 500 + 64,
        "{} finished events back in the queue; warnings: {warnings:#?}",
        finished + ready - 500
    );
    assert_eq!(stack.users().await, i64::from(finished));

    let _next = consume(&stack, &[]).await;
    wait_for_workspaces(&stack, 500, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn three_workers_share_the_queue_and_provision_each_user_exactly_once() {
    let stack = Stack::new().await;
    let workers = [
        consume(&stack, &[]).await,
        consume(&stack, &[]).await,
        consume(&stack, &[]).await,
    ];
    publish_sign_ups(&stack, 3000).await;
    wait_for_workspaces(&stack, 3000, Duration::from_secs(180)).await;
    assert_eq!(stack.users().await, 3000);
    eventually("every ack", Duration::from_secs(20), || async {
        let mut total = 0.0;
        for worker in &workers {
            total += worker.expect_metric(metrics::WORKSPACE_CREATED).await;
        }
        total == 3000.0
    })
    .await;
    for (i, worker) in workers.iter().enumerate() {
        let share = worker.expect_metric(metrics::WORKSPACE_CREATED).await;
        eprintln!("worker {i} created {share}");
        assert!(share > 0.0, "every worker did part of the work");
    }
}

#[tokio::test]
async fn metrics_show_the_created_count_and_real_histogram_buckets() {
    let stack = Stack::new().await;
    let worker = consume(&stack, &[]).await;
    publish_sign_ups(&stack, 25).await;
    wait_for_workspaces(&stack, 25, Duration::from_secs(30)).await;
    eventually("25 created", Duration::from_secs(10), || async {
        worker.expect_metric(metrics::WORKSPACE_CREATED).await == 25.0
    })
    .await;
    let page = worker.metrics().await;
    assert!(
        page.contains(&format!(
            "# TYPE {} histogram",
            metrics::PROVISIONING_DURATION
        )),
        "{page}"
    );
    assert!(
        page.contains(&series(
            &format!("{}_bucket", metrics::PROVISIONING_DURATION),
            &[("outcome", "created"), ("le", "0.001")]
        )),
        "{page}"
    );
    assert!(
        page.contains(&series(
            &format!("{}_bucket", metrics::PROVISIONING_DURATION),
            &[("outcome", "created"), ("le", "10")]
        )),
        "{page}"
    );
    assert!(
        page.contains(&format!("{}_bucket", metrics::EVENT_LAG)),
        "{page}"
    );
    assert_eq!(
        integration_tests::ops::expect_metric_value(
            &page,
            &format!("{}_count", metrics::PROVISIONING_DURATION)
        ),
        25.0
    );
    assert_eq!(
        integration_tests::ops::expect_metric_value(&page, metrics::CONSUMER_CONNECTED),
        1.0
    );
}

#[tokio::test]
async fn the_worker_opens_its_minimum_database_connections_before_any_event() {
    let stack = Stack::new().await;
    let _worker = consume(&stack, &[("DATABASE_MIN_CONNECTIONS", "3")]).await;
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = '{}'",
        worker::db::APPLICATION_NAME
    );
    eventually("3 warm connections", Duration::from_secs(20), || async {
        stack.db.scalar(&sql).await >= 3
    })
    .await;
    assert_eq!(stack.users().await, 0);
}

#[tokio::test]
async fn healthz_and_readyz_answer() {
    let stack = Stack::new().await;
    let worker = consume(&stack, &[]).await;
    let (status, body) = worker.readyz().await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["checks"]["database"], true);
    assert_eq!(body["checks"]["broker_consumer"], true);
}

#[tokio::test]
async fn readyz_names_the_broker_when_it_cannot_be_reached() {
    let stack = Stack::new().await;
    let mut env = env(&stack, &[]);
    env.retain(|(key, _)| *key != "AMQP_URL");
    env.push(("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f".into()));
    let worker = TestApp::spawn(&["consume"], &env).await;
    eventually("/readyz to answer 503 naming the broker", Duration::from_secs(20), || async {
        matches!(worker.get("/readyz").await, Some((503, body)) if body.contains(r#""broker_consumer":false"#) && body.contains(r#""database":true"#))
    })
    .await;
}

#[tokio::test]
async fn the_worker_resumes_after_the_broker_cancels_its_consumer() {
    let stack = Stack::new().await;
    let worker = consume_process(&stack, &[]).await;
    stack.broker.delete_main_queue().await;
    eventually(
        "the consumer to come back",
        Duration::from_secs(30),
        || async {
            worker.logs().contains("the broker cancelled the consumer")
                && worker.readyz().await.0 == 200
        },
    )
    .await;
    publish_sign_ups(&stack, 5).await;
    wait_for_workspaces(&stack, 5, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_message_returned_past_the_delivery_limit_is_dead_lettered_by_the_broker() {
    let stack = Stack::new().await;
    stack
        .broker
        .publish("user.created", &fixture("user_created.json"), "msg_poison")
        .await;
    let queue = stack.broker.topology.queue.clone();
    let mut returns = 0;
    while stack.broker.get_and_requeue(&queue).await {
        returns += 1;
        assert!(returns <= 11, "the delivery limit of 10 did not apply");
    }
    // The broker dead-letters asynchronously.
    let dead_letter_queue = stack.broker.topology.dead_letter_queue.clone();
    eventually("the dead letter", Duration::from_secs(10), || async {
        stack.broker.ready(&dead_letter_queue).await == 1
    })
    .await;
    let dead = stack.take_dead_letters().await;
    assert_eq!(dead.len(), 1, "after {returns} returns");
    assert_eq!(dead[0].message_id.as_deref(), Some("msg_poison"));
    assert_eq!(dead[0].body, fixture("user_created.json"));
}

#[tokio::test]
async fn sigterm_during_a_database_outage_gives_every_held_delivery_back() {
    let stack = Stack::new().await;
    let proxy = CuttableProxy::start(integration_tests::server_addr()).await;
    let mut env = env(&stack, &[("DATABASE_CONNECT_TIMEOUT", "1s")]);
    env.retain(|(key, _)| *key != "DATABASE_URL");
    env.push((
        "DATABASE_URL",
        format!("postgres://postgres@{}/{}", proxy.addr, stack.db.name),
    ));
    let mut worker = WorkerProcess::spawn(WORKER, &["consume"], &env).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    proxy.cut().await;
    publish_sign_ups(&stack, 5).await;
    eventually("retries under way", Duration::from_secs(20), || async {
        worker
            .expect_metric(&series(
                metrics::EVENTS_RETRIED,
                &[("reason", "database_unavailable")],
            ))
            .await
            >= 5.0
    })
    .await;

    worker.signal("INT");
    let status = worker.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status:?}");
    eventually(
        "all five back in the queue",
        Duration::from_secs(10),
        || async { stack.main_queue_ready().await == 5 },
    )
    .await;
    assert!(stack.take_dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_worker_started_while_the_database_is_down_provisions_once_it_is_up() {
    let stack = Stack::new().await;
    let proxy = CuttableProxy::start(integration_tests::server_addr()).await;
    proxy.cut().await;
    let mut env = env(
        &stack,
        &[
            ("DATABASE_CONNECT_TIMEOUT", "1s"),
            ("DATABASE_MIN_CONNECTIONS", "3"),
        ],
    );
    env.retain(|(key, _)| *key != "DATABASE_URL");
    env.push((
        "DATABASE_URL",
        format!("postgres://postgres@{}/{}", proxy.addr, stack.db.name),
    ));
    let worker = TestApp::spawn(&["consume"], &env).await;
    eventually("/readyz to report the database", Duration::from_secs(20), || async {
        matches!(worker.get("/readyz").await, Some((503, body)) if body.contains(r#""database":false"#))
    })
    .await;
    publish_sign_ups(&stack, 3).await;

    proxy.restore();
    wait_for_workspaces(&stack, 3, Duration::from_secs(60)).await;
    assert!(stack.take_dead_letters().await.is_empty());
}

#[tokio::test]
async fn readyz_waits_for_every_migration_this_binary_knows_and_ignores_newer_ones() {
    let stack = Stack::new().await;
    let worker = consume(&stack, &[]).await;
    stack
        .db
        .execute(
            "INSERT INTO seaql_migrations (version, applied_at) \
             VALUES ('m20991231_000001_from_a_later_release', 0)",
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = worker.readyz().await;
    assert_eq!(status, 200, "a newer migration is fine: {body}");

    stack
        .db
        .execute("DELETE FROM seaql_migrations WHERE version LIKE 'm20261129_000004%'")
        .await;
    eventually(
        "/readyz to name the missing migration",
        Duration::from_secs(10),
        || async {
            let (status, body) = worker.readyz().await;
            status == 503
                && body.contains(r#""database_migrations":false"#)
                && body.contains(r#""database":true"#)
        },
    )
    .await;
}

#[tokio::test]
async fn a_listener_that_cannot_bind_stops_the_process_with_exit_1() {
    let stack = Stack::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let env = env(&stack, &[("METRICS_ADDR", &addr)]);
    let mut worker = WorkerProcess::spawn(WORKER, &["consume"], &env).await;
    let status = worker.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(1), "{}", worker.logs());
    assert!(
        worker
            .logs()
            .contains(&format!("binding METRICS_ADDR {addr}")),
        "{}",
        worker.logs()
    );
}

#[tokio::test]
async fn readyz_under_many_concurrent_probes_checks_the_database_once_at_a_time() {
    let stack = Stack::new().await;
    let worker = consume(&stack, &[]).await;
    let probes = (0..300).map(|_| worker.readyz());
    let answers = futures::future::join_all(probes).await;
    let mut checks = std::collections::BTreeSet::new();
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        let at = body["database_checked_at"].as_str().expect("a check time");
        checks.insert(chrono::DateTime::parse_from_rfc3339(at).unwrap());
    }
    // One check answers every probe for a second: 300 probes within a few seconds share a few
    // checks, where a check per probe would be 300.
    assert!(checks.len() <= 5, "{} checks for 300 probes", checks.len());
    let span = *checks.last().unwrap() - *checks.first().unwrap();
    assert!(
        span.num_milliseconds() >= 1000 * (checks.len() as i64 - 1),
        "checks closer than a second apart: {checks:?}"
    );
}

#[tokio::test]
async fn a_broker_lost_while_every_slot_waits_for_the_database_is_noticed_within_two_heartbeats() {
    let stack = Stack::new().await;
    let database = CuttableProxy::start(integration_tests::server_addr()).await;
    let broker = CuttableProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut env = env(
        &stack,
        &[
            ("DATABASE_CONNECT_TIMEOUT", "500ms"),
            ("MAX_CONCURRENCY", "2"),
            ("PREFETCH", "4"),
            ("BATCH_SIZE", "1"),
        ],
    );
    env.retain(|(key, _)| !matches!(*key, "DATABASE_URL" | "AMQP_URL"));
    env.push((
        "DATABASE_URL",
        format!("postgres://postgres@{}/{}", database.addr, stack.db.name),
    ));
    env.push((
        "AMQP_URL",
        format!("amqp://guest:guest@{}/%2f?heartbeat=2", broker.addr),
    ));
    let worker = TestApp::spawn(&["consume"], &env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    database.cut().await;
    publish_sign_ups(&stack, 8).await;
    eventually(
        "both slots held by deliveries waiting for the database",
        Duration::from_secs(20),
        || async { worker.expect_metric(metrics::DELIVERIES_IN_FLIGHT).await == 2.0 },
    )
    .await;

    broker.stall();
    eventually(
        "the lost broker noticed (two heartbeats of 2 s, and some slack)",
        Duration::from_secs(8),
        || async { worker.metric(metrics::CONSUMER_CONNECTED).await == Some(0.0) },
    )
    .await;
    let (status, body) = worker.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        worker.metric(metrics::DELIVERIES_IN_FLIGHT).await,
        Some(0.0),
        "the old session's deliveries stopped"
    );

    broker.cut().await;
    broker.restore();
    broker.resume();
    database.restore();
    let mut most_in_flight = 0.0_f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stack.workspaces().await < 8 && Instant::now() < deadline {
        most_in_flight =
            most_in_flight.max(worker.expect_metric(metrics::DELIVERIES_IN_FLIGHT).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stack.workspaces().await, 8, "all 8 provisioned");
    assert!(
        most_in_flight <= 4.0,
        "{most_in_flight} in flight > PREFETCH"
    );
    assert_eq!(worker.metric(metrics::WORKSPACE_FAILED).await, Some(0.0));
}

#[tokio::test]
async fn a_long_database_outage_hands_deliveries_back_once_and_dead_letters_nothing() {
    // A delivery limit of 2: a message returned twice would be dead-lettered by the broker.
    let stack = Stack {
        db: integration_tests::TestDb::migrated().await,
        broker: integration_tests::broker::TestBroker::with_delivery_limit(2).await,
    };
    let proxy = CuttableProxy::start(integration_tests::server_addr()).await;
    let mut env = env(
        &stack,
        &[
            ("DATABASE_CONNECT_TIMEOUT", "500ms"),
            ("DATABASE_OUTAGE_PAUSE", "2s"),
            ("PREFETCH", "8"),
            ("MAX_CONCURRENCY", "4"),
        ],
    );
    env.retain(|(key, _)| *key != "DATABASE_URL");
    env.push((
        "DATABASE_URL",
        format!("postgres://postgres@{}/{}", proxy.addr, stack.db.name),
    ));
    let worker = TestApp::spawn(&["consume"], &env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    proxy.cut().await;
    publish_sign_ups(&stack, 50).await;
    eventually(
        "the consumer paused, every delivery back in the queue for anyone to take",
        Duration::from_secs(30),
        || async {
            worker.metric(metrics::CONSUMER_CONNECTED).await == Some(0.0)
                && stack.main_queue_ready().await == 50
        },
    )
    .await;
    // Paused for five times the pause: nothing is taken again while the database is down.
    throughout(
        "still paused, all 50 in the queue and none in flight",
        Duration::from_secs(10),
        || async {
            stack.main_queue_ready().await == 50
                && worker.metric(metrics::DELIVERIES_IN_FLIGHT).await == Some(0.0)
                && worker.metric(metrics::CONSUMER_CONNECTED).await == Some(0.0)
        },
    )
    .await;

    proxy.restore();
    wait_for_workspaces(&stack, 50, Duration::from_secs(60)).await;
    assert_eq!(
        stack.dead_letters_ready().await,
        0,
        "nothing past the delivery limit"
    );
    assert_eq!(worker.metric(metrics::WORKSPACE_FAILED).await, Some(0.0));
}
