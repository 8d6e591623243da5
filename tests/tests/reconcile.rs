//! `worker reconcile` against a local stand-in of Clerk's Backend API and the real PostgreSQL
//! (and RabbitMQ, for the race with the consumer).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use integration_tests::TestDb;
use integration_tests::clerk::{UserEvent, provision};
use integration_tests::clerk_api::FakeClerk;
use integration_tests::eventually;
use integration_tests::stack::Stack;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use worker::clerk_api::{ClerkApi, ClerkApiSettings};
use worker::reconcile::job::Job;
use worker::reconcile::lease::{self, Lease};
use worker::reconcile::{Options, Progress, Trigger};

const SECRET: &str = "sk_test_reconcile_secret_4f9a";

fn user(i: usize) -> UserEvent {
    UserEvent::created(
        &format!("user_2rec{i:06}"),
        &format!("rec{i}@example.com"),
        Some(&format!("rec_{i}")),
    )
}

fn reconcile(db: &TestDb, clerk: &FakeClerk, args: &[&str]) -> Output {
    reconcile_with(db, clerk, SECRET, "1000", args)
}

fn reconcile_with(db: &TestDb, clerk: &FakeClerk, key: &str, rate: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_worker-under-test"))
        .arg("reconcile")
        .args(args)
        .env("DATABASE_URL", db.settings.expose_url())
        .env("DATABASE_MIN_CONNECTIONS", "1")
        .env("CLERK_API_URL", clerk.url())
        .env("CLERK_SECRET_KEY", key)
        .env("CLERK_API_RATE", rate)
        .env("RUST_LOG", "info")
        .env_remove("LOG_FORMAT")
        .output()
        .expect("the worker binary runs")
}

/// The JSON report of a `--json` run that must succeed.
fn report(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn ok(output: &Output) -> Value {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    report(output)
}

async fn counts(db: &TestDb) -> (i64, i64) {
    (
        db.scalar("SELECT count(*) FROM users").await,
        db.scalar("SELECT count(*) FROM workspaces").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_1200_users_into_an_empty_database_through_429_and_500() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start(SECRET).await;
    for i in 0..1200 {
        clerk.add(user(i).data());
    }
    let dry = ok(&reconcile(&db, &clerk, &["--json"]));
    assert_eq!(dry["missing"]["count"], 1200);
    assert_eq!(dry["clerk_users"], 1200);
    assert_eq!(counts(&db).await, (0, 0), "a dry run changes nothing");

    clerk.throttle_request(2);
    clerk.fail_request(4);
    let applied = ok(&reconcile(&db, &clerk, &["--apply", "--json"]));
    assert_eq!(applied["missing"]["count"], 1200);
    assert_eq!(applied["provisioned"], 1200);
    assert_eq!(applied["failed"]["count"], 0);
    assert_eq!(counts(&db).await, (1200, 1200));
    assert_eq!(clerk.answered(429), 1);
    assert_eq!(clerk.answered(500), 1);

    let rerun = ok(&reconcile(&db, &clerk, &["--apply", "--json"]));
    assert_eq!(rerun["in_sync"], 1200);
    assert_eq!(rerun["provisioned"], 0);
    assert_eq!(rerun["orphaned"]["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_reported_then_repaired_and_a_phone_only_user_is_unprovisionable() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start(SECRET).await;
    let (renamed, unhoused, fine) = (user(1), user(2), user(3));
    for u in [&renamed, &unhoused, &fine] {
        provision(&db.conn, &u.body()).await.expect("provisioned");
        clerk.add(u.data());
    }
    let mut newer = renamed.updated(60_000);
    newer.first_name = Some("Renamed".into());
    clerk.replace(newer.data());
    db.execute(&format!(
        "DELETE FROM workspaces WHERE user_id = '{}'",
        unhoused.id
    ))
    .await;
    let mut phone = user(4);
    phone.email = None;
    clerk.add(phone.data());

    let dry = ok(&reconcile(&db, &clerk, &["--json"]));
    assert_eq!(dry["stale"]["ids"], serde_json::json!([renamed.id]));
    assert_eq!(dry["no_workspace"]["ids"], serde_json::json!([unhoused.id]));
    assert_eq!(dry["in_sync"], 1);
    assert_eq!(dry["unprovisionable"]["by_reason"]["missing_email"], 1);
    assert_eq!(dry["unprovisionable"]["ids"][0][0], phone.id);
    assert_eq!(dry["unprovisionable"]["ids"][0][1], "missing_email");

    let applied = ok(&reconcile(&db, &clerk, &["--apply", "--json"]));
    assert_eq!(applied["provisioned"], 2);
    let name = db
        .rows(&format!(
            "SELECT first_name FROM users WHERE id = '{}'",
            renamed.id
        ))
        .await;
    assert_eq!(name[0]["first_name"], "Renamed");
    assert_eq!(counts(&db).await, (3, 3));

    let rerun = ok(&reconcile(&db, &clerk, &["--apply", "--json"]));
    assert_eq!(rerun["in_sync"], 3);
    assert_eq!(rerun["provisioned"], 0);
    assert_eq!(rerun["unprovisionable"]["count"], 1);
    let plain = reconcile(&db, &clerk, &[]);
    let summary = String::from_utf8_lossy(&plain.stdout);
    assert!(
        summary.contains("3 in sync") && summary.contains("1 unprovisionable"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_is_reported_and_deleted_only_with_the_flag_under_the_fraction_guard() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start(SECRET).await;
    for i in 0..4 {
        provision(&db.conn, &user(i).body())
            .await
            .expect("provisioned");
        clerk.add(user(i).data());
    }
    let (orphan, skipped) = (user(0).id, user(1).id);
    clerk.remove(&orphan);
    clerk.hide_from_list(&skipped);

    let dry = ok(&reconcile(&db, &clerk, &["--json"]));
    assert_eq!(
        dry["orphaned"]["ids"],
        serde_json::json!([orphan]),
        "a user the list skipped is no orphan"
    );
    ok(&reconcile(&db, &clerk, &["--apply", "--json"]));
    assert_eq!(
        counts(&db).await,
        (4, 4),
        "orphans are only reported without --delete-orphans"
    );

    let refused = reconcile(&db, &clerk, &["--apply", "--delete-orphans", "--json"]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(report(&refused)["deletion_refused"], true);
    assert_eq!(counts(&db).await, (4, 4), "1 of 4 is over the default 1%");

    let deleted = ok(&reconcile(
        &db,
        &clerk,
        &[
            "--apply",
            "--delete-orphans",
            "--max-delete-fraction",
            "0.25",
            "--json",
        ],
    ));
    assert_eq!(deleted["deleted"], 1);
    assert_eq!(counts(&db).await, (3, 3));
    let tombstones = format!("SELECT count(*) FROM user_tombstones WHERE user_id = '{orphan}'");
    assert_eq!(db.scalar(&tombstones).await, 1);

    clerk.remove(&user(2).id);
    let forced = ok(&reconcile(
        &db,
        &clerk,
        &["--apply", "--delete-orphans", "--force", "--json"],
    ));
    assert_eq!(forced["deleted"], 1);
    assert_eq!(counts(&db).await, (2, 2));

    let rerun = ok(&reconcile(
        &db,
        &clerk,
        &["--apply", "--delete-orphans", "--json"],
    ));
    assert_eq!(rerun["orphaned"]["count"], 0);
    assert_eq!(rerun["deleted"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_stops_at_once_with_a_clear_error_that_never_prints_the_key() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start(SECRET).await;
    clerk.add(user(1).data());
    let wrong = "sk_test_wrong_key_c0ffee";
    let output = reconcile_with(&db, &clerk, wrong, "1000", &["--apply"]);
    assert_eq!(output.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(all.contains("CLERK_SECRET_KEY"), "{all}");
    assert!(all.contains("401"), "{all}");
    assert!(!all.contains(wrong) && !all.contains(SECRET), "{all}");
    assert_eq!(clerk.requests(), 1, "401 is not retried");
    assert_eq!(counts(&db).await, (0, 0));
}

struct Quiet;

impl Progress for Quiet {
    fn total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn phase(&self, _: &'static str) {}
}

/// One manual run in process, under the lease, as `worker reconcile` makes it.
async fn run_once(
    db: &worker::db::Pool,
    settings: &worker::config::DatabaseSettings,
    api: &ClerkApi,
    options: Options,
) -> Result<worker::reconcile::Report, String> {
    let job = Job {
        db,
        database: settings,
        api,
        holder: "in-process test",
        lease_ttl: Duration::from_secs(30),
        metrics: None,
    };
    let lease = job
        .take_lease()
        .await
        .expect("database")
        .expect("lease free");
    let never = CancellationToken::new();
    let finished = job
        .run(lease, Trigger::Manual, options, &Quiet, &never)
        .await
        .expect("run recorded");
    finished
        .report
        .ok_or_else(|| finished.error.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_racing_the_consumer_ends_in_clerks_state() {
    let stack = Stack::new().await;
    let clerk = FakeClerk::start(SECRET).await;
    let n = 300;
    let finals: Vec<UserEvent> = (0..n)
        .map(|i| {
            let mut last = user(i).updated(10_000);
            last.first_name = Some(format!("Final{i}"));
            last
        })
        .collect();
    for last in &finals {
        clerk.add(last.data());
    }
    let _consumer = stack.start(&["consume"], &[]).await;
    let settings = ClerkApiSettings::new(clerk.url().parse().expect("url"), SECRET);
    let api = ClerkApi::new(&settings).expect("client");
    let options = Options {
        apply: true,
        delete_orphans: false,
        max_delete_fraction: 0.01,
        force: false,
        concurrency: 8,
    };
    let publish = async {
        for (i, last) in finals.iter().enumerate() {
            let first = user(i);
            let broker = &stack.broker;
            broker
                .publish("user.created", &first.body(), &format!("msg_c{i}"))
                .await;
            broker
                .publish("user.updated", &last.body(), &format!("msg_u{i}"))
                .await;
            // An older update arriving late must not win either.
            let old = first.updated(5_000);
            broker
                .publish("user.updated", &old.body(), &format!("msg_o{i}"))
                .await;
        }
    };
    let pool = stack.db.pool();
    let run = run_once(&pool, &stack.db.settings, &api, options);
    let ((), report) = tokio::join!(publish, run);
    let report = report.expect("reconcile");
    assert_eq!(report.failed.count, 0);
    eventually("the queue drained", Duration::from_secs(60), || async {
        stack.main_queue_ready().await == 0 && stack.users().await == n as i64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wrong = stack
        .db
        .scalar("SELECT count(*) FROM users WHERE first_name NOT LIKE 'Final%'")
        .await;
    assert_eq!(wrong, 0, "every row ends in Clerk's state");
    assert_eq!(stack.workspaces().await, n as i64);
    let rerun = run_once(&pool, &stack.db.settings, &api, options)
        .await
        .expect("rerun");
    assert_eq!(rerun.in_sync, n as u64);
    assert_eq!(rerun.provisioned, 0);
}

/// The default pace (8 requests/s) against the stand-in: 10,000 users are 20 pages, 2.5 s of
/// pacing plus the work; printed so the time per 100,000 users can be read off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_per_100k_users_at_the_default_pace() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start(SECRET).await;
    let n = 10_000;
    for i in 0..n {
        clerk.add(user(i).data());
    }
    let started = Instant::now();
    let applied = ok(&reconcile_with(
        &db,
        &clerk,
        SECRET,
        "8",
        &["--apply", "--json"],
    ));
    let backfill = started.elapsed();
    assert_eq!(applied["provisioned"], n);
    let started = Instant::now();
    let dry = ok(&reconcile_with(&db, &clerk, SECRET, "8", &["--json"]));
    let compare = started.elapsed();
    assert_eq!(dry["in_sync"], n);
    let per_100k = |d: Duration| d.as_secs_f64() * 100_000.0 / n as f64;
    eprintln!(
        "MEASURED at 8 req/s: backfill {n} users {backfill:?} (~{:.0} s per 100k); \
         compare {n} in sync {compare:?} (~{:.0} s per 100k)",
        per_100k(backfill),
        per_100k(compare)
    );
}

fn worker_reconcile(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_worker-under-test"))
        .arg("reconcile")
        .args(args)
        .env("DATABASE_URL", db.settings.expose_url())
        .env("DATABASE_MIN_CONNECTIONS", "1")
        .env_remove("CLERK_SECRET_KEY")
        .env_remove("LOG_FORMAT")
        .output()
        .expect("the worker binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_pointed_at_the_wrong_instance_is_undone_and_the_next_run_restores_its_users() {
    let db = TestDb::migrated().await;
    let right = FakeClerk::start(SECRET).await;
    for i in 0..3 {
        provision(&db.conn, &user(i).body())
            .await
            .expect("provisioned");
        right.add(user(i).data());
    }
    // A deletion a webhook made: undo must leave its tombstone alone.
    provision(&db.conn, &user(9).body())
        .await
        .expect("provisioned");
    let deleted_body = integration_tests::clerk::deleted_body(&user(9).id, 2_000_000_000_000);
    provision(&db.conn, &deleted_body).await.expect("deleted");

    let wrong = FakeClerk::start(SECRET).await;
    let mistake = ok(&reconcile(
        &db,
        &wrong,
        &["--apply", "--delete-orphans", "--force", "--json"],
    ));
    assert_eq!(mistake["deleted"], 3);
    assert_eq!(counts(&db).await, (0, 0));
    let run_id = mistake["run_id"].as_i64().expect("the run's id");
    let credited = format!("SELECT count(*) FROM user_tombstones WHERE reconcile_run = {run_id}");
    assert_eq!(db.scalar(&credited).await, 3);

    let undo = worker_reconcile(&db, &["undo", &run_id.to_string()]);
    assert_eq!(undo.status.code(), Some(0), "{}", text(&undo));
    assert!(
        text(&undo).contains("lifted 3 tombstones"),
        "{}",
        text(&undo)
    );
    assert_eq!(db.scalar(&credited).await, 0);
    let webhook_tombstones = "SELECT count(*) FROM user_tombstones WHERE reconcile_run IS NULL";
    assert_eq!(
        db.scalar(webhook_tombstones).await,
        1,
        "the webhook's deletion stays"
    );

    let restored = ok(&reconcile(&db, &right, &["--apply", "--json"]));
    assert_eq!(restored["provisioned"], 3);
    assert_eq!(counts(&db).await, (3, 3));

    let runs = worker_reconcile(&db, &["runs", "--json"]);
    assert_eq!(runs.status.code(), Some(0), "{}", text(&runs));
    let runs: Value = serde_json::from_slice(&runs.stdout).expect("JSON");
    let runs = runs.as_array().expect("a list");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1]["id"], run_id, "newest first");
    assert!(runs[1]["undone_at"].is_string(), "{runs:?}");
    assert_eq!(runs[1]["trigger"], "manual");
    assert_eq!(runs[1]["deleted"], 3);
    assert_eq!(runs[1]["counts"]["orphaned"], 3);
    assert_eq!(runs[0]["counts"]["missing"], 3);
    assert_eq!(runs[0]["result"], "succeeded");
    let table = worker_reconcile(&db, &["runs"]);
    let table = text(&table);
    assert!(
        table.contains("orphaned=3") && table.contains("(undone)"),
        "{table}"
    );

    let unknown = worker_reconcile(&db, &["undo", "999999"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown).contains("no reconcile run 999999"),
        "{}",
        text(&unknown)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_hand_while_a_replica_holds_the_lease_it_says_who_and_exits_75() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start(SECRET).await;
    let pool = db.pool();
    let held = Lease::take(
        &pool,
        lease::RECONCILE,
        "replica-a#42#beef",
        Duration::from_secs(30),
    )
    .await
    .expect("database")
    .expect("free");
    let output = reconcile(&db, &clerk, &["--apply"]);
    assert_eq!(output.status.code(), Some(75), "{}", text(&output));
    assert!(
        text(&output).contains("replica-a#42#beef holds the lease"),
        "{}",
        text(&output)
    );
    assert_eq!(clerk.requests(), 0, "Clerk is not called");
    let undo = worker_reconcile(&db, &["undo", "1"]);
    assert_eq!(undo.status.code(), Some(75), "{}", text(&undo));
    held.release(&pool).await;
    ok(&reconcile(&db, &clerk, &["--json"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_walked_by_cursor_and_by_offset_only_where_the_api_ignores_it() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start(SECRET).await;
    for i in 0..1200 {
        clerk.add(user(i).data());
    }
    let applied = ok(&reconcile(&db, &clerk, &["--apply", "--json"]));
    assert_eq!(applied["provisioned"], 1200);
    assert_eq!(clerk.list_requests(), 3, "three pages by starting_after");

    clerk.refuse_next_cursor();
    let refused = ok(&reconcile(&db, &clerk, &["--json"]));
    assert_eq!(
        refused["in_sync"], 1200,
        "a refused cursor costs one page by offset"
    );
    assert_eq!(clerk.list_requests(), 3 + 4);

    clerk.ignore_cursor();
    let output = reconcile(&db, &clerk, &["--json"]);
    let dry = ok(&output);
    assert_eq!(dry["clerk_users"], 1200, "no user listed twice");
    assert_eq!(dry["in_sync"], 1200, "and none skipped");
    assert_eq!(
        clerk.list_requests(),
        7 + 4,
        "page 1, page 2 answered as page 1 again, then pages 2 and 3 by offset"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ignored starting_after"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_confirmed_a_hundred_ids_per_request() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start(SECRET).await;
    for i in 0..250 {
        provision(&db.conn, &user(i).body())
            .await
            .expect("provisioned");
    }
    clerk.add(user(0).data());
    let dry = ok(&reconcile(&db, &clerk, &["--json"]));
    assert_eq!(dry["orphaned"]["count"], 249);
    assert_eq!(
        clerk.confirm_requests(),
        3,
        "249 ids in 3 requests, not 249"
    );
    assert_eq!(
        clerk.requests(),
        1 + 1 + 3,
        "count, one page, three confirmations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_changed_in_the_last_minutes_is_repaired_but_not_counted_as_drift() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start(SECRET).await;
    clerk.add(user(0).data());
    let mut just_signed_up = user(1);
    just_signed_up.updated_at = chrono::Utc::now().timestamp_millis() - 30_000;
    clerk.add(just_signed_up.data());
    let applied = ok(&reconcile(&db, &clerk, &["--apply", "--json"]));
    assert_eq!(applied["missing"]["count"], 1, "the old one is drift");
    assert_eq!(
        applied["recent"]["ids"],
        serde_json::json!([just_signed_up.id]),
        "its webhook may still come"
    );
    assert_eq!(applied["provisioned"], 2, "both are repaired");
    assert_eq!(counts(&db).await, (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_api_ignores_the_user_id_filter_each_orphan_is_confirmed_on_its_own() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start(SECRET).await;
    for i in 0..5 {
        provision(&db.conn, &user(i).body())
            .await
            .expect("provisioned");
    }
    for i in 0..2 {
        clerk.add(user(i).data());
    }
    clerk.ignore_user_id_filter();
    let output = reconcile(&db, &clerk, &["--json"]);
    let dry = ok(&output);
    assert_eq!(dry["orphaned"]["count"], 3);
    assert_eq!(
        clerk.answered(404),
        3,
        "one GET /v1/users/{{id}} per candidate"
    );
    assert_eq!(
        clerk.requests(),
        1 + 1 + 1 + 3,
        "count, page, ignored filter, three GETs"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ignored the user_id filter"), "{stderr}");
}
