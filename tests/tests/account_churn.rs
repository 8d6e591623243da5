//! Account churn through the real consumer: an email or username that another account still
//! holds is retried (from the broker's delay queues, holding no consumer slot) until the event
//! that frees it arrives, however late within CONFLICT_RETRY_WINDOW; a username chosen in Clerk
//! takes a derived one; nobody is stranded without a workspace and nothing is dead-lettered.

use std::time::Duration;

use integration_tests::app::TestApp;
use integration_tests::clerk::{UserEvent, deleted_body};
use integration_tests::ops::series;
use integration_tests::stack::Stack;
use integration_tests::{eventually, throughout};
use worker::metrics;

/// Short delays; the default CONFLICT_RETRY_WINDOW (3 h) outlasts every wait here.
const PATIENT_RETRIES: [(&str, &str); 2] = [
    ("RETRY_INITIAL_DELAY", "20ms"),
    ("RETRY_MAX_DELAY", "500ms"),
];

async fn consume(stack: &Stack, extra: &[(&'static str, &str)]) -> TestApp {
    stack
        .start(&["consume"], &[&PATIENT_RETRIES[..], extra].concat())
        .await
}

async fn conflicts_retried(worker: &TestApp, reason: &str) -> f64 {
    worker
        .expect_metric(&series(metrics::EVENTS_RETRIED, &[("reason", reason)]))
        .await
}

#[tokio::test]
async fn a_sign_up_handled_before_the_old_accounts_deletion_waits_for_it() {
    let stack = Stack::new().await;
    let worker = consume(&stack, &[]).await;
    let ana_old = UserEvent::created("user_2ana_a", "ana@example.com", Some("ana"));
    stack
        .broker
        .publish("user.created", &ana_old.body(), "msg_ana_a")
        .await;
    eventually("A provisioned", Duration::from_secs(20), || async {
        stack.workspaces().await == 1
    })
    .await;

    // Ana deleted A and signed up again as B, same email; B's creation comes first.
    let ana_new = UserEvent::created("user_2ana_b", "ana@example.com", Some("ana"));
    stack
        .broker
        .publish("user.created", &ana_new.updated(60_000).body(), "msg_ana_b")
        .await;
    eventually("B's conflict retried", Duration::from_secs(20), || async {
        conflicts_retried(&worker, "email_conflict").await >= 1.0
    })
    .await;
    let deletion = deleted_body("user_2ana_a", ana_old.updated_at + 30_000);
    stack
        .broker
        .publish("user.deleted", &deletion, "msg_ana_a_deleted")
        .await;

    eventually("B provisioned", Duration::from_secs(30), || async {
        stack
            .db
            .scalar("SELECT count(*) FROM workspaces WHERE user_id = 'user_2ana_b'")
            .await
            == 1
    })
    .await;
    assert_eq!(stack.users().await, 1, "A is gone, B is there");
    assert_eq!(worker.metric(metrics::WORKSPACE_FAILED).await, Some(0.0));
    assert_eq!(stack.dead_letters_ready().await, 0);
}

#[tokio::test]
async fn an_email_swap_whose_freeing_event_arrives_60_s_late_ends_with_both_users_right_and_no_dead_letter()
 {
    let stack = Stack::new().await;
    // The default CONFLICT_RETRY_WINDOW and RETRY_MAX_ATTEMPTS; delays capped at 3 s so the
    // test does not wait up to 30 s for a retry once the late event is in.
    let worker = stack
        .start(&["consume"], &[("RETRY_MAX_DELAY", "3s")])
        .await;
    let ann = UserEvent::created("user_2ann", "ann@example.com", Some("ann"));
    let bob = UserEvent::created("user_2bob", "bob@example.com", Some("bob"));
    for (user, id) in [(&ann, "msg_ann"), (&bob, "msg_bob")] {
        stack.broker.publish("user.created", &user.body(), id).await;
    }
    eventually("both provisioned", Duration::from_secs(20), || async {
        stack.workspaces().await == 2
    })
    .await;

    // In Clerk they swap emails through a temporary one: Ann gives hers up, Bob takes it, Ann
    // takes Bob's old one. The webhook of Ann's first change failed; Svix sends it 60 s late.
    let with_email = |user: &UserEvent, later_ms, email: &str| UserEvent {
        email: Some(email.to_owned()),
        ..user.updated(later_ms)
    };
    let ann_frees = with_email(&ann, 1_000, "ann.tmp@example.com");
    let bob_takes = with_email(&bob, 2_000, "ann@example.com");
    let ann_takes = with_email(&ann, 3_000, "bob@example.com");
    for (user, id) in [(&bob_takes, "msg_bob_takes"), (&ann_takes, "msg_ann_takes")] {
        stack.broker.publish("user.updated", &user.body(), id).await;
    }
    throughout(
        "nothing dead-lettered while the freeing event is late",
        Duration::from_secs(60),
        || async { stack.dead_letters_ready().await == 0 },
    )
    .await;
    let waited = conflicts_retried(&worker, "email_conflict").await;
    assert!(
        waited > 8.0,
        "{waited} retries: more than RETRY_MAX_ATTEMPTS would have allowed"
    );

    stack
        .broker
        .publish("user.updated", &ann_frees.body(), "msg_ann_frees")
        .await;
    let emails = || async {
        stack
            .db
            .rows("SELECT id, email FROM users ORDER BY id")
            .await
            .iter()
            .map(|row| format!("{} {}", row["id"], row["email"]))
            .collect::<Vec<_>>()
    };
    eventually("the swap applied", Duration::from_secs(30), || async {
        emails().await
            == [
                r#""user_2ann" "bob@example.com""#,
                r#""user_2bob" "ann@example.com""#,
            ]
    })
    .await;
    assert_eq!(stack.workspaces().await, 2);
    assert_eq!(worker.metric(metrics::WORKSPACE_FAILED).await, Some(0.0));
    assert_eq!(stack.dead_letters_ready().await, 0);
    let old_retry_queue = &stack.broker.topology.retry.queue;
    assert_eq!(stack.broker.ready(old_retry_queue).await, 0);
}

#[tokio::test]
async fn a_thousand_waiting_conflicts_hold_up_neither_other_users_nor_the_deletions_that_free_them()
{
    let stack = Stack::new().await;
    let holders = 1000;
    // 1,000 old accounts hold the emails 1,000 new ones sign up with.
    stack
        .db
        .execute(&format!(
            "INSERT INTO users (id, email, username) SELECT 'user_2old' || i, 'churn' || i || \
             '@example.com', 'old_' || i FROM generate_series(1, {holders}) AS i"
        ))
        .await;
    let worker = consume(&stack, &[("PREFETCH", "16"), ("MAX_CONCURRENCY", "4")]).await;
    let sign_ups: Vec<(String, Vec<u8>, String)> = (1..=holders)
        .map(|i| {
            let event = UserEvent::created(
                &format!("user_2new{i}"),
                &format!("churn{i}@example.com"),
                Some(&format!("new_{i}")),
            );
            (
                "user.created".to_owned(),
                event.body(),
                format!("msg_new{i}"),
            )
        })
        .collect();
    stack.broker.publish_many(&sign_ups).await;
    eventually(
        "every sign-up waiting in a delay queue",
        Duration::from_secs(60),
        || async { conflicts_retried(&worker, "email_conflict").await >= holders as f64 },
    )
    .await;

    // Someone else's sign-up is not stuck behind them.
    let bystander = UserEvent::created("user_2bystander", "by@example.com", Some("bystander"));
    stack
        .broker
        .publish("user.created", &bystander.body(), "msg_bystander")
        .await;
    eventually(
        "the bystander provisioned",
        Duration::from_secs(10),
        || async {
            stack
                .db
                .scalar("SELECT count(*) FROM workspaces WHERE user_id = 'user_2bystander'")
                .await
                == 1
        },
    )
    .await;

    // Nor are the deletions that free the emails.
    let deletions: Vec<(String, Vec<u8>, String)> = (1..=holders)
        .map(|i| {
            let body = deleted_body(&format!("user_2old{i}"), 1_764_300_000_000);
            (
                "user.deleted".to_owned(),
                body,
                format!("msg_old{i}_deleted"),
            )
        })
        .collect();
    stack.broker.publish_many(&deletions).await;
    eventually(
        "every new account provisioned",
        Duration::from_secs(120),
        || async {
            stack
                .db
                .scalar("SELECT count(*) FROM workspaces WHERE user_id LIKE 'user_2new%'")
                .await
                == holders
        },
    )
    .await;
    assert_eq!(worker.metric(metrics::WORKSPACE_FAILED).await, Some(0.0));
    assert_eq!(stack.dead_letters_ready().await, 0);
    assert!(
        worker.expect_metric(metrics::DELIVERIES_IN_FLIGHT).await <= 16.0,
        "waiting retries hold no prefetch"
    );
}

#[tokio::test]
async fn a_username_chosen_in_clerk_takes_a_derived_one_and_says_so() {
    let stack = Stack::new().await;
    let worker = consume(&stack, &[]).await;
    // Xu signed up without a username: `alice` is derived from the email.
    let xu = UserEvent::created("user_2xu", "alice@example.com", None);
    stack
        .broker
        .publish("user.created", &xu.body(), "msg_xu")
        .await;
    eventually("Xu provisioned", Duration::from_secs(20), || async {
        stack.workspaces().await == 1
    })
    .await;

    // Someone else chooses `alice` in Clerk, which allows it: Xu has no Clerk username.
    let alice = UserEvent::created("user_2alice", "a.smith@example.com", Some("alice"));
    stack
        .broker
        .publish("user.created", &alice.body(), "msg_alice")
        .await;
    eventually("alice provisioned", Duration::from_secs(20), || async {
        stack.workspaces().await == 2
    })
    .await;
    let rows = stack
        .db
        .rows("SELECT id, username, username_fallback FROM users ORDER BY id")
        .await;
    assert_eq!(rows[0]["username"], "alice", "{rows:?}");
    assert!(rows[0]["username_fallback"].is_null(), "chosen: {rows:?}");
    let xu_row = &rows[1];
    assert_eq!(xu_row["id"], "user_2xu");
    assert_eq!(xu_row["username"], xu_row["username_fallback"], "{rows:?}");
    assert!(
        xu_row["username"].as_str().unwrap().starts_with("alice_"),
        "{rows:?}"
    );
    assert_eq!(
        worker.expect_metric(metrics::USERNAMES_REASSIGNED).await,
        1.0
    );
    assert_eq!(worker.metric(metrics::WORKSPACE_FAILED).await, Some(0.0));

    // Xu's later events keep the fallback and stay derived; no conflict, ever.
    stack
        .broker
        .publish("user.updated", &xu.updated(1_000).body(), "msg_xu_updated")
        .await;
    eventually("Xu's update processed", Duration::from_secs(20), || async {
        worker
            .metric(metrics::EVENTS_PROCESSED)
            .await
            .is_some_and(|processed| processed >= 3.0)
    })
    .await;
    assert_eq!(
        stack
            .db
            .scalar(
                "SELECT count(*) FROM users WHERE id = 'user_2xu' AND username LIKE 'alice\\_%'"
            )
            .await,
        1
    );
    assert_eq!(worker.metric(metrics::WORKSPACE_FAILED).await, Some(0.0));
}
