//! A database outage longer than the broker's `consumer_timeout`, on a RabbitMQ node the test
//! starts itself with a short `consumer_timeout` (checked every second) and a delivery limit of 2:
//! nothing is dead-lettered, no message is returned more than once, and the messages stay
//! visible in the queue while the worker waits for the database. The shared broker's settings
//! are never touched.

use std::time::{Duration, Instant};

use integration_tests::app::TestApp;
use integration_tests::broker::TestBroker;
use integration_tests::clerk::UserEvent;
use integration_tests::ops::series;
use integration_tests::proxy::CuttableProxy;
use integration_tests::rabbit_nodes::RabbitNodes;
use integration_tests::{TestDb, eventually, throughout};
use worker::metrics;

/// 5 s, checked on every channel tick of 1 s (3.10's default tick is 60 s).
const SHORT_CONSUMER_TIMEOUT: &str =
    "[{rabbit, [{consumer_timeout, 5000}, {channel_tick_interval, 1000}]}].\n";

#[tokio::test]
async fn a_database_outage_longer_than_the_consumer_timeout_dead_letters_nothing() {
    let nodes = RabbitNodes::start_configured(1, "", SHORT_CONSUMER_TIMEOUT);
    let broker = TestBroker::on(&nodes.amqp_url(1), 2).await;
    let db = TestDb::migrated().await;
    let proxy = CuttableProxy::start(integration_tests::server_addr()).await;
    let mut env = broker.env();
    env.extend([
        (
            "DATABASE_URL",
            format!("postgres://postgres@{}/{}", proxy.addr, db.name),
        ),
        ("DATABASE_MIN_CONNECTIONS", "1".into()),
        ("DATABASE_CONNECT_TIMEOUT", "500ms".into()),
        ("DATABASE_OUTAGE_PAUSE", "2s".into()),
        ("RETRY_INITIAL_DELAY", "20ms".into()),
        ("RETRY_MAX_DELAY", "500ms".into()),
        ("PREFETCH", "8".into()),
        ("MAX_CONCURRENCY", "4".into()),
    ]);
    let worker = TestApp::spawn(&["consume"], &env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    proxy.cut().await;
    let sign_ups: Vec<(String, Vec<u8>, String)> = (0..30)
        .map(|i| {
            let event = UserEvent::created(
                &format!("user_2outage{i}"),
                &format!("outage{i}@example.com"),
                Some(&format!("outage_{i}")),
            );
            (
                "user.created".to_owned(),
                event.body(),
                format!("msg_outage{i}"),
            )
        })
        .collect();
    broker.publish_many(&sign_ups).await;
    // Four times the consumer timeout, each second of it checked by the broker.
    let outage = Duration::from_secs(20);
    let published = Instant::now();
    let paused_with_every_message_back = || async {
        worker.metric(metrics::CONSUMER_CONNECTED).await == Some(0.0)
            && broker.ready(&broker.topology.queue).await == 30
    };
    eventually(
        "the consumer paused, every message back in the queue",
        outage,
        paused_with_every_message_back,
    )
    .await;
    throughout(
        "every message visible to other workers during the outage, none dead-lettered",
        outage.saturating_sub(published.elapsed()),
        || async {
            paused_with_every_message_back().await
                && broker.ready(&broker.topology.dead_letter_queue).await == 0
        },
    )
    .await;

    proxy.restore();
    eventually("all 30 provisioned", Duration::from_secs(60), || async {
        db.scalar("SELECT count(*) FROM workspaces").await == 30
    })
    .await;
    assert_eq!(
        broker.ready(&broker.topology.dead_letter_queue).await,
        0,
        "nothing was returned twice (the delivery limit is 2)"
    );
    assert_eq!(worker.metric(metrics::WORKSPACE_FAILED).await, Some(0.0));
}

#[tokio::test]
async fn a_database_not_migrated_yet_pauses_the_consumer_until_it_is_without_looping() {
    use migration::MigratorTrait;
    let broker = TestBroker::with_delivery_limit(2).await;
    let db = TestDb::migrated().await;
    // The four newest migrations undone (the dead-letter store; the reconcile tables; v3 brings
    // v2 back, whose own down drops the function): every event fails as "unavailable" (function
    // missing).
    migration::Migrator::down(&db.conn, Some(4))
        .await
        .expect("one migration down");
    let mut env = broker.env();
    env.extend([
        ("DATABASE_URL", db.settings.expose_url().to_owned()),
        ("DATABASE_MIN_CONNECTIONS", "1".into()),
        ("DATABASE_OUTAGE_PAUSE", "1s".into()),
        ("RETRY_INITIAL_DELAY", "20ms".into()),
        ("RETRY_MAX_DELAY", "200ms".into()),
        ("PREFETCH", "8".into()),
    ]);
    let worker = TestApp::spawn(&["consume"], &env).await;
    let sign_ups: Vec<(String, Vec<u8>, String)> = (0..10)
        .map(|i| {
            let event = UserEvent::created(
                &format!("user_2unmigrated{i}"),
                &format!("unmigrated{i}@example.com"),
                Some(&format!("unmigrated_{i}")),
            );
            (
                "user.created".to_owned(),
                event.body(),
                format!("msg_unmigrated{i}"),
            )
        })
        .collect();
    broker.publish_many(&sign_ups).await;
    // Paused, and not merely not started yet: the deliveries were tried (and found the function
    // missing) before the session ended and handed them back.
    let unavailable = series(
        metrics::EVENTS_RETRIED,
        &[("reason", "database_unavailable")],
    );
    eventually(
        "the consumer tried, then paused",
        // Beside the other test's private RabbitMQ node booting on the same 2 cores, the first
        // attempts have been seen to take more than 20 s to end in the pause (1 run in 8 here).
        Duration::from_secs(45),
        || async {
            worker.expect_metric(&unavailable).await > 0.0
                && worker.metric(metrics::CONSUMER_CONNECTED).await == Some(0.0)
                && broker.ready(&broker.topology.queue).await == 10
        },
    )
    .await;
    // Long enough for several pauses if it looped: each would add to every delivery count, and
    // a delivery limit of 2 would dead-letter them.
    throughout(
        "still paused, every message in the queue, none dead-lettered",
        Duration::from_secs(6),
        || async {
            worker.metric(metrics::CONSUMER_CONNECTED).await == Some(0.0)
                && broker.ready(&broker.topology.queue).await == 10
                && broker.ready(&broker.topology.dead_letter_queue).await == 0
        },
    )
    .await;

    migration::Migrator::up(&db.conn, None)
        .await
        .expect("migrated");
    eventually("all 10 provisioned", Duration::from_secs(60), || async {
        db.scalar("SELECT count(*) FROM workspaces").await == 10
    })
    .await;
    // None dead-lettered: not in the queue, nor moved by the keeper into the store once it was
    // back (while it was missing, letters could only have waited in the queue).
    assert!(
        integration_tests::dead_letters::take_all(&broker, &db)
            .await
            .is_empty()
    );
}
