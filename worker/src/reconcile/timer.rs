//! The reconcile schedule inside `worker run` and `worker consume`: every replica wakes when the
//! next run is due (an interval after the latest applied run started, whichever replica ran it,
//! or at most 5 minutes after it if it failed; plus 0-10 % at random), and the one that takes
//! the lease and finds the run still due runs it. The others find the lease taken or the run no
//! longer due, and sleep until the next one. So the runs table is the schedule, read on the
//! database's clock: replicas that restart do not run again early, and while a run is going the
//! others look again whenever its lease would expire, so a holder killed half-way is replaced
//! within the lease's time to live.
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::job::{Job, refresh_last_success};
use super::lease::{HeldBy, holder_name};
use super::runs::{self, Trigger};
use super::settings::ScheduleSettings;
use super::{Options, Progress};
use crate::clerk_api::ClerkApi;
use crate::config::DatabaseSettings;
use crate::db::Pool;
use crate::metrics::Metrics;

/// Everything the schedule needs, built at start-up.
pub struct Schedule {
    pub db: Pool,
    pub database: DatabaseSettings,
    pub api: Arc<ClerkApi>,
    pub settings: ScheduleSettings,
    pub interval: Duration,
    pub metrics: Metrics,
}

/// The jitter's share of the interval.
const JITTER: f64 = 0.1;

/// How long to wait after the database failed the schedule's own queries.
const AFTER_ERROR: Duration = Duration::from_secs(10);

impl Schedule {
    /// Runs reconcile whenever it is due, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let holder = holder_name();
        info!(interval = ?self.interval, holder, "reconcile schedule on");
        self.metrics.set_reconcile_interval(Some(self.interval));
        refresh_last_success(&self.db, &self.metrics).await;
        loop {
            let wait = self.until_due().await;
            debug!(wait = ?wait, "next reconcile check");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
            if let Some(busy) = self.try_once(&holder, &stop).await {
                // Another replica holds the lease: look again when it would expire at the latest.
                tokio::select! {
                    () = tokio::time::sleep(busy) => {}
                    () = stop.cancelled() => return,
                }
            }
            refresh_last_success(&self.db, &self.metrics).await;
        }
    }

    /// Takes the lease and runs if the run is still due; otherwise lets the lease go. Returns how
    /// long to wait when someone else holds the lease.
    async fn try_once(&self, holder: &str, stop: &CancellationToken) -> Option<Duration> {
        let job = self.job(holder);
        let lease = match job.take_lease().await {
            Ok(Ok(lease)) => lease,
            Ok(Err(held)) => return Some(wait_for(held)),
            Err(err) => {
                warn!(error = %err, "cannot take the reconcile lease");
                return Some(AFTER_ERROR);
            }
        };
        if !self.is_due().await {
            lease.release(&self.db).await;
            return None;
        }
        let options = self.options();
        if let Err(err) = job
            .run(lease, Trigger::Schedule, options, &Quiet, stop)
            .await
        {
            warn!(error = %err, "the reconcile run could not be recorded");
        }
        None
    }

    fn job<'a>(&'a self, holder: &'a str) -> Job<'a> {
        Job {
            db: &self.db,
            database: &self.database,
            api: &self.api,
            holder,
            lease_ttl: self.settings.repair.lease_ttl,
            metrics: Some(&self.metrics),
        }
    }

    fn options(&self) -> Options {
        let repair = &self.settings.repair;
        Options {
            apply: true,
            delete_orphans: self.settings.delete_orphans,
            max_delete_fraction: repair.max_delete_fraction,
            force: false,
            concurrency: repair.concurrency,
        }
    }

    /// How long to sleep: until the next run is due, plus the jitter; or, while another replica's
    /// run is going, until its lease would expire (a holder killed mid-run is replaced within
    /// the lease's time to live, not an interval later).
    async fn until_due(&self) -> Duration {
        let jitter = self.interval.mul_f64(JITTER * fastrand::f64());
        match runs::due(&self.db, self.interval, self.retry_after_failure()).await {
            Ok(None) => jitter,
            Ok(Some(due)) => {
                let until_due = seconds(due.in_seconds) + jitter;
                match due.lease_left {
                    Some(left) => until_due.min(seconds(left) + LEASE_MARGIN),
                    None => until_due,
                }
            }
            Err(err) => {
                warn!(error = %err, "cannot read the last reconcile run");
                AFTER_ERROR
            }
        }
    }

    /// Whether the next run is due now (read under the lease, so no other replica starts one
    /// meanwhile).
    async fn is_due(&self) -> bool {
        match runs::due(&self.db, self.interval, self.retry_after_failure()).await {
            Ok(due) => due.is_none_or(|due| due.in_seconds <= 0.0),
            Err(err) => {
                warn!(error = %err, "cannot read the last reconcile run");
                false
            }
        }
    }

    /// A failed run is tried again sooner than an interval later: a Clerk or database blip
    /// should not cost half the alert's budget.
    fn retry_after_failure(&self) -> Duration {
        self.interval.min(RETRY_FAILED_RUN)
    }
}

/// A whole number of seconds from the database's answer; negative (overdue) is zero.
fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::ZERO)
}

/// Past a lease's expiry before looking again, so its holder's last renewal has surely lapsed.
const LEASE_MARGIN: Duration = Duration::from_millis(200);

/// How soon a failed run is tried again, at most.
const RETRY_FAILED_RUN: Duration = Duration::from_secs(300);

/// Until the holder's lease would expire, at least a second (so a lease released meanwhile is
/// not polled in a loop) and at most a minute.
fn wait_for(held: Option<HeldBy>) -> Duration {
    let until = held.map_or(Duration::ZERO, |held| {
        (held.until - Utc::now()).to_std().unwrap_or_default()
    });
    until.clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Scheduled runs report through their log lines and the runs table, not a progress display.
struct Quiet;

impl Progress for Quiet {
    fn total(&self, _users: u64) {}
    fn advance(&self, _users: u64) {}
    fn phase(&self, _name: &'static str) {}
}
