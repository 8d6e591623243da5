//! `drain`: N events pre-loaded into the queue, then `worker consume` started; how fast it
//! provisions them all.

use std::time::{Duration, Instant};

use serde::Serialize;
use worker::clerk::event_type::USER_CREATED;

use crate::stack::{Stack, commit_span_seconds, sign_up, spawn, wait_for_workspaces};

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Drain {
    pub events: usize,
    /// Events over the span from the first to the last commit.
    pub events_per_s: f64,
    /// Including the worker's start-up.
    pub wall_seconds: f64,
    pub peak_rss_mib: Option<f64>,
}

pub async fn measure(events: usize, extra: &[(&'static str, String)]) -> anyhow::Result<Drain> {
    let stack = Stack::new().await;
    let load: Vec<(String, Vec<u8>, String)> = (0..events)
        .map(|i| {
            (
                USER_CREATED.to_owned(),
                sign_up("drain", i).body(),
                format!("msg_drain{i}"),
            )
        })
        .collect();
    for chunk in load.chunks(2000) {
        stack.broker.publish_many(chunk).await;
    }
    let started = Instant::now();
    let worker = spawn(&stack, &["consume"], extra).await?;
    wait_for_workspaces(&stack, events as i64, Duration::from_secs(600)).await?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let span = commit_span_seconds(&stack).await.max(1e-3);
    Ok(Drain {
        events,
        events_per_s: events as f64 / span,
        wall_seconds,
        peak_rss_mib: crate::stack::peak_rss_mib(worker.pid()),
    })
}
