//! One reconcile run from start to end, whoever asked for it (the schedule or an operator): it
//! runs under the lease, is recorded in `reconcile_runs`, and is counted in the metrics.

use std::time::Instant;

use sea_orm::DbErr;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::lease::{self, HeldBy, Lease};
use super::runs::{self, RunResult, Trigger};
use super::{Options, Progress, ReconcileError, Report, Writer};
use crate::clerk_api::ClerkApi;
use crate::config::DatabaseSettings;
use crate::db::Pool;
use crate::dead_letter;
use crate::metrics::Metrics;

/// What a run needs besides its options: where, as whom, and where to count.
pub struct Job<'a> {
    pub db: &'a Pool,
    pub database: &'a DatabaseSettings,
    pub api: &'a ClerkApi,
    /// This process in the lease and the runs table ([`lease::holder_name`]).
    pub holder: &'a str,
    pub lease_ttl: std::time::Duration,
    pub metrics: Option<&'a Metrics>,
}

/// How a run ended.
#[derive(Debug)]
pub struct Finished {
    pub run_id: i64,
    pub result: RunResult,
    /// What the run found and did, when it got to the end.
    pub report: Option<Report>,
    pub error: Option<String>,
}

impl Job<'_> {
    /// Takes the reconcile lease, or says who holds it. Runs left unfinished by earlier holders
    /// are marked abandoned at once.
    pub async fn take_lease(&self) -> Result<Result<Lease, Option<HeldBy>>, DbErr> {
        let taken = Lease::take(self.db, lease::RECONCILE, self.holder, self.lease_ttl).await?;
        if let Ok(lease) = &taken {
            let abandoned = runs::abandon_earlier(self.db, lease).await?;
            if abandoned > 0 {
                warn!(
                    abandoned,
                    "earlier reconcile runs never finished: their holders stopped or lost the lease"
                );
            }
        }
        Ok(taken)
    }

    /// Runs once under `lease` (taken by [`Self::take_lease`]), records the run, and lets the
    /// lease go. `stop` ends the run early (the worker is shutting down), recorded as failed.
    pub async fn run(
        &self,
        lease: Lease,
        trigger: Trigger,
        options: Options,
        progress: &dyn Progress,
        stop: &CancellationToken,
    ) -> Result<Finished, DbErr> {
        let began = Instant::now();
        let started = runs::start(self.db, &lease, trigger, self.holder, options.apply).await;
        let run_id = match started {
            Ok(Some(run_id)) => run_id,
            Ok(None) => {
                lease.release(self.db).await;
                return Err(DbErr::Custom(
                    "the reconcile lease was lost before the run started".into(),
                ));
            }
            Err(err) => {
                lease.release(self.db).await;
                return Err(err);
            }
        };
        info!(
            run_id,
            trigger = trigger.as_str(),
            epoch = lease.epoch(),
            apply = options.apply,
            "reconcile run started"
        );
        let writer = Writer {
            lease: &lease,
            run_id,
        };
        let outcome = tokio::select! {
            outcome = super::run(self.db, self.database, self.api, options, progress, writer) => outcome,
            () = stop.cancelled() => Err(ReconcileError::Database(DbErr::Custom(
                "stopped: the worker is shutting down".into(),
            ))),
        };
        let finished = finish(run_id, outcome);
        let recorded = runs::finish(
            self.db,
            run_id,
            finished.result,
            finished.report.as_ref(),
            finished.error.as_deref(),
        )
        .await;
        if options.apply && finished.result == RunResult::Succeeded {
            self.resolve_dead_letters(run_id).await;
        }
        lease.release(self.db).await;
        self.count(&finished, began);
        recorded.map(|()| finished)
    }

    /// After a run that brought the database in step with Clerk, closes the open dead letters it
    /// made unnecessary (the database now reflects them), as this run's action.
    async fn resolve_dead_letters(&self, run_id: i64) {
        match dead_letter::store::resolve_no_longer_needed(self.db, run_id).await {
            Ok(0) => {}
            Ok(resolved) => info!(
                run_id,
                resolved, "dead letters no longer needed were resolved"
            ),
            Err(err) => warn!(run_id, error = %err, "cannot resolve dead letters after the run"),
        }
    }

    /// Counts the run in the metrics (the schedule refreshes the last-success gauge after it).
    fn count(&self, finished: &Finished, began: Instant) {
        let Some(metrics) = self.metrics else {
            return;
        };
        let drift = finished.report.as_ref().map(Report::drift);
        metrics.record_reconcile(
            finished.result,
            began.elapsed(),
            drift.as_ref().map_or(&[], |d| d),
        );
    }
}

/// Sets `reconcile_last_success_timestamp_seconds` from the runs table, when a run succeeded.
pub async fn refresh_last_success(db: &Pool, metrics: &Metrics) {
    match runs::last_succeeded(db).await {
        Ok(Some(at)) => metrics.set_reconcile_last_success(at),
        Ok(None) => {}
        Err(err) => warn!(error = %err, "cannot read the last reconcile run"),
    }
}

/// The run's result from how it ended.
fn finish(run_id: i64, outcome: Result<Report, ReconcileError>) -> Finished {
    let (result, report, error) = match outcome {
        Ok(report) if report.succeeded() => (RunResult::Succeeded, Some(report), None),
        Ok(report) => {
            let error = Some(report.summary());
            (RunResult::Failed, Some(report), error)
        }
        Err(ReconcileError::LeaseLost) => (
            RunResult::LostLease,
            None,
            Some(ReconcileError::LeaseLost.to_string()),
        ),
        Err(err) => (RunResult::Failed, None, Some(err.to_string())),
    };
    match &error {
        None => info!(run_id, result = result.as_str(), "reconcile run finished"),
        Some(error) => warn!(
            run_id,
            result = result.as_str(),
            error,
            "reconcile run finished"
        ),
    }
    Finished {
        run_id,
        result,
        report,
        error,
    }
}
