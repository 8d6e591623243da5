//! `traces`: `e2e` with traces off and on, in alternating rounds of one run. On, every trace is
//! sampled (`OTEL_TRACES_SAMPLER=always_on`) and exported by OTLP/HTTP to a sink on this machine
//! that takes each export request and decodes nothing (a collector's own work is not the
//! worker's cost). Prints the throughput ratio on/off, p99 for both, what reached the sink and
//! the spans the worker dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use serde::Serialize;

use crate::e2e::{self, EndToEnd};
use crate::stack::Build;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct TracesOnOff {
    /// The median run of each.
    pub off: EndToEnd,
    pub on: EndToEnd,
    /// Events/s on over off.
    pub ratio: f64,
    /// Export requests and bytes the sink received over every run with traces on.
    pub export_requests: u64,
    pub export_bytes: u64,
}

/// Export requests and bytes received.
#[derive(Clone, Default)]
struct Sink {
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

async fn take(State(sink): State<Sink>, body: Bytes) -> &'static str {
    sink.requests.fetch_add(1, Ordering::Relaxed);
    sink.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    ""
}

async fn start_sink() -> anyhow::Result<(SocketAddr, Sink)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let sink = Sink::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(take))
        .with_state(sink.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, sink))
}

pub async fn measure(
    build: &Build,
    events: usize,
    connections: usize,
    rounds: usize,
    worker_env: &[(&'static str, String)],
) -> anyhow::Result<(TracesOnOff, Vec<f64>, Vec<f64>)> {
    let (sink_addr, sink) = start_sink().await?;
    let mut traced = worker_env.to_vec();
    traced.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{sink_addr}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
        ("OTEL_TRACES_SAMPLER", "always_on".to_owned()),
    ]);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprintln!("traces {round}/{rounds}: e2e, traces off");
        off.push(e2e::saturate(build, events, connections, worker_env).await?);
        eprintln!("traces {round}/{rounds}: e2e, traces on (every trace sampled)");
        on.push(e2e::saturate(build, events, connections, &traced).await?);
    }
    let (off_median, off_runs) = crate::median_run(off, |e| e.events_per_s);
    let (on_median, on_runs) = crate::median_run(on, |e| e.events_per_s);
    let (Some(off), Some(on)) = (off_median, on_median) else {
        anyhow::bail!("no run");
    };
    let figures = TracesOnOff {
        off,
        on,
        ratio: on.events_per_s / off.events_per_s,
        export_requests: sink.requests.load(Ordering::Relaxed),
        export_bytes: sink.bytes.load(Ordering::Relaxed),
    };
    Ok((figures, off_runs, on_runs))
}

/// The table lines of a measurement.
pub fn table(figures: &TracesOnOff, off_runs: &[f64], on_runs: &[f64]) -> String {
    let row = |name: &str, e: &EndToEnd, runs: &[f64]| {
        format!(
            "{name:<12} {:>9.0} {:>8.1} {:>8.1} {:>8.1}   {:>12}   runs {:?}\n",
            e.events_per_s,
            e.latency.p50_ms,
            e.latency.p99_ms,
            e.peak_rss_mib.unwrap_or_default(),
            e.trace_spans_dropped
                .map_or_else(|| "-".to_owned(), |n| format!("{n:.0}")),
            runs.iter().map(|r| r.round()).collect::<Vec<_>>(),
        )
    };
    format!(
        "{:<12} {:>9} {:>8} {:>8} {:>8}   {:>12}\n{}{}traces on / off = {:.2} (events/s, medians); the sink took {} export requests, {:.1} MiB\n",
        "e2e",
        "events/s",
        "p50 ms",
        "p99 ms",
        "RSS MiB",
        "spans dropped",
        row("traces off", &figures.off, off_runs),
        row("traces on", &figures.on, on_runs),
        figures.ratio,
        figures.export_requests,
        figures.export_bytes as f64 / (1024.0 * 1024.0),
    )
}
