//! Batch provisioning: several users in one transaction, the same rules as one at a time, and a
//! bad event never costs its batch-mates more than one retry.

use std::time::Duration;

use integration_tests::app::TestApp;
use integration_tests::broker::TestBroker;
use integration_tests::clerk::{UserEvent, deleted_body, provision};
use integration_tests::ops::series;
use integration_tests::{TestDb, eventually};
use worker::domain::{Event, UserProfile};
use worker::error::{FailureReason, ProvisionError};
use worker::metrics;
use worker::outcome::Outcome;
use worker::provision::{Provisioned, provision_batch};

fn profile(event: &UserEvent) -> Box<UserProfile> {
    match worker::clerk::parse_event(&event.body()) {
        Ok(Event::UserChanged(profile)) => profile,
        other => panic!("not a user change: {other:?}"),
    }
}

async fn batch(db: &TestDb, events: &[UserEvent]) -> Result<Vec<Provisioned>, ProvisionError> {
    let profiles: Vec<Box<UserProfile>> = events.iter().map(profile).collect();
    let refs: Vec<&UserProfile> = profiles.iter().map(AsRef::as_ref).collect();
    provision_batch(&db.pool(), &refs).await
}

fn sign_ups(n: usize) -> Vec<UserEvent> {
    (0..n)
        .map(|i| {
            UserEvent::created(
                &format!("user_2batch{i:03}"),
                &format!("batch{i}@example.com"),
                (i % 2 == 0).then_some(&*format!("batch_{i}")),
            )
        })
        .collect()
}

fn outcomes(results: &[Provisioned]) -> Vec<Outcome> {
    results.iter().map(|r| r.outcome).collect()
}

#[tokio::test]
async fn a_batch_of_new_users_creates_each_once_and_a_repeat_changes_nothing() {
    let db = TestDb::migrated().await;
    let events = sign_ups(20);
    let first = batch(&db, &events).await.unwrap();
    assert_eq!(outcomes(&first), vec![Outcome::Created; 20]);
    assert_eq!(db.scalar("SELECT count(*) FROM workspaces").await, 20);
    assert_eq!(
        db.scalar("SELECT count(*) FROM users WHERE username = 'batch1'")
            .await,
        1,
        "derived from the email"
    );
    let rows = db.rows("SELECT * FROM users ORDER BY id").await;

    let again = batch(&db, &events).await.unwrap();
    assert_eq!(outcomes(&again), vec![Outcome::AlreadyExisted; 20]);
    assert_eq!(
        db.rows("SELECT * FROM users ORDER BY id").await,
        rows,
        "not even updated_at moves"
    );
    let workspace_ids: Vec<_> = first.iter().map(|r| r.workspace_id.clone()).collect();
    assert_eq!(
        again
            .iter()
            .map(|r| r.workspace_id.clone())
            .collect::<Vec<_>>(),
        workspace_ids
    );
}

#[tokio::test]
async fn overlapping_batches_at_once_never_deadlock_and_the_newest_change_wins() {
    let db = TestDb::migrated().await;
    // Big enough that the two batches of a round overlap in time.
    let users = sign_ups(200);
    batch(&db, &users).await.unwrap();
    for round in 1..=10_i64 {
        // The same users, in opposite orders, each batch newer for half of them.
        let forward: Vec<UserEvent> = users
            .iter()
            .enumerate()
            .map(|(i, user)| user.updated(round * 10 + (i % 2) as i64))
            .collect();
        let backward: Vec<UserEvent> = users
            .iter()
            .enumerate()
            .rev()
            .map(|(i, user)| user.updated(round * 10 + 1 - (i % 2) as i64))
            .collect();
        let (a, b) = tokio::join!(batch(&db, &forward), batch(&db, &backward));
        a.unwrap_or_else(|err| panic!("round {round}: {err}"));
        b.unwrap_or_else(|err| panic!("round {round}: {err}"));
    }
    let newest = users[0].updated(10 * 10 + 1).updated_at;
    let stored = db
        .scalar(&format!(
            "SELECT count(*) FROM users WHERE (extract(epoch FROM clerk_updated_at) * 1000)::bigint = {newest}"
        ))
        .await;
    assert_eq!(stored, 200, "every user holds its newest change");
    assert_eq!(db.scalar("SELECT count(*) FROM workspaces").await, 200);
}

#[tokio::test]
async fn a_mixed_batch_follows_the_one_at_a_time_rules() {
    let db = TestDb::migrated().await;
    let existing = UserEvent::created("user_2old", "old@example.com", Some("old_user"));
    provision(&db.conn, &existing.updated(5_000).body())
        .await
        .unwrap();
    let deleted = UserEvent::created("user_2gone", "gone@example.com", Some("gone_user"));
    provision(&db.conn, &deleted.body()).await.unwrap();
    provision(
        &db.conn,
        &deleted_body("user_2gone", deleted.updated_at + 10_000),
    )
    .await
    .unwrap();
    let kept = UserEvent::created("user_2kept", "kept@example.com", None);
    provision(&db.conn, &kept.body()).await.unwrap();

    let events = [
        UserEvent {
            last_name: Some("Newer".into()),
            ..existing.updated(9_000)
        },
        UserEvent {
            last_name: Some("Older".into()),
            ..existing.updated(1_000)
        },
        deleted.updated(1_000),
        UserEvent::created("user_2new", "new@example.com", None),
        UserEvent {
            email: Some("kept.new@example.com".into()),
            ..kept.updated(1_000)
        },
    ];
    // Two events of one user never share a batch (the consumer sees to it): run the older alone.
    let results = batch(
        &db,
        &[
            events[0].clone(),
            events[2].clone(),
            events[3].clone(),
            events[4].clone(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        outcomes(&results),
        [
            Outcome::Updated,
            Outcome::Stale,
            Outcome::Created,
            Outcome::Updated
        ]
    );
    let stale = batch(&db, &[events[1].clone(), events[3].clone()])
        .await
        .unwrap();
    assert_eq!(outcomes(&stale), [Outcome::Stale, Outcome::AlreadyExisted]);

    let old = &db
        .rows("SELECT last_name FROM users WHERE id = 'user_2old'")
        .await[0];
    assert_eq!(old["last_name"], "Newer");
    assert_eq!(
        db.scalar("SELECT count(*) FROM users WHERE id = 'user_2gone'")
            .await,
        0,
        "the tombstone holds"
    );
    let kept_row = &db
        .rows("SELECT email, username FROM users WHERE id = 'user_2kept'")
        .await[0];
    assert_eq!(
        (kept_row["email"].as_str(), kept_row["username"].as_str()),
        (Some("kept.new@example.com"), Some("kept")),
        "a derived username stays"
    );
}

#[tokio::test]
async fn a_conflict_fails_the_whole_batch_and_writes_nothing() {
    let db = TestDb::migrated().await;
    db.execute("INSERT INTO users (id, email, username) VALUES ('user_2owner', 'batch3@example.com', 'owner')").await;
    match batch(&db, &sign_ups(10)).await {
        Err(ProvisionError::Conflict(rejected)) => {
            assert_eq!(rejected.reason, FailureReason::EmailConflict)
        }
        other => panic!("expected the conflict, got {other:?}"),
    }
    assert_eq!(db.scalar("SELECT count(*) FROM workspaces").await, 0);
}

#[tokio::test]
async fn the_consumer_batches_and_one_bad_event_does_not_sink_its_batch_mates() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    db.execute("INSERT INTO users (id, email, username) VALUES ('user_2owner', 'batch7@example.com', 'owner')").await;
    let events: Vec<(String, Vec<u8>, String)> = sign_ups(60)
        .iter()
        .enumerate()
        .map(|(i, e)| ("user.created".to_owned(), e.body(), format!("msg_batch{i}")))
        .collect();
    broker.publish_many(&events).await;
    let mut env = broker.env();
    env.push(("DATABASE_URL", db.settings.expose_url().to_owned()));
    env.push(("BATCH_SIZE", "16".into()));
    // One retry from a delay queue (100 ms at least), then past its window: a dead letter.
    env.push(("CONFLICT_RETRY_WINDOW", "50ms".into()));
    env.push(("RETRY_INITIAL_DELAY", "10ms".into()));
    let worker = TestApp::spawn(&["consume"], &env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    eventually(
        "59 workspaces and one dead letter",
        Duration::from_secs(30),
        || async {
            db.scalar("SELECT count(*) FROM workspaces").await == 59
                && worker.expect_metric(metrics::WORKSPACE_FAILED).await == 1.0
        },
    )
    .await;
    let dead = integration_tests::dead_letters::take_all(&broker, &db).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id.as_deref(), Some("msg_batch7"));
    assert_eq!(
        dead[0].header("x-failure-reason").as_deref(),
        Some("email_conflict")
    );
    assert!(
        worker
            .expect_metric(&format!("{}_count", metrics::BATCH_SIZE))
            .await
            >= 1.0,
        "batches happened"
    );
    assert_eq!(worker.expect_metric(metrics::WORKSPACE_CREATED).await, 59.0);
    assert_eq!(
        worker.expect_metric(metrics::EVENTS_RETRIED).await,
        1.0,
        "the fallback is not a retry; the conflict retried once, from a delay queue"
    );
    assert_eq!(
        worker
            .expect_metric(&series(
                metrics::EVENTS_RETRIED,
                &[("reason", "email_conflict")]
            ))
            .await,
        1.0
    );
}
