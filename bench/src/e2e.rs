//! `e2e` and `latency`: signed webhooks POSTed to a running `worker run`; latency from the start
//! of each POST to the commit of its workspace (`workspaces.created_at`, the transaction's time,
//! on the same clock).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use integration_tests::process::WorkerProcess;
use integration_tests::webhook::{SECRET, Webhook};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::stack::{Build, Stack, peak_rss_mib, sign_up, spawn, wait_for_workspaces};
use crate::stats::Latency;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct EndToEnd {
    pub events: usize,
    pub connections: usize,
    /// Accepted webhooks per second at the ingress.
    pub requests_per_s: f64,
    /// Workspaces committed per second, first POST to last commit.
    pub events_per_s: f64,
    pub latency: Latency,
    pub peak_rss_mib: Option<f64>,
    /// Spans the worker's trace export dropped (`trace_spans_dropped_total`, every reason).
    pub trace_spans_dropped: Option<f64>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct FixedRate {
    pub events: usize,
    pub offered_per_s: f64,
    pub latency: Latency,
}

/// When each POST started, by user id: what a commit's latency is measured from.
pub type Starts = Arc<Mutex<HashMap<String, DateTime<Utc>>>>;

/// A fresh stack with `worker run` on it, signing with the bench's webhook secret.
pub async fn start_service(
    build: &Build,
    extra: &[(&'static str, String)],
) -> anyhow::Result<(Stack, WorkerProcess)> {
    let stack = build.stack().await?;
    let mut env = extra.to_vec();
    env.push(("CLERK_WEBHOOK_SECRET", SECRET.to_owned()));
    let service = spawn(build, &stack, &["run"], &env).await?;
    Ok((stack, service))
}

/// N webhooks as fast as `connections` concurrent clients can send them.
pub async fn saturate(
    build: &Build,
    events: usize,
    connections: usize,
    extra: &[(&'static str, String)],
) -> anyhow::Result<EndToEnd> {
    let (stack, service) = start_service(build, extra).await?;
    let bodies: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        (0..events)
            .map(|i| {
                let event = sign_up("e2e", i);
                (event.id.clone(), event.body())
            })
            .collect(),
    );
    let starts: Starts = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let first = Utc::now();
    let senders: Vec<_> = (0..connections)
        .map(|_| {
            let (bodies, starts, next, addr) = (
                bodies.clone(),
                starts.clone(),
                next.clone(),
                service.ingress_addr,
            );
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((id, body)) = bodies.get(i) else {
                        return anyhow::Ok(());
                    };
                    starts.lock().await.insert(id.clone(), Utc::now());
                    post(&client, addr, body).await?;
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await??;
    }
    let accepted_in = (Utc::now() - first).as_seconds_f64();
    wait_for_workspaces(&stack, events as i64, Duration::from_secs(600)).await?;
    let latency = latencies(&stack, &starts).await?;
    let last_commit = last_commit(&stack).await?;
    let trace_spans_dropped = spans_dropped(&service).await;
    Ok(EndToEnd {
        events,
        connections,
        requests_per_s: events as f64 / accepted_in,
        events_per_s: events as f64 / (last_commit - first).as_seconds_f64(),
        latency,
        peak_rss_mib: peak_rss_mib(service.pid()),
        trace_spans_dropped,
    })
}

/// The spans `service` dropped, read from its `/metrics`.
async fn spans_dropped(service: &WorkerProcess) -> Option<f64> {
    let ops = integration_tests::ops::OpsClient::new(service.ops_addr());
    let mut dropped = 0.0;
    for reason in worker::traces::queue::DropReason::ALL {
        let series = integration_tests::ops::series(
            worker::metrics::TRACE_SPANS_DROPPED,
            &[("reason", reason.as_str())],
        );
        dropped += ops.metric(&series).await?;
    }
    Some(dropped)
}

/// N webhooks at a fixed rate, each on its own task, so latency is not queueing behind the bench.
pub async fn fixed_rate(
    build: &Build,
    events: usize,
    per_second: f64,
    extra: &[(&'static str, String)],
) -> anyhow::Result<FixedRate> {
    let (stack, service) = start_service(build, extra).await?;
    let client = reqwest::Client::new();
    let addr = service.ingress_addr;
    offer(&client, addr, "warm", WARM_UP_EVENTS, per_second, None).await?;
    wait_for_workspaces(&stack, WARM_UP_EVENTS as i64, Duration::from_secs(600)).await?;
    let starts: Starts = Arc::default();
    offer(&client, addr, "rate", events, per_second, Some(&starts)).await?;
    let total = (WARM_UP_EVENTS + events) as i64;
    wait_for_workspaces(&stack, total, Duration::from_secs(600)).await?;
    Ok(FixedRate {
        events,
        offered_per_s: per_second,
        latency: latencies(&stack, &starts).await?,
    })
}

/// Sent first, at the offered rate, and left out of the figures: a fresh process's first
/// transactions (new database backends, cold caches, the HTTP client's connections) are its
/// start-up, not its latency at that load.
const WARM_UP_EVENTS: usize = 300;

/// POSTs `events` sign-ups named `run` at `per_second`, noting each start in `starts` if given.
pub async fn offer(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    run: &str,
    events: usize,
    per_second: f64,
    starts: Option<&Starts>,
) -> anyhow::Result<()> {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = Vec::with_capacity(events);
    for i in 0..events {
        ticks.tick().await;
        let event = sign_up(run, i);
        let (client, starts) = (client.clone(), starts.cloned());
        sends.push(tokio::spawn(async move {
            if let Some(starts) = starts {
                starts.lock().await.insert(event.id.clone(), Utc::now());
            }
            post(&client, addr, &event.body()).await
        }));
    }
    for send in sends {
        send.await??;
    }
    Ok(())
}

/// POSTs one signed webhook; a 503 (the ingress shedding load, or the broker away) or no answer
/// at all (a kept-alive connection the ingress closed as this request went out) is tried again
/// with the same id, as Svix does, until it is accepted.
pub(crate) async fn post(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    body: &[u8],
) -> anyhow::Result<()> {
    let webhook = Webhook::signed(SECRET, body);
    for _ in 0..POST_TRIES {
        let response = client
            .post(format!("http://{addr}/webhooks/clerk"))
            .header("svix-id", &webhook.id)
            .header("svix-timestamp", webhook.timestamp.to_string())
            .header("svix-signature", &webhook.signature)
            .body(webhook.body.clone())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(err) if err.is_request() || err.is_connect() => {
                tokio::time::sleep(POST_RETRY_AFTER).await;
                continue;
            }
            Err(err) => return Err(err).context("POST /webhooks/clerk"),
        };
        match response.status().as_u16() {
            202 => return Ok(()),
            503 => tokio::time::sleep(POST_RETRY_AFTER).await,
            status => bail!("the ingress answered {status}"),
        }
    }
    bail!("no 202 from the ingress in {POST_TRIES} tries")
}

/// How often, and how soon, a POST without a 202 is tried again.
const POST_TRIES: usize = 50;
const POST_RETRY_AFTER: Duration = Duration::from_millis(100);

async fn latencies(stack: &Stack, starts: &Starts) -> anyhow::Result<Latency> {
    let mut samples: Vec<f64> = commit_latencies(stack, starts)
        .await?
        .into_iter()
        .map(|(_, ms)| ms)
        .collect();
    Ok(Latency::of(&mut samples))
}

/// Each POST's start and its POST-to-commit milliseconds; an error unless every POST in `starts`
/// has its workspace.
pub async fn commit_latencies(
    stack: &Stack,
    starts: &Starts,
) -> anyhow::Result<Vec<(DateTime<Utc>, f64)>> {
    let starts = starts.lock().await;
    let mut samples = Vec::with_capacity(starts.len());
    let mut after = String::new();
    // In pages, so a long soak's rows are never all in memory as JSON at once; each row carries
    // its page's last key, compared by the database's collation as the next page's will be.
    loop {
        let sql = format!(
            "SELECT *, max(user_id) OVER () AS page_last FROM (\
             SELECT user_id, (EXTRACT(EPOCH FROM created_at) * 1000000)::bigint AS committed_us \
             FROM workspaces WHERE user_id > '{after}' ORDER BY user_id LIMIT {COMMIT_PAGE}) page"
        );
        let rows = stack.db.rows(&sql).await;
        for row in &rows {
            let Some(user_id) = row["user_id"].as_str() else {
                continue;
            };
            let start = starts.get(user_id);
            if let Some((start, committed_us)) = start.zip(row["committed_us"].as_i64()) {
                let ms = (committed_us - start.timestamp_micros()) as f64 / 1000.0;
                samples.push((*start, ms));
            }
        }
        match rows.first().and_then(|row| row["page_last"].as_str()) {
            Some(last) if rows.len() == COMMIT_PAGE => last.clone_into(&mut after),
            _ => break,
        }
    }
    if samples.len() != starts.len() {
        bail!("{} commits for {} posts", samples.len(), starts.len());
    }
    Ok(samples)
}

/// Rows per query in `commit_latencies`.
const COMMIT_PAGE: usize = 50_000;

async fn last_commit(stack: &Stack) -> anyhow::Result<DateTime<Utc>> {
    let micros = stack
        .db
        .scalar("SELECT (EXTRACT(EPOCH FROM max(created_at)) * 1000000)::bigint FROM workspaces")
        .await;
    DateTime::from_timestamp_micros(micros).context("a commit time")
}
