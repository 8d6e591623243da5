//! `drain`: N events pre-loaded into the queue, then `worker consume` started; how fast it
//! provisions them all, what each event cost in CPU (worker, PostgreSQL, RabbitMQ), and, in a
//! short second pass through a counting proxy, how many statements and round trips it took.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use worker::domain::event_type::USER_CREATED;

use crate::cpu::{CpuCost, Snapshot};
use crate::stack::{Build, Stack, commit_span_seconds, sign_up, spawn, wait_for_workspaces};
use crate::wire::CountingProxy;

/// Events of the counting pass: enough that the worker's start-up (readiness checks, statements
/// prepared once per pooled connection) weighs little per event.
const COUNTED_EVENTS: usize = 5_000;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Drain {
    pub events: usize,
    /// Events over the span from the first to the last commit.
    pub events_per_s: f64,
    /// Including the worker's start-up.
    pub wall_seconds: f64,
    pub peak_rss_mib: Option<f64>,
    /// CPU seconds per 1,000 events, start-up included (the worker) and over the drain (the
    /// database and the broker, whatever else they served meanwhile).
    pub cpu: CpuCost,
    pub wire: Wire,
}

/// What the worker asked of PostgreSQL, per event, in the counting pass.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Wire {
    pub statements_per_event: f64,
    pub round_trips_per_event: f64,
}

pub async fn measure(
    build: &Build,
    events: usize,
    extra: &[(&'static str, String)],
) -> anyhow::Result<Drain> {
    let stack = build.stack().await?;
    preload(&stack, "drain", events).await;
    let before = Snapshot::take(None);
    let started = Instant::now();
    let worker = spawn(build, &stack, &["consume"], extra).await?;
    wait_for_workspaces(&stack, events as i64, Duration::from_secs(600)).await?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu = Snapshot::take(Some(worker.pid())).per_thousand_since(&before, events);
    let span = commit_span_seconds(&stack).await.max(1e-3);
    let peak_rss_mib = crate::stack::peak_rss_mib(worker.pid());
    drop(worker);
    let wire = count_wire(build, &stack, events, extra).await?;
    Ok(Drain {
        events,
        events_per_s: events as f64 / span,
        wall_seconds,
        peak_rss_mib,
        cpu,
        wire,
    })
}

/// Sign-ups of users nobody has seen, waiting in the queue.
async fn preload(stack: &Stack, run: &str, events: usize) {
    let load: Vec<(String, Vec<u8>, String)> = (0..events)
        .map(|i| {
            (
                USER_CREATED.to_owned(),
                sign_up(run, i).body(),
                format!("msg_{run}{i}"),
            )
        })
        .collect();
    for chunk in load.chunks(2000) {
        stack.broker.publish_many(chunk).await;
    }
}

/// Provisions [`COUNTED_EVENTS`] more through a counting proxy in front of PostgreSQL (a worker
/// of the same build, the same settings), after the `already` provisioned by the timed pass;
/// its start-up is counted too.
async fn count_wire(
    build: &Build,
    stack: &Stack,
    already: usize,
    extra: &[(&'static str, String)],
) -> anyhow::Result<Wire> {
    let mut url = reqwest::Url::parse(stack.db.settings.expose_url())?;
    let upstream = tokio::net::lookup_host((
        url.host_str().context("a database host")?,
        url.port().unwrap_or(5432),
    ))
    .await?
    .next()
    .context("the database host resolves")?;
    let proxy = CountingProxy::start(upstream).await?;
    url.set_ip_host(proxy.addr.ip())
        .map_err(|()| anyhow::anyhow!("an IP host"))?;
    url.set_port(Some(proxy.addr.port()))
        .map_err(|()| anyhow::anyhow!("a port"))?;
    // The proxy reads the protocol's framing, which TLS would hide.
    url.query_pairs_mut().append_pair("sslmode", "disable");
    let mut env = extra.to_vec();
    env.push(("DATABASE_URL", url.to_string()));
    preload(stack, "wire", COUNTED_EVENTS).await;
    let worker = spawn(build, stack, &["consume"], &env).await?;
    wait_for_workspaces(
        stack,
        (already + COUNTED_EVENTS) as i64,
        Duration::from_secs(600),
    )
    .await?;
    let per_event = |n: u64| n as f64 / COUNTED_EVENTS as f64;
    let wire = Wire {
        statements_per_event: per_event(proxy.counts.statements()),
        round_trips_per_event: per_event(proxy.counts.round_trips()),
    };
    drop(worker);
    Ok(wire)
}
