//! `heal`: the self-healing promise, measured. Users sign up in the Clerk stand-in while the
//! ingress loses a fraction of their webhooks; `worker run` reconciles every `--heal-interval`.
//! Prints the time from the last sign-up until every user has its workspace (the promise: within
//! one interval plus one run), the list and confirmation requests Clerk answered, and the time a
//! run takes per 100,000 users at the default pace (8 requests/s), backfilling and in sync.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use integration_tests::clerk_api::FakeClerk;
use integration_tests::process::WorkerProcess;
use integration_tests::webhook::SECRET;
use serde::Serialize;

use crate::e2e::post;
use crate::stack::{Build, sign_up, spawn, wait_for_workspaces};

/// The stand-in's bearer token.
const CLERK_KEY: &str = "sk_test_bench_heal";

/// Webhooks sent at once.
const SENDERS: usize = 16;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Heal {
    pub users: usize,
    /// Webhooks the ingress lost.
    pub dropped: usize,
    pub interval_s: f64,
    /// From the last sign-up until every user had a workspace.
    pub healed_after_s: f64,
    /// Scheduled runs that succeeded after the sign-ups began, and Clerk's answers to every run.
    pub runs: i64,
    pub list_requests: u64,
    pub confirm_requests: u64,
    /// One run at the default pace, scaled to 100,000 users.
    pub backfill_per_100k_s: f64,
    pub in_sync_per_100k_s: f64,
}

/// Heals `users` sign-ups of which `drop_fraction` lost their webhook, then times runs.
pub async fn measure(
    build: &Build,
    users: usize,
    drop_fraction: f64,
    interval: Duration,
    extra: &[(&'static str, String)],
) -> anyhow::Result<Heal> {
    let clerk = FakeClerk::start(CLERK_KEY).await;
    let stack = build.stack().await?;
    let mut env = extra.to_vec();
    env.extend([
        ("CLERK_WEBHOOK_SECRET", SECRET.to_owned()),
        ("CLERK_API_URL", clerk.url()),
        ("CLERK_SECRET_KEY", CLERK_KEY.to_owned()),
        (
            "RECONCILE_INTERVAL",
            humantime::format_duration(interval).to_string(),
        ),
    ]);
    let service = spawn(build, &stack, &["run"], &env).await?;
    // Steady state first: the schedule's first run (due at start) is behind us, so the lost
    // webhooks wait for the next interval, as in production.
    wait_for_first_run(&stack, interval * 2 + Duration::from_secs(60)).await?;
    eprintln!(
        "heal: {users} sign-ups, {:.0} % of webhooks lost, RECONCILE_INTERVAL {interval:?}",
        drop_fraction * 100.0
    );
    let dropped = sign_up_all(&clerk, service.ingress_addr, users, drop_fraction).await?;
    let last_sign_up = Instant::now();
    wait_for_workspaces(
        &stack,
        users as i64,
        interval * 3 + Duration::from_secs(600),
    )
    .await?;
    let healed_after = last_sign_up.elapsed();
    let runs = stack
        .db
        .scalar("SELECT count(*) FROM reconcile_runs WHERE result = 'succeeded'")
        .await
        - 1;
    drop(service);
    let (backfill, in_sync) = time_runs(build, users).await?;
    let per_100k = |d: Duration| d.as_secs_f64() * 100_000.0 / users as f64;
    Ok(Heal {
        users,
        dropped,
        interval_s: interval.as_secs_f64(),
        healed_after_s: healed_after.as_secs_f64(),
        runs,
        list_requests: clerk.list_requests(),
        confirm_requests: clerk.confirm_requests(),
        backfill_per_100k_s: per_100k(backfill),
        in_sync_per_100k_s: per_100k(in_sync),
    })
}

async fn wait_for_first_run(stack: &crate::stack::Stack, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let sql = "SELECT count(*) FROM reconcile_runs WHERE result = 'succeeded'";
    while stack.db.scalar(sql).await < 1 {
        if Instant::now() > deadline {
            bail!("no reconcile run succeeded within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Adds every user to Clerk and posts the webhooks of all but the lost ones (every user whose
/// number falls in the lost fraction of each hundred); returns how many were lost.
async fn sign_up_all(
    clerk: &FakeClerk,
    ingress: std::net::SocketAddr,
    users: usize,
    drop_fraction: f64,
) -> anyhow::Result<usize> {
    let lost = |i: usize| ((i % 100) as f64) < drop_fraction * 100.0;
    let mut bodies = Vec::new();
    for i in 0..users {
        let user = sign_up("heal", i);
        clerk.add(user.data());
        if !lost(i) {
            bodies.push(user.body());
        }
    }
    let sent = bodies.len();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (bodies, next) = (bodies.clone(), next.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while let Some(body) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
                    post(&client, ingress, body).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for sender in senders {
        sender.await??;
    }
    Ok(users - sent)
}

/// `worker reconcile --apply` at the default pace over `users` users nobody provisioned, then
/// once more with everything in sync.
async fn time_runs(build: &Build, users: usize) -> anyhow::Result<(Duration, Duration)> {
    let clerk = FakeClerk::start(CLERK_KEY).await;
    for i in 0..users {
        clerk.add(sign_up("pace", i).data());
    }
    let stack = build.stack().await?;
    let mut env = stack.env(&[]);
    env.extend([
        ("CLERK_API_URL", clerk.url()),
        ("CLERK_SECRET_KEY", CLERK_KEY.to_owned()),
    ]);
    let mut times = Vec::new();
    for what in ["backfill", "in sync"] {
        eprintln!("heal: one reconcile run over {users} users ({what}) at the default pace");
        let started = Instant::now();
        let binary = build.binary.to_string_lossy().into_owned();
        let mut run = WorkerProcess::start(&binary, &["reconcile", "--apply"], &env);
        let status = run.wait_exit(Duration::from_secs(3600)).await;
        if !status.success() {
            bail!("reconcile ({what}) exited with {status}:\n{}", run.logs());
        }
        times.push(started.elapsed());
    }
    if stack.workspaces().await != users as i64 {
        bail!("the backfill left users without a workspace");
    }
    Ok((times[0], times[1]))
}

/// The figures as lines of the bench's table.
pub fn table(heal: &Heal) -> String {
    format!(
        "heal: {users} users, {dropped} webhooks lost; RECONCILE_INTERVAL {interval:.0} s\n\
         every user had a workspace {healed:.1} s after the last sign-up ({ratio:.2} intervals; \
         the promise: one interval plus one run)\n\
         {runs} runs succeeded meanwhile; Clerk answered {lists} list and {confirms} confirmation requests\n\
         one run per 100,000 users at 8 requests/s: backfilling {backfill:.0} s, in sync {in_sync:.0} s\n",
        users = heal.users,
        dropped = heal.dropped,
        interval = heal.interval_s,
        healed = heal.healed_after_s,
        ratio = heal.healed_after_s / heal.interval_s,
        runs = heal.runs,
        lists = heal.list_requests,
        confirms = heal.confirm_requests,
        backfill = heal.backfill_per_100k_s,
        in_sync = heal.in_sync_per_100k_s,
    )
}
