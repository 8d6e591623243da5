//! `compare --base REV`: the working tree's worker against a commit's, draining the same load in
//! alternating order (base, head, then head, base, ...) so drift on a shared machine falls on
//! both; medians and the head/base ratio, with what each event cost beside them.

use serde::Serialize;

use crate::drain::{self, Drain};
use crate::stack::Build;
use crate::stats::median;

/// How the worker takes its deliveries in one measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `BATCH_SIZE=1`: one event per transaction.
    Single,
    /// `BATCH_SIZE` as given.
    Batched,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub base: String,
    pub head: String,
    pub runs: Vec<Run>,
}

#[derive(Debug, Serialize)]
pub struct Run {
    pub build: String,
    pub mode: Mode,
    pub drain: Drain,
}

/// The settings of each mode: `worker(batch_size)` gives a worker's environment.
pub async fn run(
    base: &Build,
    head: &Build,
    rounds: usize,
    events: usize,
    batch_size: usize,
    worker: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> anyhow::Result<Comparison> {
    let mut runs = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [base, head]
        } else {
            [head, base]
        };
        for build in order {
            let modes = [(Mode::Single, 1), (Mode::Batched, batch_size)];
            // With a batch size of 1, "batched" would measure the single mode again.
            for (mode, batch) in modes.into_iter().filter(|&(_, b)| b == 1 || batch_size > 1) {
                eprintln!(
                    "compare: round {}/{rounds}, {}, {mode:?}, {events} events",
                    round + 1,
                    build.label
                );
                let drain = drain::measure(build, events, &worker(batch)).await?;
                eprintln!("  {:.0} events/s", drain.events_per_s);
                runs.push(Run {
                    build: build.label.clone(),
                    mode,
                    drain,
                });
            }
        }
    }
    Ok(Comparison {
        base: base.label.clone(),
        head: head.label.clone(),
        runs,
    })
}

/// Per mode: each build's runs and medians, then the ratio head/base.
pub fn table(comparison: &Comparison) -> String {
    let mut out = format!(
        "{:<8} {:<26} {:>9} {:<24} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "mode", "build", "events/s", "(each run)", "worker", "postgres", "broker", "stmts", "trips"
    );
    out += &format!(
        "{:<8} {:<26} {:>9} {:<24} {:>26} {:>17}\n",
        "", "", "median", "", "CPU s per 1,000 events", "per event"
    );
    for mode in [Mode::Single, Mode::Batched] {
        if !comparison.runs.iter().any(|run| run.mode == mode) {
            continue;
        }
        let mut medians = Vec::new();
        for build in [&comparison.base, &comparison.head] {
            let drains: Vec<&Drain> = comparison
                .runs
                .iter()
                .filter(|run| run.mode == mode && &run.build == build)
                .map(|run| &run.drain)
                .collect();
            let of = |field: fn(&Drain) -> f64| median(drains.iter().map(|d| field(d)).collect());
            let rate = of(|d| d.events_per_s);
            medians.push(rate);
            let each: Vec<String> = drains
                .iter()
                .map(|d| format!("{:.0}", d.events_per_s))
                .collect();
            out += &format!(
                "{:<8} {:<26} {:>9.0} {:<24} {:>8.3} {:>8.3} {:>8.3} {:>8.2} {:>8.2}\n",
                format!("{mode:?}").to_lowercase(),
                build,
                rate,
                each.join(" "),
                of(|d| d.cpu.worker_s),
                of(|d| d.cpu.postgres_s),
                of(|d| d.cpu.broker_s),
                of(|d| d.wire.statements_per_event),
                of(|d| d.wire.round_trips_per_event),
            );
        }
        if let [base, head] = medians[..] {
            out += &format!(
                "{:<8} {:<26} {:>9.2}\n",
                format!("{mode:?}").to_lowercase(),
                "head/base",
                head / base
            );
        }
    }
    out
}
