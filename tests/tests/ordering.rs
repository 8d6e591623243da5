//! Ordering and replay safety: whatever the order, duplication or replay of a user's events, the
//! database ends in Clerk's final state. Named cases first, then a model-based randomized test
//! through the real consumer.

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::app::TestApp;
use integration_tests::broker::TestBroker;
use integration_tests::clerk::{UserEvent, deleted_body, provision};
use integration_tests::{TestDb, eventually};
use worker::provision::Outcome;

async fn outcome(db: &TestDb, body: &[u8]) -> Outcome {
    provision(&db.conn, body)
        .await
        .expect("provisioned")
        .outcome
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.scalar(sql).await
}

fn sam() -> UserEvent {
    UserEvent::created("user_2sam", "sam@example.com", Some("sam_user"))
}

#[tokio::test]
async fn a_delete_before_the_create_keeps_the_user_deleted() {
    let db = TestDb::migrated().await;
    let created = sam();
    let deleted = deleted_body("user_2sam", created.updated_at + 10_000);
    assert_eq!(outcome(&db, &deleted).await, Outcome::AlreadyDeleted);
    assert_eq!(outcome(&db, &created.body()).await, Outcome::Stale);
    assert_eq!(
        outcome(&db, &created.updated(5_000).body()).await,
        Outcome::Stale
    );
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM workspaces").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM user_tombstones").await, 1);
}

#[tokio::test]
async fn a_create_after_a_delete_comes_back_only_with_a_newer_clock() {
    let db = TestDb::migrated().await;
    let created = sam();
    outcome(&db, &created.body()).await;
    let deleted_at = created.updated_at + 10_000;
    assert_eq!(
        outcome(&db, &deleted_body("user_2sam", deleted_at)).await,
        Outcome::Deleted
    );

    let older = UserEvent {
        updated_at: deleted_at - 1,
        ..sam()
    };
    let same_instant = UserEvent {
        updated_at: deleted_at,
        ..sam()
    };
    assert_eq!(outcome(&db, &older.body()).await, Outcome::Stale);
    assert_eq!(
        outcome(&db, &same_instant.body()).await,
        Outcome::Stale,
        "a tie goes to the deletion"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 0);

    let recreated = UserEvent {
        updated_at: deleted_at + 1,
        ..sam()
    };
    assert_eq!(outcome(&db, &recreated.body()).await, Outcome::Created);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM workspaces WHERE user_id = 'user_2sam'"
        )
        .await,
        1
    );
    // The old deletion, replayed, does not remove the newer incarnation.
    assert_eq!(
        outcome(&db, &deleted_body("user_2sam", deleted_at)).await,
        Outcome::Stale
    );
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn a_duplicate_delete_changes_nothing() {
    let db = TestDb::migrated().await;
    let created = sam();
    outcome(&db, &created.body()).await;
    let deleted = deleted_body("user_2sam", created.updated_at + 10_000);
    assert_eq!(outcome(&db, &deleted).await, Outcome::Deleted);
    let tombstone = db.rows("SELECT * FROM user_tombstones").await;
    assert_eq!(outcome(&db, &deleted).await, Outcome::AlreadyDeleted);
    assert_eq!(db.rows("SELECT * FROM user_tombstones").await, tombstone);
    let older = deleted_body("user_2sam", created.updated_at + 5_000);
    assert_eq!(outcome(&db, &older).await, Outcome::AlreadyDeleted);
    assert_eq!(
        db.rows("SELECT * FROM user_tombstones").await,
        tombstone,
        "the newest deletion time stays"
    );
}

#[tokio::test]
async fn concurrent_events_of_one_user_settle_on_the_newest() {
    let db = TestDb::migrated().await;
    let created = sam();
    let deleted_at = created.updated_at + 50_000;
    let mut bodies = vec![created.body(), deleted_body("user_2sam", deleted_at)];
    for step in 1..40 {
        bodies.push(
            UserEvent {
                last_name: Some(format!("V{step}")),
                ..created.updated(step * 1_000)
            }
            .body(),
        );
    }
    for _ in 0..5 {
        db.execute("DELETE FROM users; DELETE FROM user_tombstones")
            .await;
        let results =
            futures::future::join_all(bodies.iter().map(|b| provision(&db.conn, b))).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(
            count(&db, "SELECT count(*) FROM users").await,
            0,
            "the deletion is the newest event"
        );
    }
}

#[tokio::test]
async fn expired_tombstones_are_purged_by_the_worker() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    db.execute(
        "INSERT INTO user_tombstones VALUES ('user_2old', now() - interval '2 hours'), \
         ('user_2recent', now() - interval '10 minutes')",
    )
    .await;
    let mut env = broker.env();
    env.push(("DATABASE_URL", db.settings.expose_url().to_owned()));
    env.push(("TOMBSTONE_RETENTION", "1h".into()));
    env.push(("TOMBSTONE_PURGE_INTERVAL", "200ms".into()));
    let worker = TestApp::spawn(&["consume"], &env).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    eventually(
        "the old tombstone to go",
        Duration::from_secs(20),
        || async {
            count(
                &db,
                "SELECT count(*) FROM user_tombstones WHERE user_id = 'user_2old'",
            )
            .await
                == 0
        },
    )
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM user_tombstones WHERE user_id = 'user_2recent'"
        )
        .await,
        1
    );
}

// ---------------------------------------------------------------------------------------------
// The model-based test.

/// What Clerk says about a user at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Version {
    clock: i64,
    email: String,
    username: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
}

#[derive(Clone, Debug)]
enum Step {
    Upsert { created: bool, version: Version },
    Delete { clock: i64 },
}

/// One user's events in Clerk's order.
struct History {
    id: String,
    index: usize,
    steps: Vec<Step>,
}

impl History {
    /// Clerk's final state: the last event decides.
    fn final_state(&self) -> Option<&Version> {
        match self.steps.last()? {
            Step::Upsert { version, .. } => Some(version),
            Step::Delete { .. } => None,
        }
    }

    fn incarnations(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Upsert { created: true, .. }))
            .count()
    }

    fn body(&self, step: &Step) -> Vec<u8> {
        match step {
            Step::Upsert { created, version } => UserEvent {
                event_type: if *created {
                    "user.created"
                } else {
                    "user.updated"
                },
                id: self.id.clone(),
                email: Some(version.email.clone()),
                username: version.username.clone(),
                first_name: version.first_name.clone(),
                last_name: version.last_name.clone(),
                image_url: Some("https://img.clerk.com/model".into()),
                updated_at: version.clock,
            }
            .body(),
            Step::Delete { clock } => deleted_body(&self.id, *clock),
        }
    }

    /// The username the product stores: the chosen one, or the one derived from the email's
    /// local part (`u00042@...` gives `u00042`).
    fn expected_username(&self, version: &Version) -> String {
        version
            .username
            .clone()
            .unwrap_or_else(|| format!("u{:05}", self.index))
    }
}

/// Random histories: a creation, some updates, maybe a deletion, maybe a re-creation with a
/// newer clock. A user's emails share their local part and usernames are either always chosen or
/// always absent (a Clerk instance setting), so the final state does not depend on delivery order.
fn generate(rng: &mut fastrand::Rng, users: usize) -> Vec<History> {
    (0..users)
        .map(|index| {
            let chosen_usernames = rng.bool();
            let mut clock = 1_764_300_000_000 + rng.i64(0..1_000_000);
            let mut steps = Vec::new();
            let incarnations = if rng.u8(0..10) == 0 { 2 } else { 1 };
            for incarnation in 0..incarnations {
                for update in 0..=rng.usize(0..4) {
                    clock += rng.i64(1..5_000);
                    let k = steps.len();
                    let version = Version {
                        clock,
                        email: format!("u{index:05}@v{k}.example.com"),
                        username: chosen_usernames.then(|| format!("u{index:05}_v{k}")),
                        first_name: Some(format!("First{k}")),
                        last_name: rng.bool().then(|| format!("Last{k}")),
                    };
                    steps.push(Step::Upsert {
                        created: update == 0,
                        version,
                    });
                }
                if incarnation + 1 < incarnations || rng.u8(0..10) < 3 {
                    clock += rng.i64(1..5_000);
                    steps.push(Step::Delete { clock });
                }
            }
            History {
                id: format!("user_2model{index:05}"),
                index,
                steps,
            }
        })
        .collect()
}

/// Every event once, some twice or three times, some replayed at the very end, all shuffled.
fn deliveries(rng: &mut fastrand::Rng, histories: &[History]) -> Vec<(String, Vec<u8>)> {
    let mut deliveries = Vec::new();
    let mut replays = Vec::new();
    for history in histories {
        for (n, step) in history.steps.iter().enumerate() {
            let id = format!("msg_{}_{n}", history.id);
            let body = history.body(step);
            let copies = match rng.u8(0..10) {
                0..=1 => 2,
                2 => 3,
                _ => 1,
            };
            for _ in 0..copies {
                deliveries.push((id.clone(), body.clone()));
            }
            if rng.u8(0..10) == 0 {
                replays.push((id, body));
            }
        }
    }
    rng.shuffle(&mut deliveries);
    deliveries.extend(replays);
    deliveries
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test]
async fn random_histories_in_random_order_end_in_clerks_final_state() {
    let seed = setting("MODEL_SEED", 20_261_128);
    let users = setting("MODEL_USERS", 300) as usize;
    eprintln!("model test: MODEL_SEED={seed} MODEL_USERS={users}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let histories = generate(&mut rng, users);
    let deliveries = deliveries(&mut rng, &histories);

    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    for (id, body) in &deliveries {
        let event_type = serde_json::from_slice::<serde_json::Value>(body).unwrap()["type"]
            .as_str()
            .unwrap()
            .to_owned();
        broker.publish(&event_type, body, id).await;
    }
    let mut env = broker.env();
    env.push(("DATABASE_URL", db.settings.expose_url().to_owned()));
    env.push(("MAX_CONCURRENCY", "16".into()));
    let mut worker = TestApp::spawn(&["consume"], &env).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    let total = deliveries.len() as f64;
    eventually(
        &format!("{total} deliveries processed"),
        Duration::from_secs(300),
        || async { worker.metric("events_processed_total").await >= total },
    )
    .await;

    let page = worker.metrics().await;
    let value = |series: &str| integration_tests::ops::metric_value(&page, series);
    assert_eq!(
        value("events_processed_total"),
        total,
        "each delivery exactly once"
    );
    assert_eq!(
        value("workspace_failed_total"),
        0.0,
        "no dead letters: seed {seed}"
    );
    assert!(
        value(r#"events_processed_total{type="user.updated",outcome="stale"}"#) > 0.0,
        "the shuffle made some events stale"
    );

    let stored: BTreeMap<String, serde_json::Value> = db
        .rows(
            "SELECT u.id, u.email, u.username, u.first_name, u.last_name, \
               (SELECT count(*) FROM workspaces w WHERE w.user_id = u.id) AS workspaces \
               FROM users u",
        )
        .await
        .into_iter()
        .map(|row| (row["id"].as_str().unwrap_or_default().to_owned(), row))
        .collect();
    let mut expected_users = 0;
    for history in &histories {
        let row = stored.get(&history.id);
        match (history.final_state(), row) {
            (None, None) => {}
            (Some(version), Some(row)) => {
                expected_users += 1;
                let context = format!("{} (seed {seed}): {row} vs {version:?}", history.id);
                assert_eq!(row["email"], version.email.as_str(), "{context}");
                assert_eq!(
                    row["username"],
                    history.expected_username(version).as_str(),
                    "{context}"
                );
                assert_eq!(
                    row["first_name"].as_str(),
                    version.first_name.as_deref(),
                    "{context}"
                );
                assert_eq!(
                    row["last_name"].as_str(),
                    version.last_name.as_deref(),
                    "{context}"
                );
                assert_eq!(row["workspaces"], 1, "{context}");
            }
            (expected, actual) => panic!(
                "{} (seed {seed}): expected {expected:?}, stored {actual:?}",
                history.id
            ),
        }
    }
    assert_eq!(
        stored.len(),
        expected_users,
        "no user the model does not know"
    );
    let orphans = db.scalar("SELECT count(*) FROM workspaces w WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = w.user_id)").await;
    assert_eq!(orphans, 0);
    let incarnations: usize = histories.iter().map(History::incarnations).sum();
    let created = value("workspace_created_total");
    assert!(
        created >= expected_users as f64 && created <= incarnations as f64,
        "created {created} outside {expected_users}..={incarnations}"
    );
    eprintln!(
        "model test: {users} users, {} deliveries, {expected_users} users at the end, {created} workspaces created, {} stale",
        deliveries.len(),
        value(r#"events_processed_total{type="user.updated",outcome="stale"}"#)
            + value(r#"events_processed_total{type="user.created",outcome="stale"}"#)
            + value(r#"events_processed_total{type="user.deleted",outcome="stale"}"#),
    );
    worker.terminate();
    let stopped = worker.wait_stopped(Duration::from_secs(30)).await;
    assert!(stopped.is_ok(), "{stopped:?}");
}
