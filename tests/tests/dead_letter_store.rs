//! The dead-letter store: letters moved from the dead-letter queue into PostgreSQL by the worker
//! (and by `worker dlq` itself), looked at there as often as anyone likes, shown, discarded and
//! replayed with an audit trail, resolved by reconcile runs, purged after their retention.
//! Against the real PostgreSQL and RabbitMQ.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use chrono::{DateTime, Utc};
use integration_tests::clerk::UserEvent;
use integration_tests::clerk_api::FakeClerk;
use integration_tests::eventually;
use integration_tests::ops::series;
use integration_tests::process::WorkerProcess;
use integration_tests::stack::Stack;
use integration_tests::{TestDb, app::TestApp};
use serde_json::{Value, json};
use worker::dead_letter::store;
use worker::metrics::DEAD_LETTERS_OPEN;

const WORKER: &str = env!("CARGO_BIN_EXE_worker-under-test");
const SECRET: &str = "sk_test_dead_letter_store_41a";

/// A consumer that dead-letters conflicts and transient failures at their first attempt.
async fn worker(stack: &Stack) -> TestApp {
    let at_once = [("CONFLICT_RETRY_WINDOW", "0"), ("RETRY_MAX_ATTEMPTS", "1")];
    stack.start(&["consume"], &at_once).await
}

fn dlq(stack: &Stack, args: &[&str]) -> Output {
    Command::new(WORKER)
        .arg("dlq")
        .args(args)
        .envs(stack.env(&[("RUST_LOG", "warn")]))
        .output()
        .expect("worker dlq runs")
}

/// `worker dlq ARGS --json`, which must succeed.
fn dlq_json(stack: &Stack, args: &[&str]) -> Value {
    let output = dlq(stack, &[args, &["--json"]].concat());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "worker dlq {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

async fn open_in_store(stack: &Stack) -> i64 {
    stack
        .db
        .scalar("SELECT count(*) FROM dead_letters WHERE status = 'open'")
        .await
}

async fn wait_open_in_store(stack: &Stack, n: i64) {
    eventually(
        &format!("{n} open dead letters in the store"),
        Duration::from_secs(20),
        || async { open_in_store(stack).await == n },
    )
    .await;
}

/// A sign-up of `user` (svix id `svix_id`) with an email that `holder` already has: an email
/// conflict. Returns the sign-up.
async fn email_conflict(stack: &Stack, holder: &str, user: &str, svix_id: &str) -> UserEvent {
    let email = format!("{holder}@example.com");
    stack
        .db
        .execute(&format!(
            "INSERT INTO users (id, email, username) VALUES ('{holder}', '{email}', '{holder}')"
        ))
        .await;
    let signup = UserEvent::created(user, &email, Some(&user.replace("user_2", "")));
    stack
        .broker
        .publish("user.created", &signup.body(), svix_id)
        .await;
    signup
}

fn phone_only(id: &str) -> UserEvent {
    UserEvent {
        email: None,
        ..UserEvent::created(id, "unused@example.com", None)
    }
}

/// A policy that gives one queue a delivery limit, as RabbitMQ 4.x gives every quorum queue
/// (20) by default; cleared when dropped.
struct DeliveryLimitPolicy {
    name: String,
}

impl DeliveryLimitPolicy {
    fn set(queue: &str, limit: u32) -> Self {
        let name = format!("test-limit-{}", uuid::Uuid::new_v4().simple());
        let pattern = format!("^{}$", regex::escape(queue));
        let definition = json!({ "delivery-limit": limit }).to_string();
        rabbitmqctl(&[
            "set_policy",
            &name,
            &pattern,
            &definition,
            "--apply-to",
            "queues",
            "--priority",
            "100",
        ]);
        Self { name }
    }
}

impl Drop for DeliveryLimitPolicy {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "clear_policy", &self.name])
            .output();
    }
}

fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (RabbitMQ's own CLI, installed with the server)");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looking_thirty_times_by_cli_and_thirty_by_console_at_a_delivery_limit_of_five_loses_nothing()
 {
    let stack = Stack::new().await;
    let queue = stack.broker.topology.dead_letter_queue.clone();
    let policy = DeliveryLimitPolicy::set(&queue, 5);
    eventually("the policy applies", Duration::from_secs(20), || async {
        rabbitmqctl(&["list_queues", "name", "policy"])
            .lines()
            .any(|line| line.starts_with(&queue) && line.contains(&policy.name))
    })
    .await;
    // The policy bites: a letter handed back six times (a browse each time) is dropped.
    let probe = phone_only("user_2probe").body();
    stack
        .broker
        .publish_dead_letter("user.created", &probe, "msg_probe", "missing_email")
        .await;
    let mut looks = 0;
    while stack.broker.get_and_requeue(&queue).await {
        looks += 1;
        assert!(looks <= 10, "the delivery limit never dropped the probe");
    }
    eprintln!("MEASURED: the probe was dropped after {looks} browses of the queue");
    assert_eq!(stack.broker.ready(&queue).await, 0);

    for i in 0..3 {
        let body = phone_only(&format!("user_2limit{i}")).body();
        let id = format!("msg_limit{i}");
        stack
            .broker
            .publish_dead_letter("user.created", &body, &id, "missing_email")
            .await;
    }
    for look in 0..30 {
        let listing = dlq_json(&stack, &["list"]);
        assert_eq!(listing["total"], 3, "look {look}: {listing}");
        if look % 10 == 0 {
            let shown = dlq_json(&stack, &["show", "msg_limit1"]);
            assert_eq!(shown["reason"], "missing_email");
        }
    }
    assert_eq!(open_in_store(&stack).await, 3, "every letter still there");
    assert_eq!(stack.broker.ready(&queue).await, 0);

    // And 30 looks through the console's pages, the list and one letter: they read the store,
    // never the queue, so the delivery limit has nothing to count.
    let token = "console-token-thirty-looks";
    let (_console, base) = stack.start_with_console(&["consume"], token).await;
    let http = reqwest::Client::new();
    for look in 0..30 {
        let path = if look % 2 == 0 {
            "/dead-letters"
        } else {
            "/dead-letters/msg_limit1"
        };
        let page = http
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let expected = if look % 2 == 0 {
            "3 matching"
        } else {
            "missing_email"
        };
        assert!(page.contains(expected), "look {look} at {path}: {page}");
    }
    assert_eq!(open_in_store(&stack).await, 3, "every letter still there");
    assert_eq!(stack.broker.ready(&queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_moving_letters_loses_none_and_counts_none_twice() {
    let stack = Stack::new().await;
    let total = 3000;
    for i in 0..total {
        let body = phone_only(&format!("user_2move{i:05}")).body();
        stack
            .broker
            .publish_dead_letter(
                "user.created",
                &body,
                &format!("msg_move{i:05}"),
                "missing_email",
            )
            .await;
    }
    let mut first = WorkerProcess::start(WORKER, &["consume"], &stack.env(&[]));
    eventually(
        "the first letters moved",
        Duration::from_secs(60),
        || async { stack.db.scalar("SELECT count(*) FROM dead_letters").await > 0 },
    )
    .await;
    first.kill();
    let moved = stack.db.scalar("SELECT count(*) FROM dead_letters").await;
    eprintln!("MEASURED: killed with {moved} of {total} letters moved");

    let _second = WorkerProcess::start(WORKER, &["consume"], &stack.env(&[]));
    eventually(
        "every letter in the store",
        Duration::from_secs(60),
        || async { open_in_store(&stack).await == total },
    )
    .await;
    assert_eq!(
        stack
            .db
            .scalar("SELECT count(*) FROM dead_letter_history WHERE event = 'failed'")
            .await,
        total,
        "a letter moved twice is still one failure"
    );
    eventually("the queue drained", Duration::from_secs(10), || async {
        stack
            .broker
            .ready(&stack.broker.topology.dead_letter_queue)
            .await
            == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_discard_and_replay_leave_an_audit_trail_and_the_gauge_follows() {
    let stack = Stack::new().await;
    let worker = worker(&stack).await;
    email_conflict(&stack, "user_2holder", "user_2wants", "msg_wants").await;
    for i in 0..2 {
        let body = phone_only(&format!("user_2phone{i}")).body();
        stack
            .broker
            .publish("user.created", &body, &format!("msg_phone{i}"))
            .await;
    }
    wait_open_in_store(&stack, 3).await;
    let open = |reason: &'static str| {
        let worker = &worker;
        async move {
            worker
                .metric(&series(DEAD_LETTERS_OPEN, &[("reason", reason)]))
                .await
        }
    };
    eventually("the gauge counts them", Duration::from_secs(20), || async {
        open("email_conflict").await == Some(1.0) && open("missing_email").await == Some(2.0)
    })
    .await;

    let shown = dlq_json(&stack, &["show", "msg_wants"]);
    assert_eq!(shown["reason"], "email_conflict");
    assert_eq!(shown["status"], "open");
    assert_eq!(shown["no_longer_needed"], false);
    assert_eq!(shown["body"]["data"]["id"], "user_2wants");
    assert_eq!(shown["headers"]["x-failure-reason"], "email_conflict");
    assert_eq!(shown["history"][0]["event"], "failed");
    assert_eq!(shown["user"], Value::Null, "not provisioned: {shown}");
    let text = dlq(&stack, &["show", "msg_wants"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("\"id\": \"user_2wants\"") && text.contains("email_conflict"),
        "{text}"
    );

    let missing = dlq(&stack, &["show", "msg_nobody"]);
    assert_eq!(missing.status.code(), Some(66));
    let everything = dlq(&stack, &["discard", "--discard-reason", "tidy"]);
    assert_eq!(
        everything.status.code(),
        Some(64),
        "never discards everything"
    );

    let discarded = dlq_json(
        &stack,
        &[
            "discard",
            "--reason",
            "missing_email",
            "--discard-reason",
            "phone-only sign-ups: product decision",
            "--actor",
            "alice",
        ],
    );
    assert_eq!(discarded["discarded"], 2);
    assert_eq!(dlq_json(&stack, &["list"])["total"], 1);
    assert_eq!(
        dlq_json(&stack, &["list", "--status", "discarded"])["total"],
        2
    );
    assert_eq!(dlq_json(&stack, &["list", "--status", "any"])["total"], 3);
    let audit = stack
        .db
        .rows(
            "SELECT actor, source, action, note, chosen, changed, filter FROM dead_letter_actions",
        )
        .await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["actor"], "alice");
    assert_eq!(audit[0]["source"], "cli");
    assert_eq!(audit[0]["action"], "discard");
    assert_eq!(audit[0]["note"], "phone-only sign-ups: product decision");
    assert_eq!(audit[0]["changed"], 2);
    assert_eq!(audit[0]["filter"]["reason"], "missing_email");
    let phone = dlq_json(&stack, &["show", "msg_phone0"]);
    assert_eq!(phone["history"][1]["event"], "discarded");
    assert_eq!(phone["history"][1]["actor"], "alice");
    let again = dlq_json(&stack, &["replay", "--id", "msg_phone0"]);
    assert_eq!(again["replayed"], 0, "a discarded letter is not replayed");

    // The fix, then the replay: the user is provisioned and the letter says who replayed it.
    stack
        .db
        .execute("DELETE FROM users WHERE id = 'user_2holder'")
        .await;
    let replayed = dlq_json(&stack, &["replay", "--id", "msg_wants", "--actor", "bob"]);
    assert_eq!(replayed["replayed"], 1);
    eventually(
        "the replay provisioned it",
        Duration::from_secs(20),
        || async { stack.workspaces().await == 1 },
    )
    .await;
    let shown = dlq_json(&stack, &["show", "msg_wants"]);
    assert_eq!(shown["status"], "replayed");
    assert_eq!(shown["replay_count"], 1);
    assert_eq!(shown["no_longer_needed"], true);
    assert_eq!(shown["user"]["status"], "live");
    assert_eq!(shown["user"]["workspace"]["name"], "My Workspace");
    let events: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["event"].as_str())
        .collect();
    assert_eq!(events, ["failed", "replayed"]);
    assert_eq!(shown["history"][1]["actor"], "bob");
    eventually(
        "the gauge goes back to 0",
        Duration::from_secs(30),
        || async {
            open("email_conflict").await == Some(0.0) && open("missing_email").await == Some(0.0)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_fails_again_reopens_its_row_with_the_new_failure() {
    let stack = Stack::new().await;
    let _worker = worker(&stack).await;
    stack
        .broker
        .publish(
            "user.created",
            &phone_only("user_2again").body(),
            "msg_again",
        )
        .await;
    wait_open_in_store(&stack, 1).await;
    let before = dlq_json(&stack, &["show", "msg_again"]);
    let replayed = dlq_json(&stack, &["replay"]);
    assert_eq!(replayed["replayed"], 1);
    eventually("it failed again", Duration::from_secs(20), || async {
        stack
            .db
            .scalar("SELECT count(*) FROM dead_letter_history WHERE event = 'failed'")
            .await
            == 2
    })
    .await;
    wait_open_in_store(&stack, 1).await;
    let after = dlq_json(&stack, &["show", "msg_again"]);
    assert_eq!(after["status"], "open");
    assert_eq!(after["replay_count"], 1);
    assert_eq!(after["first_failed_at"], before["first_failed_at"]);
    assert_ne!(after["last_failed_at"], before["last_failed_at"]);
    let events: Vec<&str> = after["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["event"].as_str())
        .collect();
    assert_eq!(events, ["failed", "replayed", "failed"]);
    assert_eq!(
        stack.db.scalar("SELECT count(*) FROM dead_letters").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_run_resolves_the_letters_it_made_unnecessary() {
    let stack = Stack::new().await;
    let worker = worker(&stack).await;
    let signup = email_conflict(&stack, "user_2stale", "user_2heals", "msg_heals").await;
    stack
        .broker
        .publish(
            "user.updated",
            b"{\"type\": \"user.updated\",",
            "msg_garbage",
        )
        .await;
    wait_open_in_store(&stack, 2).await;
    drop(worker);
    // The stale account goes; Clerk has the user; a reconcile run provisions them.
    stack
        .db
        .execute("DELETE FROM users WHERE id = 'user_2stale'")
        .await;
    let clerk = FakeClerk::start(SECRET).await;
    clerk.add(signup.data());
    let output = Command::new(WORKER)
        .args(["reconcile", "--apply", "--json"])
        .envs(stack.env(&[
            ("CLERK_API_URL", &clerk.url()),
            ("CLERK_SECRET_KEY", SECRET),
            ("CLERK_API_RATE", "1000"),
        ]))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stack.workspaces().await, 1);
    let statuses = stack
        .db
        .rows("SELECT svix_id, status FROM dead_letters ORDER BY svix_id")
        .await;
    assert_eq!(
        statuses,
        [
            json!({"svix_id": "msg_garbage", "status": "open"}),
            json!({"svix_id": "msg_heals", "status": "resolved"}),
        ]
    );
    let action = stack
        .db
        .rows("SELECT actor, source, action, changed, filter FROM dead_letter_actions")
        .await;
    assert_eq!(action.len(), 1);
    assert_eq!(action[0]["actor"], "reconcile");
    assert_eq!(action[0]["changed"], 1);
    assert_eq!(action[0]["filter"]["reconcile_run"], run["run_id"]);
}

fn arrival(svix_id: &str, last_failed_at: DateTime<Utc>) -> worker::dead_letter::Arrival {
    worker::dead_letter::Arrival {
        svix_id: svix_id.to_owned(),
        event_type: "user.created".to_owned(),
        user_id: Some("user_2x".to_owned()),
        body: b"{\"data\":{\"id\":\"user_2x\"}}\x00\xff".to_vec(),
        headers: json!({"x-failure-reason": "missing_email"}),
        properties: json!({}),
        event_updated_at: None,
        reason: "missing_email".to_owned(),
        detail: Some("no email".to_owned()),
        attempts: Some(1),
        first_failed_at: Some(last_failed_at),
        last_failed_at: Some(last_failed_at),
        replay_count: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_keeps_a_letter_once_per_failure_and_byte_for_byte() {
    let db = TestDb::migrated().await;
    let pool = db.pool();
    let t0 = DateTime::from_timestamp_millis(1_764_300_000_000).unwrap();
    let later = t0 + chrono::Duration::minutes(5);
    let letter = arrival("msg_1", t0);
    store::keep(&pool, &[letter.clone(), letter.clone()])
        .await
        .unwrap();
    store::keep(&pool, std::slice::from_ref(&letter))
        .await
        .unwrap();
    assert_eq!(
        db.scalar("SELECT count(*) FROM dead_letter_history").await,
        1
    );
    let body = db
        .rows("SELECT encode(body, 'hex') AS hex FROM dead_letters")
        .await;
    assert_eq!(body[0]["hex"], hex(&letter.body), "the body byte for byte");

    // A later failure reopens it; an earlier one arriving late changes nothing.
    db.execute("UPDATE dead_letters SET status = 'replayed'")
        .await;
    store::keep(&pool, &[arrival("msg_1", later)])
        .await
        .unwrap();
    store::keep(&pool, &[arrival("msg_1", t0)]).await.unwrap();
    let row = store::find(&pool, "msg_1").await.unwrap().unwrap();
    assert_eq!(row.status, "open");
    assert_eq!(row.last_failed_at.to_utc(), later);
    assert_eq!(row.first_failed_at.to_utc(), t0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM dead_letter_history").await,
        2
    );

    // A letter with no failure time (not one of ours) only ever adds a row.
    let mut untimed = arrival("msg_untimed", t0);
    untimed.last_failed_at = None;
    untimed.first_failed_at = None;
    store::keep(&pool, std::slice::from_ref(&untimed))
        .await
        .unwrap();
    db.execute("UPDATE dead_letters SET status = 'replayed' WHERE svix_id = 'msg_untimed'")
        .await;
    store::keep(&pool, &[untimed]).await.unwrap();
    let row = store::find(&pool, "msg_untimed").await.unwrap().unwrap();
    assert_eq!(row.status, "replayed");
    assert_eq!(
        db.scalar("SELECT count(*) FROM dead_letter_history").await,
        3
    );

    // NUL cannot be stored in text or jsonb: the letter is kept all the same.
    let mut nul = arrival("msg_\0nul", t0);
    nul.detail = Some("a\0b".to_owned());
    nul.headers = json!({"x-odd\0": "c\0d"});
    store::keep(&pool, &[nul]).await.unwrap();
    let kept = store::find(&pool, "msg_\u{FFFD}nul")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.detail.as_deref(), Some("a\u{FFFD}b"));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_letters_are_purged_after_their_retention_and_open_ones_never() {
    let db = TestDb::migrated().await;
    let pool = db.pool();
    let t0 = DateTime::from_timestamp_millis(1_764_300_000_000).unwrap();
    for id in [
        "msg_open_old",
        "msg_discarded_old",
        "msg_resolved_old",
        "msg_discarded_new",
    ] {
        store::keep(&pool, &[arrival(id, t0)]).await.unwrap();
    }
    db.execute(
        "UPDATE dead_letters SET status = 'discarded' WHERE svix_id LIKE 'msg_discarded%'; \
         UPDATE dead_letters SET status = 'resolved' WHERE svix_id = 'msg_resolved_old'; \
         UPDATE dead_letters SET updated_at = now() - interval '31 days' WHERE svix_id LIKE '%_old'",
    )
    .await;
    let purged = store::purge_closed(&pool, Duration::from_secs(30 * 86_400), 1)
        .await
        .unwrap();
    assert_eq!(purged, 1, "in batches");
    store::purge_closed(&pool, Duration::from_secs(30 * 86_400), 100)
        .await
        .unwrap();
    let left: BTreeSet<String> = db
        .rows("SELECT svix_id FROM dead_letters")
        .await
        .iter()
        .filter_map(|r| r["svix_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        left,
        BTreeSet::from(["msg_open_old".to_owned(), "msg_discarded_new".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_pages_walk_every_letter_once_newest_first() {
    let db = TestDb::migrated().await;
    let pool = db.pool();
    let t0 = DateTime::from_timestamp_millis(1_764_300_000_000).unwrap();
    // Many letters share a failure time: the id breaks ties.
    let letters: Vec<_> = (0..250)
        .map(|i| {
            arrival(
                &format!("msg_{i:03}"),
                t0 + chrono::Duration::seconds(i / 7),
            )
        })
        .collect();
    store::keep(&pool, &letters).await.unwrap();
    let filter = worker::dead_letter::Filter::open();
    let mut seen = Vec::new();
    let mut page = None;
    loop {
        let rows = store::list(&pool, &filter, store::Order::NewestFirst, page, Some(100))
            .await
            .unwrap();
        let Some(last) = rows.last() else { break };
        page = Some((last.last_failed_at.to_utc(), last.id));
        seen.extend(rows.iter().map(|r| (r.last_failed_at, r.id)));
    }
    assert_eq!(seen.len(), 250);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first, no repeats");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_letter_the_broker_dead_letters_again_reopens_with_the_broker_s_reason() {
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable};
    let stack = Stack::new().await;
    let failed_at = Utc::now() - chrono::Duration::hours(1);
    let mut headers = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    headers.insert("x-failure-reason".into(), text("email_conflict"));
    headers.insert(
        "x-last-failed-at".into(),
        text(&worker::dead_letter::timestamp(failed_at)),
    );
    let letter = |headers: FieldTable| {
        BasicProperties::default()
            .with_message_id("msg_crash".into())
            .with_headers(headers)
    };
    let body = phone_only("user_2crash").body();
    let dlx = stack.broker.topology.dead_letter_exchange.clone();
    stack
        .broker
        .publish_as(&dlx, "user.created", &body, letter(headers.clone()))
        .await;
    assert_eq!(dlq_json(&stack, &["list"])["total"], 1);
    let replayed = dlq_json(&stack, &["replay"]);
    assert_eq!(replayed["replayed"], 1);

    // The replay crashed workers until the main queue's delivery limit: the broker's own dead
    // letter, with the consumer's headers of the earlier failure and a new x-death.
    let mut death = FieldTable::default();
    death.insert("reason".into(), text("delivery_limit"));
    let now = u64::try_from(Utc::now().timestamp()).unwrap();
    death.insert("time".into(), AMQPValue::Timestamp(now));
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
    );
    stack
        .broker
        .publish_as(&dlx, "user.created", &body, letter(headers))
        .await;
    let listing = dlq_json(&stack, &["list"]);
    assert_eq!(listing["total"], 1, "reopened: {listing}");
    let shown = dlq_json(&stack, &["show", "msg_crash"]);
    assert_eq!(shown["reason"], "broker_delivery_limit");
    assert_eq!(shown["status"], "open");
    let events: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["event"].as_str())
        .collect();
    assert_eq!(events, ["failed", "replayed", "failed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_arriving_while_the_database_is_down_wait_in_the_queue_and_are_kept_after() {
    use integration_tests::proxy::CuttableProxy;
    let stack = Stack::new().await;
    let proxy = CuttableProxy::start(integration_tests::server_addr()).await;
    let url = format!("postgres://postgres@{}/{}", proxy.addr, stack.db.name);
    let through_proxy = [
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_CONNECT_TIMEOUT", "500ms"),
        ("DATABASE_OUTAGE_PAUSE", "1s"),
    ];
    let worker = stack.start(&["consume"], &through_proxy).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    proxy.cut().await;
    for i in 0..20 {
        let body = phone_only(&format!("user_2down{i}")).body();
        let id = format!("msg_down{i}");
        stack
            .broker
            .publish_dead_letter("user.created", &body, &id, "missing_email")
            .await;
    }
    // Held by the keeper or back in the queue, never acknowledged: not in the store, not lost.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(open_in_store(&stack).await, 0);

    proxy.restore();
    eventually(
        "kept once the database is back",
        Duration::from_secs(30),
        || async { open_in_store(&stack).await == 20 },
    )
    .await;
    assert_eq!(
        stack
            .broker
            .ready(&stack.broker.topology.dead_letter_queue)
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_the_store_refuses_is_kept_without_its_headers_and_its_batch_whole() {
    let stack = Stack::new().await;
    // The store refuses one letter's headers, as it could refuse data nobody foresaw.
    stack
        .db
        .execute(
            "ALTER TABLE dead_letters ADD CONSTRAINT test_refuses_poison \
             CHECK (NOT jsonb_exists(headers, 'x-poison'))",
        )
        .await;
    for i in 0..3 {
        let user = UserEvent::created(
            &format!("user_2keep{i}"),
            &format!("k{i}@example.com"),
            None,
        );
        stack
            .broker
            .publish_dead_letter(
                "user.created",
                &user.body(),
                &format!("msg_keep{i}"),
                "retries_exhausted",
            )
            .await;
    }
    let poison = UserEvent::created("user_2poison", "p@example.com", None);
    stack
        .broker
        .publish_dead_letter_with(
            "user.created",
            &poison.body(),
            "msg_poison",
            "retries_exhausted",
            &[("x-poison", "yes")],
        )
        .await;

    // Started after the letters are waiting: they come as one batch, which the store refuses.
    let _worker = worker(&stack).await;
    wait_open_in_store(&stack, 4).await;
    // Acked, not merely taken: none ready, and none held unacknowledged either.
    let queue = stack.broker.topology.dead_letter_queue.clone();
    eventually("every letter acked", Duration::from_secs(10), || async {
        rabbitmqctl(&["list_queues", "name", "messages"])
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>() == [queue.as_str(), "0"])
    })
    .await;
    let rows = stack
        .db
        .rows("SELECT svix_id, headers, detail FROM dead_letters ORDER BY svix_id")
        .await;
    for row in &rows {
        let svix_id = row["svix_id"].as_str().unwrap();
        let headers = row["headers"].as_object().unwrap();
        if svix_id == "msg_poison" {
            assert!(headers.is_empty(), "{row}");
            let detail = row["detail"].as_str().unwrap();
            assert!(
                detail.starts_with("kept without its headers: the store refused them"),
                "{detail}"
            );
            assert!(
                detail.contains("made by the test"),
                "the first detail kept: {detail}"
            );
        } else {
            assert!(
                headers.contains_key("x-failure-reason"),
                "kept whole: {row}"
            );
        }
    }
    let body = stack
        .db
        .rows("SELECT convert_from(body, 'UTF8') AS body FROM dead_letters WHERE svix_id = 'msg_poison'")
        .await;
    assert_eq!(
        body[0]["body"].as_str().unwrap().as_bytes(),
        poison.body().as_slice(),
        "the body byte for byte"
    );
}
