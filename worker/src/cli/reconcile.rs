//! `worker reconcile`: compare the Clerk instance with the database (dry run by default) and
//! repair it with `--apply`; a progress bar on a terminal, log lines otherwise, a summary at the
//! end, and the report as JSON with `--json`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use crate::clerk_api::{ClerkApi, ClerkApiSettings};
use crate::config::DatabaseSettings;
use crate::db;
use crate::reconcile::{self, Options, Progress};

/// Flags of `worker reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub clerk: ClerkApiSettings,
    /// Provision missing, workspace-less and stale users (without it: report only).
    #[arg(long)]
    pub apply: bool,
    /// Also delete orphans (rows whose user Clerk no longer has), leaving tombstones.
    #[arg(long, requires = "apply")]
    pub delete_orphans: bool,
    /// Most orphans deleted in one run, as a fraction of the users table.
    #[arg(long, env = "RECONCILE_MAX_DELETE_FRACTION", default_value_t = 0.01, value_parser = fraction)]
    pub max_delete_fraction: f64,
    /// Delete orphans even above --max-delete-fraction.
    #[arg(long, requires = "delete_orphans")]
    pub force: bool,
    /// Users provisioned at once while applying.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Print the report (counts and ids per class) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the reconcile; exit 0 when everything that needed fixing was fixed (or, in a dry run,
/// nothing failed), 1 otherwise.
pub(super) async fn run(
    database: &DatabaseSettings,
    args: ReconcileArgs,
) -> anyhow::Result<ExitCode> {
    let api = ClerkApi::new(&args.clerk).context("setting up the Clerk API client")?;
    let db = db::connect(database)
        .await
        .with_context(|| format!("connecting to {}", database.redacted_url()))?;
    let options = Options {
        apply: args.apply,
        delete_orphans: args.delete_orphans,
        max_delete_fraction: args.max_delete_fraction,
        force: args.force,
        concurrency: args.concurrency,
    };
    let progress = Display::new();
    let report = reconcile::run(&db, database, &api, options, &progress)
        .await
        .context("reconcile stopped")?;
    progress.finish();
    let summary = report.summary();
    info!(summary = %summary, "reconcile finished");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{summary}");
    }
    Ok(if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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

/// A fraction of the table: a number from 0 to 1 (`NaN`, `inf` and 2 are refused).
fn fraction(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err("must be a number from 0 to 1".to_owned()),
    }
}
