//! The worker through PgBouncer in transaction pooling mode (a private PgBouncer 1.18, two
//! server connections shared by every client): without `DATABASE_PGBOUNCER` PgBouncer refuses
//! the worker's start-up option (its timeouts), so the mistake shows at once; with it, the consumer (its
//! readiness check and tombstone purge too) and the commands do everything right, a cut between
//! PgBouncer and PostgreSQL included.

use std::process::{Command, Output};
use std::time::Duration;

use integration_tests::app::TestApp;
use integration_tests::clerk::{UserEvent, deleted_body};
use integration_tests::clerk_api::FakeClerk;
use integration_tests::eventually;
use integration_tests::ops::series;
use integration_tests::pgbouncer::PgBouncer;
use integration_tests::proxy::CuttableProxy;
use integration_tests::stack::Stack;
use serde_json::Value;
use worker::metrics;

const WORKER: &str = env!("CARGO_BIN_EXE_worker-under-test");
const SIGN_UPS: usize = 300;

/// `worker consume` through `bouncer`: four connections kept open, sixteen provisionings at
/// once, batches on, fast retries; `extra` last.
async fn consume(stack: &Stack, bouncer: &PgBouncer, extra: &[(&'static str, &str)]) -> TestApp {
    let url = bouncer.url(&stack.db.name);
    let settings = [
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_MIN_CONNECTIONS", "4"),
        ("MAX_CONCURRENCY", "16"),
        ("BATCH_SIZE", "16"),
        ("RETRY_INITIAL_DELAY", "20ms"),
        ("RETRY_MAX_DELAY", "1s"),
    ];
    TestApp::spawn(&["consume"], &stack.env(&[&settings[..], extra].concat())).await
}

const PGBOUNCER: [(&str, &str); 1] = [("DATABASE_PGBOUNCER", "true")];

fn user(i: usize) -> UserEvent {
    UserEvent::created(
        &format!("user_2pgb{i:05}"),
        &format!("pgb{i}@example.com"),
        Some(&format!("pgb_{i}")),
    )
}

/// Events as `TestBroker::publish_many` takes them: (routing key, body, message id).
type Events = Vec<(String, Vec<u8>, String)>;

/// What the churn must leave.
struct Expected {
    events: usize,
    live: i64,
    /// Live users an update renamed.
    renamed: i64,
    deleted: i64,
}

/// `n` sign-ups; then an update (a new first name) of every third user and the deletion of
/// every fifth.
fn churn(n: usize) -> (Events, Events, Expected) {
    let sign_ups: Events = (0..n)
        .map(|i| ("user.created".into(), user(i).body(), format!("msg_c{i}")))
        .collect();
    let mut changes = Events::new();
    for i in (0..n).step_by(3) {
        let mut update = user(i).updated(1_000);
        update.first_name = Some("Renamed".to_owned());
        changes.push(("user.updated".into(), update.body(), format!("msg_u{i}")));
    }
    for i in (0..n).step_by(5) {
        let body = deleted_body(&user(i).id, user(i).updated_at + 5_000);
        changes.push(("user.deleted".into(), body, format!("msg_d{i}")));
    }
    let live = (0..n).filter(|i| i % 5 != 0).count() as i64;
    let expected = Expected {
        events: sign_ups.len() + changes.len(),
        live,
        renamed: (0..n).filter(|i| i % 5 != 0 && i % 3 == 0).count() as i64,
        deleted: n as i64 - live,
    };
    (sign_ups, changes, expected)
}

/// Waits until every event is processed, then checks the database ended in Clerk's state and
/// nothing was dead-lettered.
async fn assert_converged(stack: &Stack, worker: &TestApp, expected: &Expected) {
    let events = expected.events as f64;
    eventually(
        "every event processed",
        Duration::from_secs(180),
        || async {
            worker
                .metric(metrics::EVENTS_PROCESSED)
                .await
                .is_some_and(|processed| processed >= events)
        },
    )
    .await;
    assert_eq!(worker.metric(metrics::WORKSPACE_FAILED).await, Some(0.0));
    assert!(stack.take_dead_letters().await.is_empty());
    assert_eq!(stack.users().await, expected.live);
    let one_each = "SELECT count(*) FROM users u WHERE (SELECT count(*) FROM workspaces w \
                    WHERE w.user_id = u.id) = 1";
    assert_eq!(stack.db.scalar(one_each).await, expected.live);
    assert_eq!(stack.workspaces().await, expected.live);
    let renamed = "SELECT count(*) FROM users WHERE first_name = 'Renamed'";
    assert_eq!(stack.db.scalar(renamed).await, expected.renamed);
    let tombstones = "SELECT count(*) FROM user_tombstones";
    assert_eq!(stack.db.scalar(tombstones).await, expected.deleted);
    let resurrected = "SELECT count(*) FROM users u JOIN user_tombstones t ON t.user_id = u.id";
    assert_eq!(stack.db.scalar(resurrected).await, 0);
}

/// `worker ARGS` on `env`, through `bouncer` with `DATABASE_PGBOUNCER=<pgbouncer>`, run off the
/// test's runtime (which may serve a stand-in the command calls); its output.
async fn run(
    bouncer: &PgBouncer,
    db: &str,
    pgbouncer: &str,
    args: &[&str],
    env: Vec<(&'static str, String)>,
) -> Output {
    let mut command = Command::new(WORKER);
    command
        .args(args)
        .envs(env)
        .env("DATABASE_URL", bouncer.url(db))
        .env("DATABASE_PGBOUNCER", pgbouncer)
        .env("DATABASE_MIN_CONNECTIONS", "1")
        .env("RUST_LOG", "warn")
        .env_remove("LOG_FORMAT");
    tokio::task::spawn_blocking(move || command.output().expect("the worker binary runs"))
        .await
        .expect("the command's thread")
}

/// `worker provision` of `body`: its exit status and JSON line.
async fn provision(
    bouncer: &PgBouncer,
    db: &str,
    pgbouncer: &str,
    body: &[u8],
) -> (Option<i32>, Value) {
    let file = tempfile::NamedTempFile::new().expect("a temp file");
    std::fs::write(file.path(), body).expect("the body written");
    let path = file.path().to_str().expect("a UTF-8 path");
    let output = run(bouncer, db, pgbouncer, &["provision", path], Vec::new()).await;
    (output.status.code(), json(&output))
}

fn json(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|err| {
        panic!(
            "{err}: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Without the setting the worker sends its timeouts as a start-up option, which PgBouncer
/// refuses: the mistake shows at once, naming the parameter, instead of as prepared statements
/// colliding now and then.
const REFUSED: &str = "unsupported startup parameter: options";

#[tokio::test]
async fn without_the_setting_commands_through_pgbouncer_are_refused_naming_the_start_up_option() {
    let stack = Stack::new().await;
    let bouncer = PgBouncer::start(integration_tests::server_addr()).await;

    let (status, line) = provision(&bouncer, &stack.db.name, "false", &user(0).body()).await;
    assert_eq!(status, Some(75), "{line}");
    assert_eq!(line["reason"], "database_unavailable", "{line}");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(REFUSED), "{line}");
}

#[tokio::test]
async fn without_the_setting_the_consumer_through_pgbouncer_is_not_ready_and_dead_letters_nothing()
{
    let stack = Stack::new().await;
    let bouncer = PgBouncer::start(integration_tests::server_addr()).await;
    let worker = consume(&stack, &bouncer, &[("RETRY_MAX_ATTEMPTS", "2")]).await;
    let (sign_ups, _, _) = churn(10);
    stack.broker.publish_many(&sign_ups).await;

    eventually("/readyz 503", Duration::from_secs(20), || async {
        worker.readyz().await.0 == 503
    })
    .await;
    let retried = &series(
        metrics::EVENTS_RETRIED,
        &[("reason", "database_unavailable")],
    );
    eventually(
        "retries as unavailable",
        Duration::from_secs(20),
        || async { worker.expect_metric(retried).await > 2.0 },
    )
    .await;
    assert_eq!(
        stack.dead_letters_ready().await,
        0,
        "unavailability spends no budget"
    );
    assert_eq!(stack.workspaces().await, 0);
}

#[tokio::test]
async fn with_the_setting_a_consumer_through_pgbouncer_applies_sign_ups_updates_and_deletions() {
    let stack = Stack::new().await;
    let bouncer = PgBouncer::start(integration_tests::server_addr()).await;
    let worker = consume(&stack, &bouncer, &PGBOUNCER).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    let (sign_ups, changes, expected) = churn(SIGN_UPS);

    stack.broker.publish_many(&sign_ups).await;
    stack.broker.publish_many(&changes).await;
    assert_converged(&stack, &worker, &expected).await;
}

#[tokio::test]
async fn with_the_setting_a_cut_between_pgbouncer_and_postgresql_loses_nothing() {
    let stack = Stack::new().await;
    let proxy = CuttableProxy::start(integration_tests::server_addr()).await;
    let bouncer = PgBouncer::start(proxy.addr).await;
    let worker = consume(&stack, &bouncer, &PGBOUNCER).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    let (sign_ups, changes, expected) = churn(SIGN_UPS);
    stack.broker.publish_many(&sign_ups).await;

    eventually(
        "provisioning under way",
        Duration::from_secs(60),
        || async { stack.workspaces().await >= 20 },
    )
    .await;
    proxy.cut().await;
    // The updates and deletions arrive while PostgreSQL is out of PgBouncer's reach.
    stack.broker.publish_many(&changes).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let renamed = "SELECT count(*) FROM users WHERE first_name = 'Renamed'";
    let renamed_during_the_cut = stack.db.scalar(renamed).await;
    proxy.restore();

    assert_eq!(renamed_during_the_cut, 0, "an update got through the cut");
    assert_converged(&stack, &worker, &expected).await;
    let unavailable = &series(
        metrics::EVENTS_RETRIED,
        &[("reason", "database_unavailable")],
    );
    assert!(
        worker.expect_metric(unavailable).await > 0.0,
        "the cut went unnoticed"
    );
}

#[tokio::test]
async fn with_the_setting_readyz_is_200_through_pgbouncer() {
    let stack = Stack::new().await;
    let bouncer = PgBouncer::start(integration_tests::server_addr()).await;
    let worker = consume(&stack, &bouncer, &PGBOUNCER).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    let (status, body) = worker.readyz().await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["checks"]["database"], true);
    assert_eq!(body["checks"]["database_migrations"], true);
}

#[tokio::test]
async fn with_the_setting_the_tombstone_purge_works_through_pgbouncer() {
    let stack = Stack::new().await;
    stack
        .db
        .execute(
            "INSERT INTO user_tombstones VALUES ('user_2old', now() - interval '2 hours'), \
             ('user_2recent', now() - interval '10 minutes')",
        )
        .await;
    let bouncer = PgBouncer::start(integration_tests::server_addr()).await;
    let purge = [
        ("TOMBSTONE_RETENTION", "1h"),
        ("TOMBSTONE_PURGE_INTERVAL", "200ms"),
    ];
    let _worker = consume(&stack, &bouncer, &[&PGBOUNCER[..], &purge].concat()).await;

    let old = "SELECT count(*) FROM user_tombstones WHERE user_id = 'user_2old'";
    eventually(
        "the old tombstone to go",
        Duration::from_secs(20),
        || async { stack.db.scalar(old).await == 0 },
    )
    .await;
    let recent = "SELECT count(*) FROM user_tombstones WHERE user_id = 'user_2recent'";
    assert_eq!(stack.db.scalar(recent).await, 1);
}

#[tokio::test]
async fn with_the_setting_provision_health_user_show_and_a_dry_run_replay_work_through_pgbouncer() {
    let stack = Stack::new().await;
    let bouncer = &PgBouncer::start(integration_tests::server_addr()).await;
    let db = stack.db.name.as_str();

    let provisioned = futures::future::join_all(
        (0..12).map(|i| async move { provision(bouncer, db, "true", &user(i).body()).await }),
    )
    .await;
    for (status, line) in &provisioned {
        assert_eq!(*status, Some(0), "{line}");
        assert_eq!(line["outcome"], "created", "{line}");
    }
    assert_eq!(stack.workspaces().await, 12);

    let health = run(bouncer, db, "true", &["health"], Vec::new()).await;
    assert!(health.status.success(), "{}", json(&health));
    let id = user(3).id;
    let show = run(
        bouncer,
        db,
        "true",
        &["user", "show", &id, "--json"],
        Vec::new(),
    )
    .await;
    assert!(show.status.success(), "{show:?}");
    assert_eq!(json(&show)["email"], "pgb3@example.com");

    // A dead letter of a user provisioned since: the dry run asks the database.
    let body = user(3).body();
    let broker = &stack.broker;
    broker
        .publish_dead_letter("user.created", &body, "msg_dead", "transient")
        .await;
    let args = ["dlq", "replay", "--dry-run", "--json"];
    let dry_run = run(bouncer, db, "true", &args, broker.env()).await;
    assert!(dry_run.status.success(), "{dry_run:?}");
    assert_eq!(json(&dry_run)["no_ops"], 1);
}

#[tokio::test]
async fn with_the_setting_reconcile_repairs_through_pgbouncer() {
    const SECRET: &str = "sk_test_pgbouncer";
    let stack = Stack::new().await;
    let bouncer = PgBouncer::start(integration_tests::server_addr()).await;
    let clerk = FakeClerk::start(SECRET).await;
    for i in 0..40 {
        clerk.add(user(i).data());
    }
    // Half of Clerk's users are here already, and two Clerk no longer has.
    for i in (0..40).step_by(2).chain([100, 101]) {
        integration_tests::clerk::provision(&stack.db.conn, &user(i).body())
            .await
            .expect("provisioned");
    }

    let args = [
        "reconcile",
        "--apply",
        "--delete-orphans",
        "--force",
        "--json",
    ];
    let clerk_env = vec![
        ("CLERK_API_URL", clerk.url()),
        ("CLERK_SECRET_KEY", SECRET.to_owned()),
        ("CLERK_API_RATE", "1000".to_owned()),
    ];
    let output = run(&bouncer, &stack.db.name, "true", &args, clerk_env).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stack.users().await, 40);
    assert_eq!(stack.workspaces().await, 40);
    let orphans = "SELECT count(*) FROM users WHERE id IN ('user_2pgb00100', 'user_2pgb00101')";
    assert_eq!(stack.db.scalar(orphans).await, 0);
}
