//! A database that hangs is an outage, not a stall: the service's connections run under
//! PostgreSQL's own timeouts (start-up options directly, `SET LOCAL` through PgBouncer; never
//! for migrations), a user's row held by another session costs that user retries and nobody
//! else anything, and a database that stops answering without closing the connection pauses the
//! consumer and lets SIGTERM through within the grace period.

use std::time::{Duration, Instant};

use integration_tests::clerk::UserEvent;
use integration_tests::ops::series;
use integration_tests::pgbouncer::PgBouncer;
use integration_tests::process::WorkerProcess;
use integration_tests::proxy::CuttableProxy;
use integration_tests::stack::Stack;
use integration_tests::{TestDb, eventually, throughout};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use worker::config::DatabaseSettings;
use worker::error::ProvisionError;
use worker::{metrics, provision};

const WORKER: &str = env!("CARGO_BIN_EXE_worker-under-test");

/// `SHOW name` on `db`.
async fn show(db: &impl ConnectionTrait, name: &str) -> String {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SHOW {name}"),
        ))
        .await
        .expect("SHOW answers")
        .expect("a row");
    row.try_get_by_index::<String>(0).expect("a text value")
}

/// A database of the test's own behind a proxy that can stall, and the URL through it.
async fn behind_a_proxy() -> (Stack, CuttableProxy, String) {
    let stack = Stack::new().await;
    let proxy = CuttableProxy::start(integration_tests::server_addr()).await;
    let url = format!("postgres://postgres@{}/{}", proxy.addr, stack.db.name);
    (stack, proxy, url)
}

fn sign_up(run: &str, i: usize) -> (String, Vec<u8>, String) {
    let event = UserEvent::created(
        &format!("user_2{run}{i:03}"),
        &format!("{run}{i}@example.com"),
        None,
    );
    ("user.created".into(), event.body(), format!("msg_{run}{i}"))
}

#[tokio::test]
async fn service_connections_run_under_the_server_timeouts_and_migrations_do_not() {
    let db = TestDb::migrated().await;
    let mut settings = db.settings.clone();
    settings.statement_timeout = Duration::from_millis(15_000);
    settings.lock_timeout = Duration::from_millis(4_000);
    settings.idle_in_transaction_timeout = Duration::from_secs(30);
    let pool = worker::db::connect(&settings).await.expect("the pool");
    assert_eq!(show(&pool, "statement_timeout").await, "15s");
    assert_eq!(show(&pool, "lock_timeout").await, "4s");
    assert_eq!(
        show(&pool, "idle_in_transaction_session_timeout").await,
        "30s"
    );
    let migrations = worker::db::migrate(&settings).await.expect("migrated");
    assert_eq!(show(&migrations, "statement_timeout").await, "0");
    assert_eq!(show(&migrations, "lock_timeout").await, "0");
}

#[tokio::test]
async fn through_pgbouncer_every_transaction_sets_the_timeouts_itself() {
    let db = TestDb::migrated().await;
    let bouncer = PgBouncer::start(integration_tests::server_addr()).await;
    let mut settings = DatabaseSettings::for_url(bouncer.url(&db.name));
    settings.pgbouncer = true;
    settings.min_connections = 1;
    settings.lock_timeout = Duration::from_millis(2_500);
    let pool = worker::db::connect(&settings)
        .await
        .expect("a pool through PgBouncer (no start-up options: it would refuse them)");
    // A statement on its own runs in a transaction of its own, which sets them.
    assert_eq!(show(&pool, "statement_timeout").await, "15s");
    assert_eq!(show(&pool, "lock_timeout").await, "2500ms");
    let txn = pool.begin().await.expect("a transaction");
    assert_eq!(
        show(&txn, "idle_in_transaction_session_timeout").await,
        "30s"
    );
    txn.rollback().await.expect("rolled back");
}

#[tokio::test]
async fn a_row_locked_by_another_session_costs_its_user_retries_and_nobody_else_anything() {
    let stack = Stack::new().await;
    let settings = [
        ("DATABASE_LOCK_TIMEOUT", "2s"),
        ("RETRY_INITIAL_DELAY", "100ms"),
        ("RETRY_MAX_DELAY", "1s"),
        ("RETRY_MAX_ATTEMPTS", "40"),
        ("PREFETCH", "64"),
        ("MAX_CONCURRENCY", "4"),
    ];
    let worker = stack.start(&["consume"], &settings).await;
    let locked = UserEvent::created("user_2lockedrow", "locked@example.com", None);
    stack
        .broker
        .publish("user.created", &locked.body(), "msg_locked_created")
        .await;
    eventually("the user to exist", Duration::from_secs(20), || async {
        stack.workspaces().await == 1
    })
    .await;

    // Another session holds the user's row for 40 s.
    let holder = stack.db.conn.begin().await.expect("a transaction");
    holder
        .execute_unprepared("SELECT 1 FROM users WHERE id = 'user_2lockedrow' FOR UPDATE")
        .await
        .expect("row locked");
    let locked_at = Instant::now();
    let update = UserEvent {
        first_name: Some("Renamed".into()),
        ..locked.updated(1_000)
    };
    stack
        .broker
        .publish("user.updated", &update.body(), "msg_locked_updated")
        .await;
    let others: Vec<_> = (0..50).map(|i| sign_up("lockothers", i)).collect();
    stack.broker.publish_many(&others).await;
    eventually(
        "the 50 others provisioned while the row is held",
        Duration::from_secs(30),
        || async { stack.workspaces().await == 51 },
    )
    .await;
    assert!(locked_at.elapsed() < Duration::from_secs(40));
    let first_name = "SELECT count(*) FROM users WHERE first_name = 'Renamed'";
    assert_eq!(stack.db.scalar(first_name).await, 0, "the update waits");

    // The row stays held for 40 s in all: the update keeps waiting (and retrying) without a
    // dead letter, and nobody else is held up.
    throughout(
        "the update waits, nothing dead-lettered, the others stay provisioned",
        Duration::from_secs(40).saturating_sub(locked_at.elapsed()),
        || async {
            stack.db.scalar(first_name).await == 0
                && stack.dead_letters_ready().await == 0
                && stack.workspaces().await == 51
        },
    )
    .await;
    holder.rollback().await.expect("lock released");
    eventually(
        "the update applied once the row is free",
        Duration::from_secs(30),
        || async { stack.db.scalar(first_name).await == 1 },
    )
    .await;
    assert_eq!(stack.dead_letters_ready().await, 0);
    let retried = series(metrics::EVENTS_RETRIED, &[("reason", "transient")]);
    assert!(
        worker.expect_metric(&retried).await >= 1.0,
        "the lock timeout retried"
    );
}

#[tokio::test]
async fn a_database_that_stops_answering_pauses_the_consumer_then_everything_is_provisioned() {
    let (stack, proxy, url) = behind_a_proxy().await;
    let settings = [
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_MAX_CONNECTIONS", "4"),
        ("DATABASE_CONNECT_TIMEOUT", "1s"),
        ("PROVISION_ATTEMPT_TIMEOUT", "1s"),
        ("DATABASE_OUTAGE_PAUSE", "2s"),
        ("RETRY_INITIAL_DELAY", "50ms"),
        ("RETRY_MAX_DELAY", "200ms"),
        ("SHUTDOWN_GRACE_PERIOD", "2s"),
        ("MAX_CONCURRENCY", "4"),
    ];
    let worker = stack.start(&["consume"], &settings).await;
    proxy.stall();
    let stalled_at = Instant::now();
    let sign_ups: Vec<_> = (0..20).map(|i| sign_up("stalled", i)).collect();
    stack.broker.publish_many(&sign_ups).await;
    // Attempt deadline (1 s) + ping (1 s) + the pause (2 s), with room for a busy machine.
    eventually(
        "/readyz 503 and the consumer paused",
        Duration::from_secs(15),
        || async {
            worker.readyz().await.0 == 503
                && worker.metric(metrics::CONSUMER_CONNECTED).await == Some(0.0)
        },
    )
    .await;
    eprintln!("paused {:?} after the stall", stalled_at.elapsed());
    assert_eq!(
        stack.main_queue_ready().await,
        20,
        "every delivery handed back"
    );

    proxy.resume();
    eventually(
        "all 20 provisioned once it answers",
        Duration::from_secs(60),
        || async { stack.workspaces().await == 20 },
    )
    .await;
    assert_eq!(stack.dead_letters_ready().await, 0);
}

#[tokio::test]
async fn sigterm_stops_a_worker_stuck_on_a_silent_database_within_the_grace_period() {
    let (stack, proxy, url) = behind_a_proxy().await;
    let settings = [
        ("DATABASE_URL", url.as_str()),
        ("SHUTDOWN_GRACE_PERIOD", "3s"),
        ("PROVISION_ATTEMPT_TIMEOUT", "60s"),
        ("DATABASE_CONNECT_TIMEOUT", "60s"),
    ];
    let env = stack.env(&settings);
    let mut worker = WorkerProcess::spawn(WORKER, &["consume"], &env).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    proxy.stall();
    let sign_ups: Vec<_> = (0..8).map(|i| sign_up("sigterm", i)).collect();
    stack.broker.publish_many(&sign_ups).await;
    // And a dead letter, which the keeper takes and cannot store: the stop must not wait for it.
    let (_, body, _) = sign_up("sigtermdead", 0);
    stack
        .broker
        .publish_dead_letter(
            "user.created",
            &body,
            "msg_sigterm_dead",
            "retries_exhausted",
        )
        .await;
    eventually("deliveries taken", Duration::from_secs(10), || async {
        stack.main_queue_ready().await < 8
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    worker.terminate();
    let asked = Instant::now();
    let status = worker.wait_exit(Duration::from_secs(3 + 5)).await;
    eprintln!("exited with {status} {:?} after SIGTERM", asked.elapsed());
    assert!(status.success(), "{status}");
    proxy.resume();
    eventually(
        "the unfinished deliveries back in the queue",
        Duration::from_secs(20),
        || async { stack.main_queue_ready().await + stack.workspaces().await as u32 >= 8 },
    )
    .await;
}

#[tokio::test]
async fn an_overrun_attempt_is_transient_while_the_database_answers_and_unavailable_when_it_is_silent()
 {
    let (stack, proxy, url) = behind_a_proxy().await;
    let mut settings = stack.db.settings.clone();
    settings.url = url.into();
    settings.min_connections = 1;
    let pool = worker::db::connect(&settings).await.expect("the pool");
    let deadline = Duration::from_millis(200);
    let slow = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<(), ProvisionError>(())
    };
    let err = provision::within(&pool, deadline, slow).await.unwrap_err();
    assert_eq!(err.as_str(), "transient", "{err}");

    proxy.stall();
    let silent = async { pool.ping().await.map_err(ProvisionError::from_db) };
    let err = provision::within(&pool, deadline, silent)
        .await
        .unwrap_err();
    assert_eq!(err.as_str(), "database_unavailable", "{err}");
    proxy.resume();
}
