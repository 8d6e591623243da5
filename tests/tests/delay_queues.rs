//! Deferred retries through the broker's delay queues: each queue has one fixed TTL, so a short
//! wait is never held behind a longer one; a conflict comes back for CONFLICT_RETRY_WINDOW and
//! is then dead-lettered with its reason; the retry queue of earlier releases is declared as it
//! was and still drains into the main queue.

use std::time::{Duration, Instant};

use integration_tests::app::TestApp;
use integration_tests::broker::TestBroker;
use integration_tests::clerk::UserEvent;
use integration_tests::eventually;
use integration_tests::ops::series;
use integration_tests::stack::Stack;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use worker::metrics;
use worker::topology::header;

/// Short delays: deferred retries wait 100 ms or 300 ms.
const FAST_RETRIES: [(&str, &str); 2] = [
    ("RETRY_INITIAL_DELAY", "20ms"),
    ("RETRY_MAX_DELAY", "500ms"),
];

async fn consume(stack: &Stack, extra: &[(&'static str, &str)]) -> TestApp {
    stack
        .start(&["consume"], &[&FAST_RETRIES[..], extra].concat())
        .await
}

/// A Clerk event's properties as the ingress publishes them, plus `headers`.
fn properties(message_id: &str, mut headers: FieldTable) -> BasicProperties {
    let now = chrono::Utc::now().timestamp_millis();
    headers.insert(header::RECEIVED_AT_MS.into(), AMQPValue::LongLongInt(now));
    BasicProperties::default()
        .with_message_id(message_id.into())
        .with_content_type("application/json".into())
        .with_headers(headers)
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

#[tokio::test]
async fn a_short_wait_is_not_held_behind_a_longer_one() {
    let broker = TestBroker::new().await;
    let retry = &broker.topology.retry;
    let ten_seconds = retry.delay_queue(Duration::from_secs(10));
    let shortest = retry.delay_queue(Duration::ZERO);
    assert_eq!(ten_seconds.wait, Duration::from_secs(10));
    assert_eq!(shortest.wait, Duration::from_millis(100));
    let body = UserEvent::created("user_2delay", "delay@example.com", None).body();
    let long = properties("msg_long", FieldTable::default());
    broker
        .publish_as(&ten_seconds.name, "user.created", &body, long)
        .await;
    let short = properties("msg_short", FieldTable::default());
    broker
        .publish_as(&shortest.name, "user.updated", &body, short)
        .await;

    let main = &broker.topology.queue;
    eventually(
        "the short wait back in the main queue",
        Duration::from_secs(3),
        || async { broker.ready(main).await == 1 },
    )
    .await;
    let back = broker.take_all(main).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].message_id.as_deref(), Some("msg_short"));
    assert_eq!(back[0].routing_key, "user.updated", "routing key kept");
    assert_eq!(back[0].body, body);
    assert_eq!(
        broker.ready(&ten_seconds.name).await,
        1,
        "the long wait is still waiting"
    );
}

#[tokio::test]
async fn the_retry_queue_of_earlier_releases_is_declared_as_it_was_and_still_drains() {
    let stack = Stack::new().await;
    let topology = &stack.broker.topology;
    // The arguments the retry queue has had since it was introduced: redeclaring it with any
    // others would be refused (406).
    let mut as_it_was = FieldTable::default();
    as_it_was.insert("x-queue-type".into(), text("quorum"));
    as_it_was.insert(
        "x-dead-letter-exchange".into(),
        text(&topology.retry.redeliver_exchange),
    );
    as_it_was.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    as_it_was.insert("x-overflow".into(), text("reject-publish"));
    let redeclared = stack
        .broker
        .declare_queue(&topology.retry.queue, as_it_was)
        .await;
    assert_eq!(redeclared, Ok(()));

    // What an earlier worker left there: a deferred retry with its own per-message TTL.
    let mut carried = FieldTable::default();
    carried.insert(header::RETRY_ATTEMPTS.into(), AMQPValue::LongLongInt(1));
    let left_behind = properties("msg_left_behind", carried).with_expiration("200".into());
    let event = UserEvent::created("user_2left", "left@example.com", Some("left"));
    stack
        .broker
        .publish_as(
            &topology.retry.exchange,
            "user.created",
            &event.body(),
            left_behind,
        )
        .await;
    let _worker = consume(&stack, &[]).await;
    eventually(
        "the event provisioned from the old retry queue",
        Duration::from_secs(20),
        || async { stack.workspaces().await == 1 },
    )
    .await;
    assert_eq!(stack.broker.ready(&topology.retry.queue).await, 0);
    assert_eq!(stack.dead_letters_ready().await, 0);
}

#[tokio::test]
async fn a_conflict_is_retried_for_its_window_however_many_attempts_then_dead_lettered() {
    let stack = Stack::new().await;
    stack
        .db
        .execute("INSERT INTO users (id, email, username) VALUES ('user_2owner', 'kept@example.com', 'owner')")
        .await;
    let window = [("CONFLICT_RETRY_WINDOW", "2s"), ("RETRY_MAX_ATTEMPTS", "2")];
    let worker = consume(&stack, &window).await;
    let thief = UserEvent::created("user_2thief", "kept@example.com", Some("thief"));
    let published = Instant::now();
    stack
        .broker
        .publish("user.created", &thief.body(), "msg_thief")
        .await;
    eventually("the dead letter", Duration::from_secs(20), || async {
        stack.dead_letters_ready().await == 1
    })
    .await;
    assert!(
        published.elapsed() >= Duration::from_secs(2),
        "dead-lettered after {:?}, inside its window",
        published.elapsed()
    );
    let letter = &stack.take_dead_letters().await[0];
    assert_eq!(
        letter.header(header::FAILURE_REASON).as_deref(),
        Some("email_conflict")
    );
    let attempts: u32 = letter
        .header(header::ATTEMPTS)
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!(
        attempts > 2,
        "{attempts} attempts: RETRY_MAX_ATTEMPTS limits only transient errors"
    );
    let retried = series(metrics::EVENTS_RETRIED, &[("reason", "email_conflict")]);
    assert_eq!(
        worker.expect_metric(&retried).await,
        f64::from(attempts - 1)
    );
    assert_eq!(
        stack.broker.ready(&stack.broker.topology.retry.queue).await,
        0,
        "nothing goes to the old retry queue"
    );
}

#[tokio::test]
async fn a_replayed_letter_the_broker_once_dead_lettered_still_comes_back_from_a_delay_queue() {
    let stack = Stack::new().await;
    stack
        .db
        .execute("INSERT INTO users (id, email, username) VALUES ('user_2holder', 'held@example.com', 'holder')")
        .await;
    let worker = consume(&stack, &[]).await;
    // Its history says the main queue dead-lettered it at its delivery limit once. Kept on the
    // way into a delay queue, that history would make the broker take the way back into the
    // main queue for a dead-letter cycle, and drop the message.
    let mut death = FieldTable::default();
    death.insert("queue".into(), text(&stack.broker.topology.queue));
    death.insert("reason".into(), text("delivery_limit"));
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    death.insert("exchange".into(), text(&stack.broker.topology.exchange));
    let mut headers = FieldTable::default();
    headers.insert(
        header::DEATH.into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    headers.insert(header::REPLAY_COUNT.into(), AMQPValue::LongLongInt(1));
    let replayed = UserEvent::created("user_2replayed", "held@example.com", Some("replayed"));
    stack
        .broker
        .publish_as(
            &stack.broker.topology.exchange,
            "user.created",
            &replayed.body(),
            properties("msg_replayed", headers),
        )
        .await;
    let retried = series(metrics::EVENTS_RETRIED, &[("reason", "email_conflict")]);
    eventually(
        "the conflict back from a delay queue once",
        Duration::from_secs(20),
        || async { worker.expect_metric(&retried).await >= 2.0 },
    )
    .await;

    stack
        .db
        .execute("DELETE FROM users WHERE id = 'user_2holder'")
        .await;
    eventually(
        "the replayed event provisioned",
        Duration::from_secs(20),
        || async {
            stack
                .db
                .scalar("SELECT count(*) FROM workspaces WHERE user_id = 'user_2replayed'")
                .await
                == 1
        },
    )
    .await;
    assert_eq!(stack.dead_letters_ready().await, 0);
}
