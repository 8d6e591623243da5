//! `worker dlq list` and `worker dlq replay` against a real broker and database, beside a
//! running worker.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use integration_tests::TestDb;
use integration_tests::app::TestApp;
use integration_tests::clerk::{UserEvent, fixture, provision};
use integration_tests::eventually;
use integration_tests::ops::series;
use integration_tests::process::WorkerProcess;
use integration_tests::stack::Stack;
use serde_json::Value;
use worker::metrics;
use worker::provision::contract::constraint;

const WORKER: &str = env!("CARGO_BIN_EXE_worker-under-test");

/// A consumer that dead-letters a conflict at its first attempt (a window of zero) and a
/// transient failure too (a budget of one).
async fn worker(stack: &Stack) -> TestApp {
    let at_once = [("CONFLICT_RETRY_WINDOW", "0"), ("RETRY_MAX_ATTEMPTS", "1")];
    stack.start(&["consume"], &at_once).await
}

/// Runs `worker dlq ARGS` and returns its stdout, asserting success.
fn dlq(stack: &Stack, args: &[&str]) -> String {
    let output = Command::new(WORKER)
        .arg("dlq")
        .args(args)
        .envs(stack.env(&[("RUST_LOG", "warn")]))
        .output()
        .expect("worker dlq runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "worker dlq {args:?} failed: {stderr}"
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn dlq_json(stack: &Stack, args: &[&str]) -> Value {
    let stdout = dlq(stack, &[args, &["--json"]].concat());
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Ten events that fail for three reasons: 4 email conflicts (each email held by an "owner"
/// user), 3 phone-only sign-ups, 3 malformed bodies.
async fn ten_dead_letters(stack: &Stack, worker: &TestApp) {
    for i in 0..4 {
        stack
            .db
            .execute(&format!(
                "INSERT INTO users (id, email, username) VALUES ('user_2owner{i}', 'owner{i}@example.com', 'owner_{i}')"
            ))
            .await;
        let event = UserEvent::created(
            &format!("user_2conflict{i}"),
            &format!("owner{i}@example.com"),
            Some(&format!("conflict_{i}")),
        );
        stack
            .broker
            .publish("user.created", &event.body(), &format!("msg_conflict{i}"))
            .await;
    }
    for i in 0..3 {
        let event = UserEvent {
            email: None,
            ..UserEvent::created(&format!("user_2phone{i}"), "x@example.com", None)
        };
        stack
            .broker
            .publish("user.created", &event.body(), &format!("msg_phone{i}"))
            .await;
    }
    for i in 0..3 {
        stack
            .broker
            .publish(
                "user.updated",
                format!("{{\"type\": \"user.updated\", {i}").as_bytes(),
                &format!("msg_garbage{i}"),
            )
            .await;
    }
    eventually("ten dead letters", Duration::from_secs(30), || async {
        worker.expect_metric(metrics::WORKSPACE_FAILED).await == 10.0
    })
    .await;
    // Published is not yet listable: the keeper may hold a batch it is moving into the store
    // (neither ready in the queue nor stored) on a slow machine.
    eventually(
        "ten letters ready or stored",
        Duration::from_secs(30),
        || async { integration_tests::dead_letters::open(&stack.broker, &stack.db).await == 10 },
    )
    .await;
}

fn counts(value: &Value) -> BTreeMap<String, u64> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

fn expected(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Waits for the dead-letter queue to hold exactly `n` ready letters. A `worker dlq` run that
/// exited a moment ago may still have letters the broker has not taken back from its closed
/// channel; the count must settle at `n`, or the test fails.
async fn dead_letters_settle_at(stack: &Stack, n: u32, what: &str) {
    eventually(
        &format!("{what}: {n} dead letters ready"),
        Duration::from_secs(10),
        || async { stack.dead_letters_ready().await == n },
    )
    .await;
}

#[tokio::test]
async fn list_shows_every_dead_letter_with_its_reason_and_leaves_them_in_place() {
    let stack = Stack::new().await;
    let worker = worker(&stack).await;
    ten_dead_letters(&stack, &worker).await;

    let listing = dlq_json(&stack, &["list"]);
    let rows = listing["dead_letters"].as_array().unwrap();
    assert_eq!(rows.len(), 10);
    assert_eq!(listing["total"], 10);
    assert_eq!(
        counts(&listing["counts_by_reason"]),
        expected(&[
            ("email_conflict", 4),
            ("invalid_payload", 3),
            ("missing_email", 3)
        ])
    );
    let conflict = rows
        .iter()
        .find(|r| r["svix_id"] == "msg_conflict2")
        .expect("msg_conflict2 listed");
    assert_eq!(conflict["event_type"], "user.created");
    assert_eq!(conflict["user_id"], "user_2conflict2");
    assert_eq!(conflict["reason"], "email_conflict");
    assert_eq!(conflict["attempts"], 1);
    assert!(
        conflict["detail"]
            .as_str()
            .unwrap()
            .contains(constraint::USERS_EMAIL_KEY)
    );
    assert!(conflict["first_failed_at"].as_str().unwrap().ends_with('Z'));
    assert!(conflict["last_failed_at"].is_string());
    let garbage = rows
        .iter()
        .find(|r| r["svix_id"] == "msg_garbage0")
        .unwrap();
    assert_eq!(garbage["user_id"], Value::Null);

    let ids: BTreeSet<&str> = rows.iter().filter_map(|r| r["svix_id"].as_str()).collect();
    assert_eq!(ids.len(), 10, "no duplicates");
    dead_letters_settle_at(&stack, 10, "listing removes nothing").await;
    let again = dlq_json(&stack, &["list"]);
    assert_eq!(again["total"], 10, "and can be repeated");

    let filtered = dlq_json(
        &stack,
        &["list", "--reason", "missing_email", "--limit", "2"],
    );
    assert_eq!(filtered["dead_letters"].as_array().unwrap().len(), 2);
    assert_eq!(filtered["total"], 3);
    let by_type = dlq_json(&stack, &["list", "--type", "user.updated"]);
    assert_eq!(by_type["total"], 3);

    let table = dlq(&stack, &["list"]);
    assert!(table.starts_with("SVIX_ID"), "{table}");
    assert!(
        table.contains("msg_phone1") && table.contains("10 dead letter(s) match"),
        "{table}"
    );
    assert!(table.contains("  email_conflict: 4"), "{table}");
    dead_letters_settle_at(&stack, 10, "listing still removes nothing").await;
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_a_replay_after_the_fix_provisions_exactly_those() {
    let stack = Stack::new().await;
    let worker = worker(&stack).await;
    ten_dead_letters(&stack, &worker).await;
    // One conflicting user got provisioned another way meanwhile: its replay is a no-op.
    let later = UserEvent {
        updated_at: 1_764_400_000_000,
        ..UserEvent::created("user_2conflict0", "fresh0@example.com", Some("conflict_0"))
    };
    provision(&stack.db.conn, &later.body()).await.unwrap();
    let users_before = stack.db.rows("SELECT * FROM users ORDER BY id").await;

    let dry = dlq_json(
        &stack,
        &["replay", "--reason", "email_conflict", "--dry-run"],
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["replayed"], 0);
    assert_eq!(
        counts(&dry["by_reason"]),
        expected(&[("email_conflict", 4)])
    );
    assert_eq!(counts(&dry["by_type"]), expected(&[("user.created", 4)]));
    assert_eq!(dry["no_ops"], 1);
    assert_eq!(dry["skipped"], 6);
    dead_letters_settle_at(&stack, 10, "a dry run removes nothing").await;
    assert_eq!(
        stack.db.rows("SELECT * FROM users ORDER BY id").await,
        users_before
    );
    let text = dlq(
        &stack,
        &["replay", "--reason", "email_conflict", "--dry-run"],
    );
    assert!(
        text.contains("dry run: would replay 4, skip 6")
            && text.contains("no longer needed (the database already reflects them): 1"),
        "{text}"
    );

    // The fix: the owners of the contested emails are removed.
    stack
        .db
        .execute("DELETE FROM users WHERE id LIKE 'user_2owner%'")
        .await;
    let replayed = dlq_json(&stack, &["replay", "--reason", "email_conflict"]);
    assert_eq!(replayed["replayed"], 4);
    assert_eq!(replayed["skipped"], 6);
    eventually(
        "the replayed events processed",
        Duration::from_secs(30),
        || async {
            worker
                .metric(&series(
                    metrics::EVENTS_REPLAYED,
                    &[("reason", "email_conflict")],
                ))
                .await
                == Some(4.0)
        },
    )
    .await;
    for i in 1..4 {
        let email = stack.db.scalar(&format!("SELECT count(*) FROM users WHERE id = 'user_2conflict{i}' AND email = 'owner{i}@example.com'")).await;
        assert_eq!(email, 1, "user_2conflict{i} provisioned");
    }
    assert_eq!(
        stack
            .db
            .scalar("SELECT count(*) FROM workspaces WHERE user_id LIKE 'user_2conflict%'")
            .await,
        4
    );
    let fresh = stack.db.scalar("SELECT count(*) FROM users WHERE id = 'user_2conflict0' AND email = 'fresh0@example.com'").await;
    assert_eq!(fresh, 1, "the newer state of the no-op user stays");
    dead_letters_settle_at(&stack, 6, "the rest stay").await;
    let rest = dlq_json(&stack, &["list"]);
    assert_eq!(
        counts(&rest["counts_by_reason"]),
        expected(&[("invalid_payload", 3), ("missing_email", 3)])
    );
    let summary = dlq(
        &stack,
        &["replay", "--id", "msg_phone0", "--id", "msg_phone2"],
    );
    assert!(summary.contains("replayed 2, skipped 4"), "{summary}");
    eventually(
        "the phone-only letters back in the dead-letter queue",
        Duration::from_secs(30),
        || async { stack.dead_letters_ready().await == 6 },
    )
    .await;
    let listing = dlq_json(&stack, &["list", "--reason", "missing_email"]);
    let replay_counts: Vec<i64> = listing["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["replay_count"].as_i64())
        .collect();
    assert_eq!(
        replay_counts.iter().filter(|n| **n == 1).count(),
        2,
        "{listing}"
    );
}

#[tokio::test]
async fn replaying_an_already_provisioned_event_changes_nothing() {
    let stack = Stack::new().await;
    provision(&stack.db.conn, &fixture("user_created.json"))
        .await
        .unwrap();
    let before = (
        stack.db.rows("SELECT * FROM users").await,
        stack.db.rows("SELECT * FROM workspaces").await,
    );
    stack
        .broker
        .publish_dead_letter(
            "user.created",
            &fixture("user_created.json"),
            "msg_marta",
            "retries_exhausted",
        )
        .await;
    let worker = worker(&stack).await;
    in_the_store(&stack, 1).await;
    let summary = dlq_json(&stack, &["replay"]);
    assert_eq!(summary["replayed"], 1);
    eventually("the replay processed", Duration::from_secs(20), || async {
        worker
            .metric(&series(
                metrics::EVENTS_REPLAYED,
                &[("reason", "retries_exhausted")],
            ))
            .await
            == Some(1.0)
    })
    .await;
    let after = (
        stack.db.rows("SELECT * FROM users").await,
        stack.db.rows("SELECT * FROM workspaces").await,
    );
    assert_eq!(after, before);
    assert_eq!(worker.metric(metrics::WORKSPACE_CREATED).await, Some(0.0));
    assert_eq!(
        worker
            .expect_metric(&series(
                metrics::EVENTS_PROCESSED,
                &[("type", "user.created"), ("outcome", "already_existed")]
            ))
            .await,
        1.0
    );
    assert_eq!(stack.users().await, 1);
}

#[tokio::test]
async fn a_replay_killed_halfway_loses_nothing() {
    let stack = Stack::new().await;
    let total = 2000;
    for i in 0..total {
        let body = UserEvent::created(
            &format!("user_2kill{i:05}"),
            &format!("kill{i}@example.com"),
            None,
        )
        .body();
        stack
            .broker
            .publish_dead_letter(
                "user.created",
                &body,
                &format!("msg_kill{i:05}"),
                "email_conflict",
            )
            .await;
    }
    let mut replay = WorkerProcess::start(WORKER, &["dlq", "replay"], &stack.env(&[]));
    let main_queue = stack.broker.topology.queue.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stack.broker.ready(&main_queue).await < 100 && replay.exited().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the replay never got going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replay.kill();

    let replayed = stack.broker.take_all(&main_queue).await;
    let replayed_ids: BTreeSet<String> = replayed
        .iter()
        .filter_map(|m| m.message_id.clone())
        .collect();
    let still_open: BTreeSet<String> = stack
        .db
        .rows("SELECT svix_id FROM dead_letters WHERE status = 'open'")
        .await
        .iter()
        .filter_map(|row| row["svix_id"].as_str().map(str::to_owned))
        .collect();
    let queued = stack.broker.take_dead_letters().await;
    eprintln!(
        "killed after {} replays; {} still open, {} not yet moved",
        replayed.len(),
        still_open.len(),
        queued.len()
    );
    let everywhere: BTreeSet<String> = replayed_ids
        .iter()
        .chain(&still_open)
        .cloned()
        .chain(queued.iter().filter_map(|m| m.message_id.clone()))
        .collect();
    assert_eq!(everywhere.len(), total, "every event is somewhere");
    assert_eq!(replayed.len(), replayed_ids.len(), "none published twice");
    assert!(
        replayed_ids.intersection(&still_open).count() <= 1,
        "at most the one in flight is published and still open (it will be replayed once more)"
    );
}

#[tokio::test]
async fn without_a_broker_the_store_still_answers_and_a_replay_fails_clearly() {
    let db = TestDb::migrated().await;
    let run = |args: &[&str]| {
        Command::new(WORKER)
            .arg("dlq")
            .args(args)
            .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env("DATABASE_URL", db.settings.expose_url())
            .output()
            .unwrap()
    };
    let listed = run(&["list", "--json"]);
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert_eq!(listed.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("could not be moved into the store"),
        "{stderr}"
    );
    let listing: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listing["total"], 0);

    let replayed = run(&["replay"]);
    let stderr = String::from_utf8_lossy(&replayed.stderr);
    assert_eq!(replayed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("broker"), "{stderr}");
}

#[tokio::test]
async fn the_dlq_commands_without_their_database_fail_clearly_and_change_nothing() {
    let stack = Stack::new().await;
    stack
        .broker
        .publish_dead_letter(
            "user.created",
            &fixture("user_created.json"),
            "msg_dry",
            "email_conflict",
        )
        .await;
    for args in [&["replay", "--dry-run"][..], &["list"], &["replay"]] {
        let output = Command::new(WORKER)
            .arg("dlq")
            .args(args)
            .envs(stack.env(&[
                ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere"),
                ("DATABASE_CONNECT_TIMEOUT", "500ms"),
            ]))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("the dead letters are kept in postgres://postgres@127.0.0.1:1/nowhere"),
            "{stderr}"
        );
    }
    dead_letters_settle_at(&stack, 1, "a command without its database removes nothing").await;
    assert_eq!(
        stack
            .broker
            .ready(&stack.broker.topology.dead_letter_queue)
            .await,
        1
    );
}

/// Waits until `n` letters are open in the store: a running worker's keeper moved them there.
async fn in_the_store(stack: &Stack, n: i64) {
    eventually(
        &format!("{n} dead letters in the store"),
        Duration::from_secs(10),
        || async {
            stack
                .db
                .scalar("SELECT count(*) FROM dead_letters WHERE status = 'open'")
                .await
                == n
        },
    )
    .await;
}
