//! The reconcile schedule inside the worker: users Clerk has that no webhook brought are
//! provisioned within one interval; replicas share one run per interval through the lease row; a
//! holder killed mid-run is replaced; a holder that lost the lease cannot write. Against the local
//! Clerk stand-in, the real PostgreSQL and RabbitMQ.

use std::time::{Duration, Instant};

use integration_tests::clerk::UserEvent;
use integration_tests::clerk_api::FakeClerk;
use integration_tests::ops::series;
use integration_tests::process::WorkerProcess;
use integration_tests::stack::Stack;
use integration_tests::{eventually, throughout};
use sea_orm::ConnectionTrait;
use worker::domain::ClerkTime;
use worker::metrics::{
    RECONCILE_DRIFT, RECONCILE_INTERVAL, RECONCILE_LAST_SUCCESS, RECONCILE_RUNS,
};
use worker::provision::{self, Guard};
use worker::reconcile::lease::{self, Lease};

const WORKER: &str = env!("CARGO_BIN_EXE_worker-under-test");
const SECRET: &str = "sk_test_self_healing_7c1e";

fn user(i: usize) -> UserEvent {
    UserEvent::created(
        &format!("user_2heal{i:06}"),
        &format!("heal{i}@example.com"),
        Some(&format!("heal_{i}")),
    )
}

/// The schedule's settings for a worker on `clerk`, every `interval`.
fn schedule<'a>(clerk: &'a str, interval: &'a str, ttl: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("CLERK_API_URL", clerk),
        ("CLERK_SECRET_KEY", SECRET),
        ("CLERK_API_RATE", "1000"),
        ("RECONCILE_INTERVAL", interval),
        ("RECONCILE_LEASE_TTL", ttl),
    ]
}

/// Scheduled runs recorded so far, by result.
async fn scheduled_runs(stack: &Stack, result: &str) -> i64 {
    stack
        .db
        .scalar(&format!(
            "SELECT count(*) FROM reconcile_runs WHERE trigger = 'schedule' AND result = '{result}'"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_no_webhook_brought_are_provisioned_by_the_running_worker_within_one_interval() {
    let stack = Stack::new().await;
    let clerk = FakeClerk::start(SECRET).await;
    for i in 0..3 {
        clerk.add(user(i).data());
    }
    let url = clerk.url();
    let worker = stack.start(&["consume"], &schedule(&url, "2s", "5s")).await;
    eventually(
        "the first run provisioned them",
        Duration::from_secs(20),
        || async { stack.workspaces().await == 3 },
    )
    .await;
    // A sign-up whose webhook never came: repaired by the next run, an interval later.
    let signed_up = Instant::now();
    clerk.add(user(3).data());
    eventually(
        "the next run provisioned it",
        Duration::from_secs(20),
        || async { stack.workspaces().await == 4 },
    )
    .await;
    let repaired_in = signed_up.elapsed();
    eprintln!(
        "MEASURED: a user no webhook brought was provisioned {repaired_in:?} after sign-up (interval 2 s)"
    );
    assert!(
        repaired_in < Duration::from_secs(2 * 2 + 5),
        "{repaired_in:?}"
    );

    let ops = &*worker;
    eventually("the runs are counted", Duration::from_secs(10), || async {
        ops.metric(&series(RECONCILE_RUNS, &[("result", "succeeded")]))
            .await
            .unwrap_or(0.0)
            >= 2.0
    })
    .await;
    let missing = ops
        .expect_metric(&series(RECONCILE_DRIFT, &[("class", "missing")]))
        .await;
    assert!(missing >= 4.0, "missing drift counted: {missing}");
    assert_eq!(ops.expect_metric(RECONCILE_INTERVAL).await, 2.0);
    let last_success = ops.expect_metric(RECONCILE_LAST_SUCCESS).await;
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - last_success).abs() < 60.0, "{last_success} vs {now}");
    assert!(scheduled_runs(&stack, "succeeded").await >= 2);
    assert_eq!(scheduled_runs(&stack, "failed").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reported_not_deleted_by_scheduled_runs_by_default() {
    let stack = Stack::new().await;
    let clerk = FakeClerk::start(SECRET).await;
    clerk.add(user(0).data());
    // A row whose user Clerk no longer has: made before the worker starts.
    let orphan = user(1);
    integration_tests::clerk::provision(&stack.db.conn, &orphan.body())
        .await
        .expect("provisioned");
    let url = clerk.url();
    let _worker = stack.start(&["consume"], &schedule(&url, "2s", "5s")).await;
    eventually("a run finished", Duration::from_secs(20), || async {
        scheduled_runs(&stack, "succeeded").await >= 1
    })
    .await;
    let orphaned = stack
        .db
        .scalar("SELECT (counts->>'orphaned')::bigint FROM reconcile_runs WHERE result = 'succeeded' ORDER BY id LIMIT 1")
        .await;
    assert_eq!(orphaned, 1, "the orphan is reported");
    assert_eq!(stack.users().await, 2, "and not deleted");
    assert_eq!(
        clerk.confirm_requests(),
        1,
        "confirmed in one batch request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_run_one_reconcile_per_interval_between_them() {
    let stack = Stack::new().await;
    let clerk = FakeClerk::start(SECRET).await;
    for i in 0..5 {
        clerk.add(user(i).data());
    }
    let url = clerk.url();
    let env = schedule(&url, "3s", "5s");
    let a = stack.start(&["consume"], &env).await;
    let b = stack.start(&["consume"], &env).await;
    tokio::time::sleep(Duration::from_secs(14)).await;
    // Stopped first, so no run is half-way when the runs are read.
    drop((a, b));
    eventually("both replicas stopped", Duration::from_secs(30), || async {
        stack
            .db
            .scalar("SELECT count(*) FROM reconcile_runs WHERE result = 'running'")
            .await
            == 0
    })
    .await;
    let runs = stack
        .db
        .rows("SELECT holder, result, extract(epoch FROM started_at)::float8 AS started FROM reconcile_runs ORDER BY id")
        .await;
    let started: Vec<f64> = runs
        .iter()
        .map(|r| r["started"].as_f64().unwrap())
        .collect();
    assert!(
        (3..=6).contains(&runs.len()),
        "one run per 3 s interval between both replicas over 14 s, not one each: {runs:?}"
    );
    for pair in started.windows(2) {
        assert!(
            pair[1] - pair[0] >= 3.0 - 0.05,
            "runs an interval apart at least: {runs:?}"
        );
    }
    assert!(runs.iter().all(|r| r["result"] == "succeeded"), "{runs:?}");
    // Each run walks Clerk's one page once: the list requests are the runs.
    assert_eq!(clerk.list_requests(), runs.len() as u64, "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_holder_is_killed_mid_run_the_other_replica_completes_a_run_within_the_lease_ttl()
{
    let stack = Stack::new().await;
    let clerk = FakeClerk::start(SECRET).await;
    for i in 0..1200 {
        clerk.add(user(i).data());
    }
    // Slow answers: the first holder's run takes several seconds, long enough to kill it.
    clerk.slow_down(Duration::from_millis(1500));
    let url = clerk.url();
    // An interval far longer than the lease: the replacement must not wait for it.
    let settings = schedule(&url, "60s", "2s");
    let ttl = Duration::from_secs(2);
    let env: Vec<(&str, String)> = stack.env(&settings);
    let mut first = WorkerProcess::spawn(WORKER, &["consume"], &env).await;
    let first_holder = format!("#{}#", first.pid());
    eventually("the first replica is running a reconcile", Duration::from_secs(30), || async {
        stack
            .db
            .scalar(&format!(
                "SELECT count(*) FROM reconcile_runs WHERE result = 'running' AND holder LIKE '%{first_holder}%'"
            ))
            .await
            == 1
    })
    .await;
    let second = stack.start(&["consume"], &settings).await;
    first.kill();
    let killed = Instant::now();
    clerk.slow_down(Duration::ZERO);
    eventually("the other replica completed a run", Duration::from_secs(30), || async {
        stack
            .db
            .scalar(&format!(
                "SELECT count(*) FROM reconcile_runs WHERE result = 'succeeded' AND holder NOT LIKE '%{first_holder}%'"
            ))
            .await
            >= 1
    })
    .await;
    let replaced_in = killed.elapsed();
    eprintln!(
        "MEASURED: holder SIGKILLed mid-run; the other replica completed a run {replaced_in:?} later (lease TTL 2 s, interval 60 s)"
    );
    // The lease's expiry, then the whole run (1,200 users) on a shared machine.
    let bound = ttl + Duration::from_secs(8);
    assert!(replaced_in < bound, "{replaced_in:?} >= {bound:?}");
    assert_eq!(stack.workspaces().await, 1200);
    let abandoned = stack
        .db
        .scalar("SELECT count(*) FROM reconcile_runs WHERE result = 'abandoned'")
        .await;
    assert_eq!(abandoned, 1, "the killed run is marked abandoned");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_flight_holds_off_the_next_take_which_then_fences_it_out() {
    let stack = Stack::new().await;
    let pool = stack.db.pool();
    let holder = Lease::take(&pool, lease::RECONCILE, "holder", Duration::from_secs(1))
        .await
        .expect("database")
        .expect("free");
    let epoch = holder.epoch();
    drop(holder); // no renewal: it expires in a second
    // A fenced write's transaction, open while the lease expires.
    let write = sea_orm::TransactionTrait::begin(&stack.db.conn)
        .await
        .expect("begin");
    let fenced = sea_orm::ConnectionTrait::query_one_raw(
        &write,
        lease::fence_statement(lease::RECONCILE, epoch),
    )
    .await
    .expect("fence");
    assert!(fenced.is_some(), "the lease is still ours");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let take = tokio::spawn({
        let pool = pool.clone();
        async move { Lease::take(&pool, lease::RECONCILE, "next", Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !take.is_finished(),
        "the take waits for the write in flight"
    );
    write.commit().await.expect("commit");
    let next = take
        .await
        .expect("the task")
        .expect("database")
        .expect("taken once the write committed");
    assert_eq!(next.epoch(), epoch + 1);
    let stale = stack
        .db
        .conn
        .query_one_raw(lease::fence_statement(lease::RECONCILE, epoch));
    assert!(
        stale.await.expect("fence").is_none(),
        "the old epoch is fenced out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_lost_the_lease_cannot_write() {
    let stack = Stack::new().await;
    let pool = stack.db.pool();
    let ttl = Duration::from_secs(1);
    let stale = Lease::take(&pool, lease::RECONCILE, "stale", ttl)
        .await
        .expect("database")
        .expect("free");
    let stale_epoch = stale.epoch();
    // Paused past its time to live (no renewal), then another replica takes the lease.
    drop(stale);
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let expired_write = stale_write(&pool, stale_epoch, 0).await;
    assert_eq!(expired_write, None, "an expired lease writes nothing");
    let current = Lease::take(&pool, lease::RECONCILE, "current", Duration::from_secs(30))
        .await
        .expect("database")
        .expect("expired, so free");
    assert_eq!(current.epoch(), stale_epoch + 1);
    assert_eq!(stale_write(&pool, stale_epoch, 1).await, None);
    assert_eq!(stack.users().await, 0, "no write got through");
    // The current holder's own writes go through.
    let event = worker::clerk::parse_event(&user(2).body()).expect("parsed");
    let guard = Guard {
        check: current.fence(),
        reconcile_run: 0,
    };
    let written = provision::provision_guarded(&pool, &event, &guard)
        .await
        .expect("provisioned");
    assert!(written.is_some());
    assert_eq!(stack.users().await, 1);
    // And a deletion by the stale holder is refused too: the user stays.
    let deletion = worker::domain::Event::UserDeleted(worker::domain::UserDeletion {
        id: worker::domain::UserId::parse("user_2heal000002").expect("id"),
        deleted_at: ClerkTime::from_millis(chrono::Utc::now().timestamp_millis()).expect("time"),
    });
    let stale_guard = Guard {
        check: lease::fence_statement(lease::RECONCILE, stale_epoch),
        reconcile_run: 0,
    };
    let refused = provision::provision_guarded(&pool, &deletion, &stale_guard)
        .await
        .expect("no error, only refused");
    assert_eq!(refused, None);
    assert_eq!(stack.users().await, 1);
    let current_holder = lease::held_by(&pool, lease::RECONCILE)
        .await
        .expect("database")
        .expect("held");
    assert_eq!(current_holder.holder, "current");
}

/// The stale holder (epoch `epoch`) tries to provision user `i`; Some when it was written.
async fn stale_write(
    pool: &worker::db::Pool,
    epoch: i64,
    i: usize,
) -> Option<provision::Provisioned> {
    let event = worker::clerk::parse_event(&user(i).body()).expect("parsed");
    let guard = Guard {
        check: lease::fence_statement(lease::RECONCILE, epoch),
        reconcile_run: 0,
    };
    provision::provision_guarded(pool, &event, &guard)
        .await
        .expect("no error, only refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_is_off_without_a_key_and_says_so_in_its_metrics() {
    let stack = Stack::new().await;
    let worker = stack
        .start(&["consume"], &[("RECONCILE_INTERVAL", "1s")])
        .await;
    throughout("no run starts", Duration::from_secs(3), || async {
        stack.db.scalar("SELECT count(*) FROM reconcile_runs").await == 0
    })
    .await;
    assert_eq!(worker.expect_metric(RECONCILE_INTERVAL).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_counts_from_the_latest_run_a_failed_one_sooner_a_dead_one_not_at_all() {
    let stack = Stack::new().await;
    let pool = stack.db.pool();
    let (hour, five_minutes) = (Duration::from_secs(3600), Duration::from_secs(300));
    let due = || worker::reconcile::runs::due(&pool, hour, five_minutes);
    assert_eq!(due().await.expect("database"), None, "no run yet: due now");
    let insert = |result: &str, ago: &str| {
        format!(
            "INSERT INTO reconcile_runs (trigger, holder, epoch, applied, started_at, result) \
             VALUES ('schedule', 'h', 1, true, clock_timestamp() - interval '{ago}', '{result}')"
        )
    };
    stack.db.execute(&insert("succeeded", "10 minutes")).await;
    let after_success = due().await.expect("database").expect("a run counts");
    assert!(
        (after_success.in_seconds - 3000.0).abs() < 5.0,
        "{after_success:?}"
    );
    stack.db.execute(&insert("failed", "1 minute")).await;
    let after_failure = due().await.expect("database").expect("a run counts");
    assert!(
        (after_failure.in_seconds - 240.0).abs() < 5.0,
        "{after_failure:?}"
    );
    // A run still `running` whose holder has no lease (killed) does not count.
    stack.db.execute(&insert("running", "10 seconds")).await;
    let with_dead_run = due().await.expect("database").expect("a run counts");
    assert!(
        (with_dead_run.in_seconds - 240.0).abs() < 5.0,
        "{with_dead_run:?}"
    );
    assert_eq!(with_dead_run.lease_left, None);
}

/// Progress nobody watches.
struct Quiet;

impl worker::reconcile::Progress for Quiet {
    fn total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn phase(&self, _: &'static str) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lease_is_taken_away_stops_before_writing_and_says_lost_lease() {
    use worker::clerk_api::{ClerkApi, ClerkApiSettings};
    use worker::reconcile::job::Job;
    use worker::reconcile::{Options, RunResult, Trigger};

    let stack = Stack::new().await;
    let clerk = FakeClerk::start(SECRET).await;
    for i in 0..600 {
        clerk.add(user(i).data());
    }
    // Slow enough that the lease is gone before the first page arrives.
    clerk.slow_down(Duration::from_millis(800));
    let mut settings = ClerkApiSettings::new(clerk.url().parse().expect("url"), SECRET);
    settings.rate = 1000.0;
    let api = ClerkApi::new(&settings).expect("client");
    let pool = stack.db.pool();
    let job = Job {
        db: &pool,
        database: &stack.db.settings,
        api: &api,
        holder: "paused replica",
        lease_ttl: Duration::from_secs(1),
        metrics: None,
    };
    let lease = job.take_lease().await.expect("database").expect("free");
    let options = Options {
        apply: true,
        delete_orphans: false,
        max_delete_fraction: 0.01,
        force: false,
        concurrency: 8,
    };
    let never = tokio_util::sync::CancellationToken::new();
    let run = job.run(lease, Trigger::Manual, options, &Quiet, &never);
    let take_away = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stack
            .db
            .execute("UPDATE job_leases SET epoch = epoch + 1, holder = 'another replica'")
            .await;
    };
    let (finished, ()) = tokio::join!(run, take_away);
    let finished = finished.expect("recorded");
    assert_eq!(finished.result, RunResult::LostLease, "{finished:?}");
    assert_eq!(
        stack.users().await,
        0,
        "nothing written after the lease went"
    );
    let recorded = stack
        .db
        .scalar("SELECT count(*) FROM reconcile_runs WHERE result = 'lost_lease' AND finished_at IS NOT NULL")
        .await;
    assert_eq!(recorded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_learns_at_its_next_renewal_that_the_lease_was_taken() {
    let stack = Stack::new().await;
    let pool = stack.db.pool();
    let lease = Lease::take(&pool, lease::RECONCILE, "holder", Duration::from_secs(3))
        .await
        .expect("database")
        .expect("free");
    // Past its time to live, renewals have kept it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(lease.is_held());
    let held = lease::held_by(&pool, lease::RECONCILE)
        .await
        .expect("database");
    assert_eq!(held.map(|h| h.holder).as_deref(), Some("holder"));
    stack
        .db
        .execute("UPDATE job_leases SET epoch = epoch + 1, holder = 'another'")
        .await;
    eventually(
        "the renewal finds it gone",
        Duration::from_secs(2),
        || async { !lease.is_held() },
    )
    .await;
}
