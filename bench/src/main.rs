//! The benchmark: the product's throughput, latency and memory beside the database's own
//! ceiling, measured in the same run (only ratios within one run mean anything on shared
//! machines). Prints a table; `--json FILE` writes the same figures.
//!
//! `cargo build --release -p worker && cargo run --release -p bench -- all`; the long `soak`
//! (memory over minutes) and `chaos` (faults, judged per event; exit status 1 unless the verdict
//! is ok) run only alone: `... -- soak --minutes 3`, `... -- chaos --seconds 60`. The regression
//! check before a stop: `... -- compare --base REV` (the working tree's worker against REV's).
//! The self-healing reconcile: `... -- heal` (alone, like `soak`).

mod baseline;
mod ceiling;
mod chaos;
mod compare;
mod cpu;
mod dead_letters;
mod drain;
mod e2e;
mod heal;
mod hostile;
mod soak;
mod stack;
mod stats;
mod traces;
mod wire;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(about = "Throughput, latency and memory against the database's own ceiling")]
struct Args {
    /// What to measure; `all` runs every phase but `soak` in one run and prints the ratios.
    #[arg(value_enum, default_value_t = Phase::All)]
    phase: Phase,
    /// Events for `drain` and `e2e`.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Concurrent HTTP connections for `e2e`.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// The worker's MAX_CONCURRENCY, and the ceiling's pgbench clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The worker's BATCH_SIZE for `drain` (besides one event per transaction), `e2e` and `latency`.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// The worker's PREFETCH (batches fill from what the broker already sent).
    #[arg(long, default_value_t = 512)]
    prefetch: u16,
    /// The worker's DATABASE_MIN_CONNECTIONS (the product's default; the test harness lowers it).
    #[arg(long, default_value_t = 8)]
    min_connections: u32,
    /// How long pgbench drives the ceiling.
    #[arg(long, default_value_t = 20)]
    ceiling_seconds: u64,
    /// Events for `latency`.
    #[arg(long, default_value_t = 3_000)]
    latency_events: usize,
    /// Offered rate for `latency` alone (with `all`: half the measured e2e maximum), for
    /// `soak` (default 1000/s, a fixed fraction of e2e so runs compare; no e2e run first), and
    /// for `chaos` (default 100/s).
    #[arg(long)]
    rate: Option<f64>,
    /// `chaos`: the stream of webhooks lasts at least this long (and until the last fault healed).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// `soak`: measured minutes at `--rate`, after the warm-up.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    minutes: u64,
    /// `soak`: webhooks at `--rate` first for this long (30s, 2m), left out of the figures so
    /// start-up allocations (pools, caches, allocator arenas) do not count as growth.
    #[arg(long, default_value = "30s", value_parser = soak::parse_duration)]
    warm_up: std::time::Duration,
    /// `soak`: how often the worker's RSS (VmRSS) is sampled against the events sent.
    #[arg(long, default_value = "5s", value_parser = soak::parse_period)]
    rss_interval: std::time::Duration,
    /// `soak`: scrape the worker's `/metrics` this often (15s), as Prometheus would; by default
    /// nothing scrapes it.
    #[arg(long, value_parser = soak::parse_period)]
    scrape_interval: Option<std::time::Duration>,
    /// `soak`: freeze the worker (SIGSTOP) this often (3m), as a stalled host would be, so
    /// webhooks back up; by default it is never frozen.
    #[arg(long, value_parser = soak::parse_period)]
    freeze_every: Option<std::time::Duration>,
    /// `soak`: how long each freeze lasts.
    #[arg(long, default_value = "5s", value_parser = soak::parse_period)]
    freeze_for: std::time::Duration,
    /// `hostile`: seconds of valid traffic in the baseline and in each attack phase.
    #[arg(long, default_value_t = 20)]
    hostile_seconds: u64,
    /// `hostile`: invalid-signature requests per second the attackers send.
    #[arg(long, default_value_t = 500.0)]
    attack_rate: f64,
    /// `hostile`: connections the attackers keep trickling an unfinished request head.
    #[arg(long, default_value_t = 200)]
    slow_connections: usize,
    /// `compare`: the commit to measure the working tree's worker against (built once, cached
    /// under target/bench-baseline).
    #[arg(long, default_value = "HEAD")]
    base: String,
    /// `compare`, and `drain` and `e2e` within `all`: runs of each, alternating; figures are
    /// medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// `heal`: users signing up in the Clerk stand-in.
    #[arg(long, default_value_t = 10_000)]
    heal_users: usize,
    /// `heal`: the fraction of their webhooks the ingress loses.
    #[arg(long, default_value_t = 0.3, value_parser = worker::reconcile::settings::fraction)]
    heal_drop: f64,
    /// `heal`: the worker's RECONCILE_INTERVAL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    heal_interval: std::time::Duration,
    /// `dead-letters`: letters moved from the dead-letter queue into the store.
    #[arg(long, default_value_t = 10_000)]
    move_letters: usize,
    /// `dead-letters`: letters in the store when listing pages are timed.
    #[arg(long, default_value_t = 100_000)]
    store_letters: usize,
    /// Also write the figures here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Phase {
    Ceiling,
    Drain,
    E2e,
    Latency,
    /// Valid traffic at half the e2e rate, with and without an attack beside it.
    Hostile,
    All,
    /// Memory and latency over minutes at a steady rate; never part of `all`.
    Soak,
    /// Every kind of fault once during a steady stream, and a verdict per event; never part of
    /// `all`.
    Chaos,
    /// The working tree's worker against `--base`'s, draining the same load in alternating
    /// order; never part of `all`.
    Compare,
    /// Webhooks lost on purpose and repaired by the worker's reconcile schedule, and the time a
    /// run takes per 100,000 users; never part of `all`.
    Heal,
    /// Moving dead letters from the queue into the store, and listing pages at 100,000 letters;
    /// never part of `all`.
    DeadLetters,
    /// `e2e` with traces off and on (every trace sampled, exported to a local sink), alternating
    /// rounds; never part of `all`.
    Traces,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    cores: usize,
    settings: serde_json::Value,
    ceiling: Option<ceiling::Ceiling>,
    /// With `all`, the ceiling again after the other phases: the machine drifts, so the ratios
    /// use the mean of the two.
    ceiling_after: Option<ceiling::Ceiling>,
    /// One event per transaction.
    drain: Option<drain::Drain>,
    /// Batches of up to `batch_size`.
    drain_batched: Option<drain::Drain>,
    e2e: Option<e2e::EndToEnd>,
    latency: Option<e2e::FixedRate>,
    soak: Option<soak::Soak>,
    hostile: Option<hostile::Hostile>,
    chaos: Option<integration_tests::chaos::Verdict>,
    compare: Option<compare::Comparison>,
    heal: Option<heal::Heal>,
    dead_letters: Option<dead_letters::DeadLetters>,
    traces: Option<traces::TracesOnOff>,
    /// Events/s of every run of `drain`, `drain_batched` and `e2e` (their medians above).
    runs: Runs,
    drain_over_ceiling: Option<f64>,
    drain_batched_over_ceiling: Option<f64>,
    e2e_over_ceiling: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
struct Runs {
    drain: Vec<f64>,
    drain_batched: Vec<f64>,
    e2e: Vec<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let worker = |batch: usize| {
        vec![
            ("MAX_CONCURRENCY", args.concurrency.to_string()),
            ("PREFETCH", args.prefetch.to_string()),
            ("BATCH_SIZE", batch.to_string()),
            ("DATABASE_MIN_CONNECTIONS", args.min_connections.to_string()),
        ]
    };
    let worker_env = worker(args.batch_size);
    let wants = |phase: Phase| args.phase == phase || args.phase == Phase::All;
    let head = stack::Build::working_tree()?;
    let rounds = args.rounds as usize;
    let mut report = Report {
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        settings: serde_json::json!({
            "events": args.events, "connections": args.connections, "concurrency": args.concurrency,
            "ceiling_seconds": args.ceiling_seconds, "latency_events": args.latency_events,
            "prefetch": args.prefetch, "batch_size": args.batch_size,
            "min_connections": args.min_connections, "rounds": args.rounds,
        }),
        ..Report::default()
    };
    if wants(Phase::Ceiling) {
        eprintln!(
            "ceiling: pgbench, {} clients, {} s",
            args.concurrency, args.ceiling_seconds
        );
        report.ceiling = Some(ceiling::measure(args.concurrency, args.ceiling_seconds, 1).await?);
    }
    if wants(Phase::Drain) {
        let (mut single, mut batched) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            eprintln!(
                "drain {round}/{rounds}: {} events, one per transaction",
                args.events
            );
            single.push(drain::measure(&head, args.events, &worker(1)).await?);
            if args.batch_size > 1 {
                eprintln!(
                    "drain {round}/{rounds}: {} events, batches of up to {}",
                    args.events, args.batch_size
                );
                batched.push(drain::measure(&head, args.events, &worker_env).await?);
            }
        }
        (report.drain, report.runs.drain) = median_run(single, |d| d.events_per_s);
        (report.drain_batched, report.runs.drain_batched) = median_run(batched, |d| d.events_per_s);
    }
    if wants(Phase::E2e) {
        let mut runs = Vec::new();
        for round in 1..=rounds {
            eprintln!(
                "e2e {round}/{rounds}: {} webhooks over {} connections",
                args.events, args.connections
            );
            runs.push(e2e::saturate(&head, args.events, args.connections, &worker_env).await?);
        }
        (report.e2e, report.runs.e2e) = median_run(runs, |e| e.events_per_s);
    }
    if wants(Phase::Latency) {
        let rate = args
            .rate
            .or_else(|| report.e2e.map(|e2e| e2e.events_per_s / 2.0))
            .ok_or_else(|| anyhow::anyhow!("latency alone needs --rate"))?;
        eprintln!("latency: {} webhooks at {rate:.0}/s", args.latency_events);
        report.latency =
            Some(e2e::fixed_rate(&head, args.latency_events, rate, &worker_env).await?);
    }
    if wants(Phase::Hostile) {
        let rate = args
            .rate
            .or_else(|| report.e2e.map(|e2e| e2e.events_per_s / 2.0))
            .ok_or_else(|| anyhow::anyhow!("hostile alone needs --rate"))?;
        let events = (rate * args.hostile_seconds as f64) as usize;
        let attacks = hostile::Attack::all(args.attack_rate, args.slow_connections);
        report.hostile = Some(hostile::measure(events, rate, &attacks, &worker_env).await?);
    }
    if args.phase == Phase::Soak {
        let settings = soak::Settings {
            minutes: args.minutes,
            per_second: args.rate.unwrap_or(soak::DEFAULT_RATE),
            warm_up: args.warm_up,
            rss_every: args.rss_interval,
            scrape_every: args.scrape_interval,
            freezes: args.freeze_every.map(|every| soak::Freezes {
                every,
                length: args.freeze_for,
            }),
        };
        report.soak = Some(soak::measure(settings, &worker_env).await?);
    }
    if args.phase == Phase::Chaos {
        let rate = args.rate.unwrap_or(chaos::DEFAULT_RATE);
        report.settings["rate"] = rate.into();
        report.settings["seconds"] = args.seconds.into();
        report.chaos = Some(chaos::check(rate, args.seconds, &worker_env).await?);
    }
    if args.phase == Phase::Compare {
        let base = baseline::build(&args.base)?;
        report.settings["base"] = base.label.clone().into();
        report.compare =
            Some(compare::run(&base, &head, rounds, args.events, args.batch_size, worker).await?);
    }
    if args.phase == Phase::Heal {
        report.heal = Some(
            heal::measure(
                &head,
                args.heal_users,
                args.heal_drop,
                args.heal_interval,
                &worker_env,
            )
            .await?,
        );
    }
    if args.phase == Phase::DeadLetters {
        report.dead_letters =
            Some(dead_letters::measure(&head, args.move_letters, args.store_letters).await?);
    }
    if args.phase == Phase::Traces {
        let (figures, off, on) =
            traces::measure(&head, args.events, args.connections, rounds, &worker_env).await?;
        print!("{}", traces::table(&figures, &off, &on));
        report.traces = Some(figures);
    }
    if args.phase == Phase::All {
        eprintln!("ceiling again, after the other phases");
        report.ceiling_after =
            Some(ceiling::measure(args.concurrency, args.ceiling_seconds, 1).await?);
    }
    let ceiling = match (report.ceiling, report.ceiling_after) {
        (Some(before), Some(after)) => Some((before.events_per_s + after.events_per_s) / 2.0),
        (before, _) => before.map(|c| c.events_per_s),
    };
    report.drain_over_ceiling = ceiling.zip(report.drain).map(|(c, d)| d.events_per_s / c);
    report.drain_batched_over_ceiling = ceiling
        .zip(report.drain_batched)
        .map(|(c, d)| d.events_per_s / c);
    report.e2e_over_ceiling = ceiling.zip(report.e2e).map(|(c, e)| e.events_per_s / c);

    print!("{}", table(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    if let Some(verdict) = report.chaos.as_ref().filter(|v| !v.is_ok()) {
        anyhow::bail!(
            "chaos: {} acknowledged events lost, {} dead-lettered, {} users without exactly one workspace",
            verdict.lost,
            verdict.dead_lettered,
            verdict.duplicates
        );
    }
    Ok(())
}

fn table(report: &Report) -> String {
    let mut out = format!(
        "machine: {} cores; settings: {}\n\n",
        report.cores, report.settings
    );
    if let Some(soak) = &report.soak {
        return out + &soak::table(soak);
    }
    if let Some(verdict) = &report.chaos {
        return out + &chaos::table(verdict);
    }
    if let Some(comparison) = &report.compare {
        return out + &compare::table(comparison);
    }
    if let Some(heal) = &report.heal {
        return out + &heal::table(heal);
    }
    if let Some(figures) = &report.dead_letters {
        return out + &dead_letters::table(figures);
    }
    out += &row(
        "phase",
        "events/s",
        ["p50 ms", "p95 ms", "p99 ms", "max ms"].map(String::from),
        "RSS MiB",
    );
    let ms = |v: f64| format!("{v:.1}");
    let none = || ["-"; 4].map(String::from);
    let latency = |l: stats::Latency| [l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms].map(ms);
    let rss = |mib: Option<f64>| mib.map_or("-".to_owned(), |m| format!("{m:.1}"));
    let rate = |v: f64| format!("{v:.0}");
    for (name, ceiling) in [
        ("ceiling", report.ceiling),
        ("ceiling'", report.ceiling_after),
    ] {
        if let Some(c) = ceiling {
            let mean = [
                format!("{:.2}", c.mean_latency_ms),
                "-".into(),
                "-".into(),
                "-".into(),
            ];
            out += &row(name, &rate(c.events_per_s), mean, "-");
        }
    }
    for (name, drain) in [("drain", report.drain), ("drain+bat", report.drain_batched)] {
        if let Some(d) = drain {
            out += &row(name, &rate(d.events_per_s), none(), &rss(d.peak_rss_mib));
        }
    }
    if let Some(e) = report.e2e {
        out += &row(
            "e2e",
            &rate(e.events_per_s),
            latency(e.latency),
            &rss(e.peak_rss_mib),
        );
        out += &format!(
            "{:<10} {:>12.0}   (webhooks accepted per second at the ingress)\n",
            "ingress", e.requests_per_s
        );
    }
    out += &costs(report);
    if let Some(r) = report.latency {
        out += &row("latency", &rate(r.offered_per_s), latency(r.latency), "-");
    }
    if let Some(h) = &report.hostile {
        out += &hostile::table(h);
    }
    out += "\n(ceiling p50 column: pgbench mean latency per transaction)\n";
    if report.ceiling_after.is_some() {
        out += "(ceiling' measured after the other phases; ratios use the mean of the two)\n";
    }
    for (name, ratio) in [
        ("drain/ceiling", report.drain_over_ceiling),
        ("drain(batched)/ceiling", report.drain_batched_over_ceiling),
        ("e2e/ceiling", report.e2e_over_ceiling),
    ] {
        if let Some(ratio) = ratio {
            out += &format!("{name} = {ratio:.2}\n");
        }
    }
    out
}

/// The median run by `rate` (for an even count, the faster of the two middle runs: a real run,
/// not an average), and every run's rate (in the order run).
pub(crate) fn median_run<T>(mut runs: Vec<T>, rate: impl Fn(&T) -> f64) -> (Option<T>, Vec<f64>) {
    let rates = runs.iter().map(&rate).collect();
    runs.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    let middle = runs.len() / 2;
    (runs.into_iter().nth(middle), rates)
}

/// What each event of the drains cost: CPU per party, statements and round trips.
fn costs(report: &Report) -> String {
    let drains = [("drain", report.drain), ("drain+bat", report.drain_batched)];
    let mut out = String::new();
    for (name, drain) in drains {
        let Some(d) = drain else { continue };
        if out.is_empty() {
            out += &format!(
                "\n{:<10} {:>8} {:>8} {:>8} {:>8} {:>8}   (CPU s per 1,000 events; statements, round trips per event)\n",
                "", "worker", "postgres", "broker", "stmts", "trips"
            );
        }
        out += &format!(
            "{name:<10} {:>8.3} {:>8.3} {:>8.3} {:>8.2} {:>8.2}\n",
            d.cpu.worker_s,
            d.cpu.postgres_s,
            d.cpu.broker_s,
            d.wire.statements_per_event,
            d.wire.round_trips_per_event
        );
    }
    let runs = [
        ("drain", &report.runs.drain),
        ("drain+bat", &report.runs.drain_batched),
        ("e2e", &report.runs.e2e),
    ];
    for (name, rates) in runs.into_iter().filter(|(_, r)| r.len() > 1) {
        let each: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        out += &format!(
            "{name:<10} runs: {} events/s (the median is shown)\n",
            each.join(", ")
        );
    }
    out
}

/// One line of the table: phase, rate, four latency cells, memory.
fn row(phase: &str, rate: &str, latency: [String; 4], rss: &str) -> String {
    let [p50, p95, p99, max] = latency;
    format!("{phase:<10} {rate:>12} {p50:>10} {p95:>10} {p99:>10} {max:>10} {rss:>10}\n")
}
