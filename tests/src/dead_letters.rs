//! Dead letters wherever they are: still in the dead-letter queue, or moved into the store
//! (`dead_letters`) by a worker's keeper or a `worker dlq` command. Tests of the consumer assert
//! on what was dead-lettered, whichever of the two holds it now.

use std::time::{Duration, Instant};

use base64::Engine;
use lapin::BasicProperties;

use crate::TestDb;
use crate::broker::{Message, TestBroker};
use crate::clerk::UserEvent;

/// How long the store must stay unchanged (with the queue empty) before it is read: a keeper
/// holds a batch for the moment between taking it and committing it.
const SETTLED: Duration = Duration::from_millis(300);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Puts `n` sign-ups (users `user_2<prefix><i>`, svix ids `msg_<prefix><i>`, `i` in three
/// digits) straight into the dead-letter queue with `reason`, as the worker would have. A
/// `replayable` one provisions when replayed; otherwise it has no email and fails again.
pub async fn publish(broker: &TestBroker, n: usize, reason: &str, prefix: &str, replayable: bool) {
    for i in 0..n {
        let id = format!("{prefix}{i:03}");
        let mut user =
            UserEvent::created(&format!("user_2{id}"), &format!("{id}@example.com"), None);
        if !replayable {
            user.email = None;
        }
        broker
            .publish_dead_letter("user.created", &user.body(), &format!("msg_{id}"), reason)
            .await;
    }
}

/// Waits until the store holds `n` letters.
pub async fn stored(db: &TestDb, n: i64) {
    crate::eventually(
        "the letters in the store",
        Duration::from_secs(20),
        || async { db.scalar("SELECT count(*) FROM dead_letters").await == n },
    )
    .await;
}

/// Takes every dead letter: from the queue, and from the store (deleting the rows), once letters
/// in a keeper's hands have landed.
pub async fn take_all(broker: &TestBroker, db: &TestDb) -> Vec<Message> {
    settle(broker, db).await;
    let mut letters = broker.take_dead_letters().await;
    let rows = db
        .rows(
            "SELECT id, svix_id, event_type, encode(body, 'base64') AS body, headers, properties \
             FROM dead_letters ORDER BY id",
        )
        .await;
    if let Some(last) = rows.last().and_then(|row| row["id"].as_i64()) {
        db.execute(&format!("DELETE FROM dead_letters WHERE id <= {last}"))
            .await;
    }
    letters.extend(rows.iter().map(message_of));
    letters
}

/// Dead letters waiting for an operator: ready in the queue, or open in the store.
pub async fn open(broker: &TestBroker, db: &TestDb) -> u32 {
    let queued = broker.ready(&broker.topology.dead_letter_queue).await;
    let stored = db
        .scalar("SELECT count(*) FROM dead_letters WHERE status = 'open'")
        .await;
    queued + u32::try_from(stored).unwrap_or(u32::MAX)
}

/// Waits until the queue is empty and the store has stopped changing, or the queue is not being
/// consumed (no worker runs: what is there stays there).
async fn settle(broker: &TestBroker, db: &TestDb) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = (u32::MAX, i64::MIN);
    loop {
        let now = (
            broker.ready(&broker.topology.dead_letter_queue).await,
            db.scalar("SELECT count(*) FROM dead_letter_history").await,
        );
        if now == last || Instant::now() > deadline {
            return;
        }
        last = now;
        tokio::time::sleep(SETTLED).await;
    }
}

fn message_of(row: &serde_json::Value) -> Message {
    let text = |name: &str| row[name].as_str().unwrap_or_default().to_owned();
    let headers = worker::dead_letter::headers_from_json(&row["headers"]);
    Message {
        body: base64::engine::general_purpose::STANDARD
            .decode(text("body").replace('\n', ""))
            .expect("base64 body"),
        routing_key: text("event_type"),
        message_id: Some(text("svix_id")),
        properties: BasicProperties::default()
            .with_message_id(text("svix_id").as_str().into())
            .with_headers(headers.clone()),
        headers,
    }
}
