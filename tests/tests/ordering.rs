//! Ordering and replay safety: whatever the order, duplication or replay of a user's events, the
//! database ends in Clerk's final state. Named cases first, then a model-based randomized test
//! through the real consumer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use integration_tests::app::TestApp;
use integration_tests::broker::TestBroker;
use integration_tests::clerk::{UserEvent, deleted_body, provision};
use integration_tests::process::WorkerProcess;
use integration_tests::{TestDb, eventually};
use worker::domain::{DerivedUsername, Email, UserId};

const WORKER: &str = env!("CARGO_BIN_EXE_worker-under-test");
use integration_tests::ops::series;
use worker::metrics;
use worker::outcome::Outcome;

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
async fn deletion_is_final_whatever_the_clock_of_a_later_event() {
    let db = TestDb::migrated().await;
    let created = sam();
    outcome(&db, &created.body()).await;
    let deleted_at = created.updated_at + 10_000;
    assert_eq!(
        outcome(&db, &deleted_body("user_2sam", deleted_at)).await,
        Outcome::Deleted
    );
    for later in [
        deleted_at - 1,
        deleted_at,
        deleted_at + 1,
        deleted_at + 86_400_000,
    ] {
        let replayed = UserEvent {
            updated_at: later,
            ..sam()
        };
        assert_eq!(
            outcome(&db, &replayed.body()).await,
            Outcome::Stale,
            "a replay at {later} brings nobody back"
        );
    }
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM workspaces").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM user_tombstones").await, 1);
}

#[tokio::test]
async fn two_events_with_one_updated_at_converge_in_either_order() {
    let first = UserEvent {
        last_name: Some("Alpha".into()),
        ..sam()
    };
    let second = UserEvent {
        last_name: Some("Beta".into()),
        ..sam()
    };
    // Same `updated_at`, same envelope timestamp: the content digest decides.
    let bodies = [first.body(), second.body()];
    let mut results = Vec::new();
    for order in [[0, 1], [1, 0]] {
        let db = TestDb::migrated().await;
        for i in order {
            provision(&db.conn, &bodies[i]).await.expect("provisioned");
        }
        let row = &db.rows("SELECT last_name FROM users").await[0];
        results.push(row["last_name"].clone());
    }
    assert_eq!(results[0], results[1], "both orders end alike");
}

#[tokio::test]
async fn with_one_updated_at_the_later_envelope_timestamp_wins_in_either_order() {
    let earlier = UserEvent {
        last_name: Some("Sent first".into()),
        ..sam()
    };
    let later = UserEvent {
        last_name: Some("Sent second".into()),
        ..sam()
    };
    let bodies = [
        earlier.body_at(sam().updated_at + 10),
        later.body_at(sam().updated_at + 20),
    ];
    for order in [[0, 1], [1, 0]] {
        let db = TestDb::migrated().await;
        for i in order {
            provision(&db.conn, &bodies[i]).await.expect("provisioned");
        }
        let row = &db.rows("SELECT last_name FROM users").await[0];
        assert_eq!(row["last_name"], "Sent second", "order {order:?}");
    }
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
async fn tombstones_are_kept_for_ever_by_default() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    db.execute("INSERT INTO user_tombstones VALUES ('user_2ancient', now() - interval '400 days')")
        .await;
    let mut env = broker.env();
    env.push(("DATABASE_URL", db.settings.expose_url().to_owned()));
    env.push(("TOMBSTONE_PURGE_INTERVAL", "100ms".into()));
    let worker = TestApp::spawn(&["consume"], &env).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&db, "SELECT count(*) FROM user_tombstones").await, 1);
}

#[tokio::test]
async fn a_tombstone_retention_purges_older_tombstones_and_warns() {
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
    let worker = WorkerProcess::spawn(WORKER, &["consume"], &env).await;
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
    assert!(
        worker
            .logs()
            .contains("a replay of an event older than this could bring a deleted user back"),
        "{}",
        worker.logs()
    );
}

// ---------------------------------------------------------------------------------------------
// The model-based test: Clerk as a set of accounts whose emails and usernames move between them
// over time, the way real churn does, and every event delivered in any order, some twice.

/// What Clerk says about a live user at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Version {
    email: String,
    /// Chosen in Clerk; `None` means we derive one.
    username: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
}

#[derive(Clone, Debug)]
enum Change {
    Created(Version),
    Updated(Version),
    Deleted,
}

/// Clerk's world: accounts, each email and chosen username held by at most one live account at
/// any instant (Clerk enforces it), and the events it sent, in its order.
struct Clerk {
    rng: fastrand::Rng,
    clock: i64,
    created: usize,
    live: BTreeMap<usize, Version>,
    /// Every username an account could end with when Clerk has none for it: those it chose at
    /// some point, and the derived pair of every email it had.
    candidates: BTreeMap<usize, BTreeSet<String>>,
    events: Vec<(usize, i64, Change)>,
    emails: usize,
}

impl Clerk {
    fn new(seed: u64, accounts: usize) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            clock: 1_764_300_000_000,
            created: 0,
            live: BTreeMap::new(),
            candidates: BTreeMap::new(),
            events: Vec::new(),
            // Fewer addresses than accounts: emails are reused after deletions and changes.
            emails: accounts * 3 / 4,
        }
    }

    fn id(account: usize) -> String {
        format!("user_2churn{account:05}")
    }

    /// Emails `m000@…`; chosen usernames come from `m000…` too (colliding with the names we
    /// derive from those emails) and from `c000…`.
    fn free_email(&mut self) -> Option<String> {
        let taken: BTreeSet<&str> = self.live.values().map(|v| v.email.as_str()).collect();
        let free: Vec<String> = (0..self.emails)
            .map(|k| format!("m{k:03}@churn.example.com"))
            .filter(|e| !taken.contains(e.as_str()))
            .collect();
        (!free.is_empty()).then(|| free[self.rng.usize(0..free.len())].clone())
    }

    fn free_username(&mut self) -> Option<String> {
        let taken: BTreeSet<&str> = self
            .live
            .values()
            .filter_map(|v| v.username.as_deref())
            .collect();
        let prefix = if self.rng.bool() { "m" } else { "c" };
        let name = format!("{prefix}{:03}", self.rng.usize(0..self.emails));
        (!taken.contains(name.as_str())).then_some(name)
    }

    fn names(&mut self) -> (Option<String>, Option<String>) {
        let k = self.events.len();
        (
            Some(format!("First{k}")),
            self.rng.bool().then(|| format!("Last{k}")),
        )
    }

    fn emit(&mut self, account: usize, change: Change) {
        self.clock += self.rng.i64(1..2_000);
        if let Change::Created(version) | Change::Updated(version) = &change {
            let derived = derived_pair(&Self::id(account), &version.email);
            let candidates = self.candidates.entry(account).or_default();
            candidates.extend(derived);
            candidates.extend(version.username.clone());
            self.live.insert(account, version.clone());
        } else {
            self.live.remove(&account);
        }
        self.events.push((account, self.clock, change));
    }

    fn create(&mut self) {
        let Some(email) = self.free_email() else {
            return;
        };
        let username = if self.rng.bool() {
            self.free_username()
        } else {
            None
        };
        let (first_name, last_name) = self.names();
        let account = self.created;
        self.created += 1;
        self.emit(
            account,
            Change::Created(Version {
                email,
                username,
                first_name,
                last_name,
            }),
        );
    }

    fn random_live(&mut self) -> Option<usize> {
        let accounts: Vec<usize> = self.live.keys().copied().collect();
        (!accounts.is_empty()).then(|| accounts[self.rng.usize(0..accounts.len())])
    }

    /// A new email, a username chosen, changed or removed, new names.
    fn update(&mut self, account: usize) {
        let mut version = self.live[&account].clone();
        if self.rng.u8(0..10) < 4
            && let Some(email) = self.free_email()
        {
            version.email = email;
        }
        match self.rng.u8(0..10) {
            0..=1 => version.username = None,
            2..=4 => {
                if let Some(name) = self.free_username() {
                    version.username = Some(name);
                }
            }
            _ => {}
        }
        (version.first_name, version.last_name) = self.names();
        self.emit(account, Change::Updated(version));
    }

    /// Two accounts swap emails, through a temporary one, as Clerk would let them.
    fn swap_emails(&mut self, a: usize, b: usize) {
        let Some(temporary) = self.free_email() else {
            return;
        };
        let (email_a, email_b) = (self.live[&a].email.clone(), self.live[&b].email.clone());
        for (account, email) in [(a, temporary), (b, email_a), (a, email_b)] {
            let version = Version {
                email,
                ..self.live[&account].clone()
            };
            self.emit(account, Change::Updated(version));
        }
    }

    /// Two accounts with chosen usernames swap them, through a temporary one.
    fn swap_usernames(&mut self, a: usize, b: usize) {
        let (Some(name_a), Some(name_b)) = (
            self.live[&a].username.clone(),
            self.live[&b].username.clone(),
        ) else {
            return;
        };
        let temporary = format!("t{:05}", self.events.len());
        for (account, name) in [(a, temporary), (b, name_a), (a, name_b)] {
            let version = Version {
                username: Some(name),
                ..self.live[&account].clone()
            };
            self.emit(account, Change::Updated(version));
        }
    }

    fn run(mut self, accounts: usize) -> Self {
        while self.created < accounts {
            let live = self.random_live();
            let other = self.random_live();
            match (self.rng.u8(0..20), live, other) {
                (0..=5, _, _) | (_, None, _) => self.create(),
                (6..=13, Some(a), _) => self.update(a),
                (14..=15, Some(a), Some(b)) if a != b => self.swap_emails(a, b),
                (16, Some(a), Some(b)) if a != b => self.swap_usernames(a, b),
                (17..=19, Some(a), _) => self.emit(a, Change::Deleted),
                _ => {}
            }
        }
        self
    }

    fn body(&self, account: usize, clock: i64, change: &Change) -> Vec<u8> {
        let id = Self::id(account);
        let (event_type, version) = match change {
            Change::Created(version) => ("user.created", version),
            Change::Updated(version) => ("user.updated", version),
            Change::Deleted => return deleted_body(&id, clock),
        };
        UserEvent {
            event_type,
            id,
            email: Some(version.email.clone()),
            username: version.username.clone(),
            first_name: version.first_name.clone(),
            last_name: version.last_name.clone(),
            image_url: Some("https://img.clerk.com/model".into()),
            updated_at: clock,
        }
        .body()
    }
}

/// The username pair the worker derives for `id` and `email`.
fn derived_pair(id: &str, email: &str) -> [String; 2] {
    let email = Email::parse(email).expect("a valid model email");
    let id = UserId::parse(id).expect("a valid model id");
    let pair = DerivedUsername::derive(&email, &id);
    [
        pair.preferred.as_ref().to_owned(),
        pair.fallback.as_ref().to_owned(),
    ]
}

/// Every event once, some twice or three times, some replayed at the very end, all shuffled.
fn deliveries(clerk: &mut Clerk) -> Vec<(String, Vec<u8>)> {
    let mut deliveries = Vec::new();
    let mut replays = Vec::new();
    for (n, (account, clock, change)) in clerk.events.iter().enumerate() {
        let id = format!("msg_churn{n:05}");
        let body = clerk.body(*account, *clock, change);
        let copies = match clerk.rng.u8(0..10) {
            0..=1 => 2,
            2 => 3,
            _ => 1,
        };
        for _ in 0..copies {
            deliveries.push((id.clone(), body.clone()));
        }
        if clerk.rng.u8(0..10) == 0 {
            replays.push((id, body));
        }
    }
    clerk.rng.shuffle(&mut deliveries);
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
async fn accounts_whose_identities_churn_end_in_clerks_final_state_in_any_order() {
    let seed = setting("MODEL_SEED", 20_261_201);
    let accounts = setting("MODEL_USERS", 200) as usize;
    eprintln!("model test: MODEL_SEED={seed} MODEL_USERS={accounts}");
    let mut clerk = Clerk::new(seed, accounts).run(accounts);
    let deliveries = deliveries(&mut clerk);

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
    // Every conflict that order explains waits (within the default CONFLICT_RETRY_WINDOW) for
    // the event that frees the email or username; a generous budget for transient errors.
    env.push(("RETRY_MAX_ATTEMPTS", "100".into()));
    env.push(("RETRY_INITIAL_DELAY", "20ms".into()));
    env.push(("RETRY_MAX_DELAY", "250ms".into()));
    let mut worker = TestApp::spawn(&["consume"], &env).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    let total = deliveries.len() as f64;
    eventually(
        &format!("{total} deliveries processed"),
        Duration::from_secs(300),
        || async {
            let failed = worker.expect_metric(metrics::WORKSPACE_FAILED).await;
            worker
                .metric(metrics::EVENTS_PROCESSED)
                .await
                .is_some_and(|processed| processed + failed >= total)
        },
    )
    .await;

    let page = worker.metrics().await;
    let value = |series: &str| integration_tests::ops::expect_metric_value(&page, series);
    // For the log line only: a series not recorded yet counts 0 there.
    let count = |series: &str| integration_tests::ops::metric_value(&page, series).unwrap_or(0.0);
    let dead: Vec<String> = broker
        .take_dead_letters()
        .await
        .iter()
        .map(|letter| {
            format!(
                "{:?} {:?}: {:?}",
                letter.message_id,
                letter.header("x-failure-reason"),
                letter.header("x-failure-detail")
            )
        })
        .collect();
    assert!(dead.is_empty(), "dead letters (seed {seed}): {dead:#?}");
    assert_eq!(
        value(metrics::EVENTS_PROCESSED),
        total,
        "each delivery exactly once"
    );

    let stored: BTreeMap<String, serde_json::Value> = db
        .rows(
            "SELECT u.id, u.email, u.username, u.username_fallback, u.first_name, u.last_name, \
               (SELECT count(*) FROM workspaces w WHERE w.user_id = u.id) AS workspaces \
               FROM users u",
        )
        .await
        .into_iter()
        .map(|row| (row["id"].as_str().unwrap_or_default().to_owned(), row))
        .collect();
    for account in 0..clerk.created {
        let id = Clerk::id(account);
        match (clerk.live.get(&account), stored.get(&id)) {
            (None, None) => {}
            (Some(version), Some(row)) => {
                let context = format!("{id} (seed {seed}): {row} vs {version:?}");
                assert_eq!(row["email"], version.email.as_str(), "{context}");
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
                match &version.username {
                    Some(chosen) => {
                        assert_eq!(row["username"], chosen.as_str(), "{context}");
                        assert!(row["username_fallback"].is_null(), "chosen: {context}");
                    }
                    None => {
                        let username = row["username"].as_str().unwrap_or_default();
                        assert!(row["username_fallback"].is_string(), "derived: {context}");
                        assert!(
                            clerk.candidates[&account].contains(username),
                            "{username} is none of this account's names: {context}"
                        );
                    }
                }
            }
            (expected, actual) => {
                panic!("{id} (seed {seed}): expected {expected:?}, stored {actual:?}")
            }
        }
    }
    assert_eq!(
        stored.len(),
        clerk.live.len(),
        "no user the model does not know"
    );
    let orphans = db.scalar("SELECT count(*) FROM workspaces w WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = w.user_id)").await;
    assert_eq!(orphans, 0);
    eprintln!(
        "model test: {} accounts, {} events, {} deliveries, {} live at the end; retried: {} email \
         conflicts, {} username conflicts; {} usernames reassigned; {} superseded; {} stale",
        clerk.created,
        clerk.events.len(),
        deliveries.len(),
        clerk.live.len(),
        value(&series(
            metrics::EVENTS_RETRIED,
            &[("reason", "email_conflict")]
        )),
        value(&series(
            metrics::EVENTS_RETRIED,
            &[("reason", "username_conflict")]
        )),
        value(metrics::USERNAMES_REASSIGNED),
        count(&series(
            metrics::EVENTS_PROCESSED,
            &[("type", "user.updated"), ("outcome", "superseded")]
        )) + count(&series(
            metrics::EVENTS_PROCESSED,
            &[("type", "user.created"), ("outcome", "superseded")]
        )),
        count(&series(
            metrics::EVENTS_PROCESSED,
            &[("type", "user.updated"), ("outcome", "stale")]
        )) + count(&series(
            metrics::EVENTS_PROCESSED,
            &[("type", "user.created"), ("outcome", "stale")]
        )),
    );
    worker.terminate();
    let stopped = worker.wait_stopped(Duration::from_secs(30)).await;
    assert!(stopped.is_ok(), "{stopped:?}");
}
