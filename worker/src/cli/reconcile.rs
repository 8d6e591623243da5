//! `worker reconcile`: compare the Clerk instance with the database (dry run by default) and
//! repair it with `--apply`; a progress bar on a terminal, log lines otherwise, a summary at the
//! end, and the report as JSON with `--json`. It takes the same lease as the worker's schedule,
//! so it never runs beside a scheduled run. `runs` lists the recorded runs; `undo RUN_ID` lifts
//! the tombstones a run's orphan deletion left.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::clerk_api::{ClerkApi, ClerkApiSettings};
use crate::config::DatabaseSettings;
use crate::db::{self, Pool};
use crate::reconcile::job::Job;
use crate::reconcile::lease::{HeldBy, holder_name};
use crate::reconcile::runs::{self, RunResult, Undone};
use crate::reconcile::settings::RepairSettings;
use crate::reconcile::{Options, Progress, Report, Trigger};

/// Exit status when another process holds the reconcile lease: try again later.
pub const EXIT_LEASE_HELD: u8 = 75;

/// Flags of `worker reconcile`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReconcileArgs {
    #[command(subcommand)]
    pub action: Option<ReconcileAction>,
    #[command(flatten)]
    pub clerk: ClerkApiSettings,
    #[command(flatten)]
    pub repair: RepairSettings,
    /// Provision missing, workspace-less and stale users (without it: report only).
    #[arg(long)]
    pub apply: bool,
    /// Also delete orphans (rows whose user Clerk no longer has), leaving tombstones.
    #[arg(long, requires = "apply")]
    pub delete_orphans: bool,
    /// Delete orphans even above --max-delete-fraction.
    #[arg(long, requires = "delete_orphans")]
    pub force: bool,
    /// Print the report (counts and ids per class) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What else `worker reconcile` does besides a run.
#[derive(Debug, Subcommand)]
pub enum ReconcileAction {
    /// List the recent runs (scheduled and manual), newest first.
    Runs {
        /// How many runs.
        #[arg(long, default_value_t = 20)]
        limit: u64,
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lift the tombstones run RUN_ID's orphan deletion left; the next run provisions again
    /// whichever of those users Clerk still has. For a run pointed at the wrong instance.
    Undo {
        #[arg(value_name = "RUN_ID")]
        run_id: i64,
    },
}

impl ReconcileArgs {
    /// Whether this invocation calls Clerk (and so needs its settings checked).
    pub fn calls_clerk(&self) -> bool {
        self.action.is_none()
    }
}

/// Runs the subcommand; see each for its exit status.
pub(super) async fn run(
    database: &DatabaseSettings,
    args: ReconcileArgs,
) -> anyhow::Result<ExitCode> {
    let db = db::connect(database)
        .await
        .with_context(|| format!("connecting to {}", database.redacted_url()))?;
    match args.action {
        Some(ReconcileAction::Runs { limit, json }) => list_runs(&db, limit, json).await,
        Some(ReconcileAction::Undo { run_id }) => undo(&db, &args.repair, run_id).await,
        None => reconcile(&db, database, &args).await,
    }
}

/// One run: exit 0 when everything that needed fixing was fixed (or, in a dry run, nothing
/// failed), 1 otherwise, [`EXIT_LEASE_HELD`] when another process holds the lease.
async fn reconcile(
    db: &Pool,
    database: &DatabaseSettings,
    args: &ReconcileArgs,
) -> anyhow::Result<ExitCode> {
    let api = ClerkApi::new(&args.clerk).context("setting up the Clerk API client")?;
    let holder = holder_name();
    let job = Job {
        db,
        database,
        api: &api,
        holder: &holder,
        lease_ttl: args.repair.lease_ttl,
        metrics: None,
    };
    let lease = match job
        .take_lease()
        .await
        .context("taking the reconcile lease")?
    {
        Ok(lease) => lease,
        Err(held) => return Ok(lease_held(held)),
    };
    let options = Options {
        apply: args.apply,
        delete_orphans: args.delete_orphans,
        max_delete_fraction: args.repair.max_delete_fraction,
        force: args.force,
        concurrency: args.repair.concurrency,
    };
    let progress = Display::new();
    let never = CancellationToken::new();
    let finished = job
        .run(lease, Trigger::Manual, options, &progress, &never)
        .await
        .context("recording the reconcile run")?;
    progress.finish();
    let Some(report) = finished.report else {
        let error = finished.error.unwrap_or_default();
        anyhow::bail!("reconcile run {} stopped: {error}", finished.run_id);
    };
    let summary = report.summary();
    info!(run_id = finished.run_id, summary = %summary, "reconcile finished");
    if args.json {
        let recorded = RecordedReport {
            run_id: finished.run_id,
            report: &report,
        };
        println!("{}", serde_json::to_string_pretty(&recorded)?);
    } else {
        println!("run {}: {summary}", finished.run_id);
    }
    Ok(match finished.result {
        RunResult::Succeeded => ExitCode::SUCCESS,
        RunResult::Failed | RunResult::LostLease => ExitCode::FAILURE,
    })
}

/// The `--json` report: the run's id in `worker reconcile runs` beside what it found and did.
#[derive(serde::Serialize)]
struct RecordedReport<'a> {
    run_id: i64,
    #[serde(flatten)]
    report: &'a Report,
}

fn lease_held(held: Option<HeldBy>) -> ExitCode {
    match held {
        Some(held) => eprintln!(
            "another reconcile is running: {} holds the lease until {} (renewed while it runs); try again later",
            held.holder, held.until
        ),
        None => eprintln!("the reconcile lease was taken meanwhile; try again later"),
    }
    ExitCode::from(EXIT_LEASE_HELD)
}

/// `worker reconcile runs`: a table, or JSON.
async fn list_runs(db: &Pool, limit: u64, json: bool) -> anyhow::Result<ExitCode> {
    let runs = runs::recent(db, limit)
        .await
        .context("reading reconcile_runs")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:<8}  {:<10}  {:<20}  {:>8}  {:>8}  {:>7}  drift",
        "id", "trigger", "result", "started", "seconds", "repaired", "deleted"
    );
    for run in runs {
        let seconds = run
            .finished_at
            .map(|end| format!("{:.1}", (end - run.started_at).as_seconds_f64()))
            .unwrap_or_else(|| "-".to_owned());
        let mode = if run.applied { "" } else { " (dry run)" };
        let undone = if run.undone_at.is_some() {
            " (undone)"
        } else {
            ""
        };
        println!(
            "{:>6}  {:<8}  {:<10}  {:<20}  {:>8}  {:>8}  {:>7}  {}{mode}{undone}",
            run.id,
            run.trigger,
            run.result,
            run.started_at.format("%Y-%m-%d %H:%M:%S"),
            seconds,
            run.repaired,
            run.deleted,
            drift(&run.counts),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The non-zero drift counts of a run, as `missing=3 stale=1`.
fn drift(counts: &serde_json::Value) -> String {
    crate::reconcile::DRIFT_CLASSES
        .iter()
        .filter_map(|class| {
            let count = counts.get(class)?.as_u64()?;
            (count > 0).then(|| format!("{class}={count}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `worker reconcile undo RUN_ID`: exit 0 when lifted, 1 for an unknown run, and
/// [`EXIT_LEASE_HELD`] while a run holds the lease.
async fn undo(db: &Pool, repair: &RepairSettings, run_id: i64) -> anyhow::Result<ExitCode> {
    let holder = holder_name();
    let taken = crate::reconcile::Lease::take(
        db,
        crate::reconcile::lease::RECONCILE,
        &holder,
        repair.lease_ttl,
    )
    .await
    .context("taking the reconcile lease")?;
    let lease = match taken {
        Ok(lease) => lease,
        Err(held) => return Ok(lease_held(held)),
    };
    let undone = runs::undo(db, &lease, run_id).await;
    lease.release(db).await;
    match undone.context("lifting the run's tombstones")? {
        Undone::Lifted(count) => {
            println!(
                "run {run_id}: lifted {count} tombstones; the next reconcile run provisions again \
                 those users Clerk still has (or run `worker reconcile --apply` now)"
            );
            Ok(ExitCode::SUCCESS)
        }
        Undone::NoSuchRun => {
            eprintln!("no reconcile run {run_id} (see `worker reconcile runs`)");
            Ok(ExitCode::FAILURE)
        }
        Undone::LeaseLost => Ok(lease_held(None)),
    }
}

/// A progress bar when stderr is a terminal; a log line every [`LOG_EVERY`] users otherwise.
struct Display {
    bar: Option<ProgressBar>,
    done: AtomicU64,
    total: AtomicU64,
}

const LOG_EVERY: u64 = 10_000;

impl Display {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} users ({per_sec}, eta {eta})",
            ) {
                bar.set_style(style);
            }
            bar.set_message("comparing");
            bar
        });
        Self {
            bar,
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Display {
    fn total(&self, users: u64) {
        self.total.store(users, Ordering::Relaxed);
        match &self.bar {
            Some(bar) => bar.set_length(users),
            None => info!(clerk_users = users, "reconcile started"),
        }
    }

    fn advance(&self, users: u64) {
        let before = self.done.fetch_add(users, Ordering::Relaxed);
        let done = before + users;
        match &self.bar {
            Some(bar) => bar.inc(users),
            None if done / LOG_EVERY > before / LOG_EVERY => {
                let total = self.total.load(Ordering::Relaxed);
                info!(compared = done, clerk_users = total, "reconcile progress");
            }
            None => {}
        }
    }

    fn phase(&self, name: &'static str) {
        match &self.bar {
            Some(bar) => bar.set_message(name),
            None => info!(phase = name, "reconcile phase"),
        }
    }
}
