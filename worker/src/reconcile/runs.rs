//! The record of every reconcile run (`reconcile_runs`): started under the lease, finished with
//! its result and counts, listed by `worker reconcile runs`, and read by the schedule (a run is
//! due an interval after the last applied one started) and the last-success gauge.

use chrono::{DateTime, Utc};
use entity::reconcile_runs;
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, QueryOrder, QuerySelect, Value};
use serde::Serialize;

use super::lease::{self, Lease};
use super::report::Report;
use crate::db::{Pool, statement};

/// Why a run started: the worker's timer, or an operator's `worker reconcile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
        }
    }
}

/// How a run ended: the `result` column and the `result` label of `reconcile_runs_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunResult {
    /// Everything asked for was done.
    Succeeded,
    /// It stopped on an error, or some users could not be fixed.
    Failed,
    /// Its lease was lost (another replica may have it now); it stopped before its next write.
    LostLease,
}

impl RunResult {
    /// Every result a finished run can have, for metrics and alerts.
    pub const ALL: [RunResult; 3] = [
        RunResult::Succeeded,
        RunResult::Failed,
        RunResult::LostLease,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Succeeded => "succeeded",
            RunResult::Failed => "failed",
            RunResult::LostLease => "lost_lease",
        }
    }
}

/// Records a run starting, only while the lease ($4 job) still has epoch $5.
const START: &str = "INSERT INTO reconcile_runs (trigger, holder, epoch, applied) \
     SELECT $1, $2, l.epoch, $3 FROM job_leases l \
     WHERE l.name = $4 AND l.epoch = $5 AND l.expires_at > clock_timestamp() RETURNING id";
const ABANDON: &str = "UPDATE reconcile_runs SET result = 'abandoned', \
     finished_at = clock_timestamp(), error = 'its holder stopped or lost the lease before it finished' \
     WHERE result = 'running' AND epoch < $1";
const FINISH: &str = "UPDATE reconcile_runs SET finished_at = clock_timestamp(), result = $2, \
     counts = $3, repaired = $4, deleted = $5, error = $6 WHERE id = $1 AND result = 'running'";
/// Where the schedule stands, by the database's clock (so replicas' clocks never matter): seconds
/// until the next run is due (negative: overdue), an interval ($1 s) after the latest applied run
/// started, or $2 s after it when that run failed; and, while that run is still going, seconds
/// until its holder's lease expires. Abandoned runs, and running ones whose holder no longer
/// holds the lease (killed, cut off), do not count. No row when no run counts.
const SCHEDULE: &str = "SELECT \
       extract(epoch FROM r.started_at - clock_timestamp() + interval '1 second' * \
         CASE WHEN r.result IN ('failed', 'lost_lease') THEN $2 ELSE $1 END)::float8 AS due_in, \
       extract(epoch FROM l.expires_at - clock_timestamp())::float8 AS lease_left \
     FROM reconcile_runs r LEFT JOIN job_leases l ON r.result = 'running' AND l.name = $3 \
       AND l.epoch = r.epoch AND l.expires_at > clock_timestamp() \
     WHERE r.applied AND r.result <> 'abandoned' AND (r.result <> 'running' OR l.epoch IS NOT NULL) \
     ORDER BY r.started_at DESC LIMIT 1";
const LAST_SUCCEEDED: &str = "SELECT max(finished_at) AS at FROM reconcile_runs \
     WHERE applied AND result = 'succeeded'";
const LIFT_TOMBSTONES: &str = "DELETE FROM user_tombstones WHERE reconcile_run = $1";
const MARK_UNDONE: &str = "UPDATE reconcile_runs SET undone_at = clock_timestamp() WHERE id = $1";

/// Marks the runs of earlier epochs that never finished as abandoned: whoever held them lost
/// the lease (killed, cut off) and can no longer write, so they no longer count as the last run.
pub async fn abandon_earlier(db: &Pool, lease: &Lease) -> Result<u64, DbErr> {
    let done = db
        .execute_raw(statement(ABANDON, [lease.epoch().into()]))
        .await?;
    Ok(done.rows_affected())
}

/// Records the start of a run under `lease`; None when the lease was lost meanwhile.
pub async fn start(
    db: &Pool,
    lease: &Lease,
    trigger: Trigger,
    holder: &str,
    applied: bool,
) -> Result<Option<i64>, DbErr> {
    let values: [Value; 5] = [
        trigger.as_str().into(),
        holder.into(),
        applied.into(),
        lease.job().into(),
        lease.epoch().into(),
    ];
    let row = db.query_one_raw(statement(START, values)).await?;
    row.map(|row| row.try_get::<i64>("", "id")).transpose()
}

/// Records how the run ended: its result, the drift it found, what it changed, and its error.
pub async fn finish(
    db: &Pool,
    id: i64,
    result: RunResult,
    report: Option<&Report>,
    error: Option<&str>,
) -> Result<(), DbErr> {
    let counts = report.map_or_else(|| serde_json::json!({}), counts);
    let values: [Value; 6] = [
        id.into(),
        result.as_str().into(),
        counts.into(),
        report.map_or(0, |r| r.provisioned as i64).into(),
        report.map_or(0, |r| r.deleted as i64).into(),
        error.map(str::to_owned).into(),
    ];
    db.execute_raw(statement(FINISH, values)).await?;
    Ok(())
}

/// The report's counts per class, as stored in `counts`.
fn counts(report: &Report) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    counts.insert("clerk_users".into(), report.clerk_users.into());
    counts.insert("in_sync".into(), report.in_sync.into());
    counts.insert("recent".into(), report.recent.count.into());
    for (class, count) in report.drift() {
        counts.insert(class.into(), count.into());
    }
    counts.insert("failed".into(), report.failed.count.into());
    counts.into()
}

/// Where the schedule stands (see [`SCHEDULE`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Due {
    /// Seconds until the next run is due; zero or less: due now.
    pub in_seconds: f64,
    /// While the latest run is still going: seconds until its holder's lease expires, when a
    /// killed holder's run stops counting.
    pub lease_left: Option<f64>,
}

/// When the next run is due: `interval` after the latest run started, or `retry` after it if it
/// failed; None when no run counts yet (due now).
pub async fn due(
    db: &Pool,
    interval: std::time::Duration,
    retry: std::time::Duration,
) -> Result<Option<Due>, DbErr> {
    let values: [Value; 3] = [
        interval.as_secs_f64().into(),
        retry.as_secs_f64().into(),
        lease::RECONCILE.into(),
    ];
    let Some(row) = db.query_one_raw(statement(SCHEDULE, values)).await? else {
        return Ok(None);
    };
    Ok(Some(Due {
        in_seconds: row.try_get("", "due_in")?,
        lease_left: row.try_get("", "lease_left")?,
    }))
}

/// When the last applied run that succeeded finished, if one did.
pub async fn last_succeeded(db: &Pool) -> Result<Option<DateTime<Utc>>, DbErr> {
    instant(db, LAST_SUCCEEDED).await
}

async fn instant(db: &Pool, sql: &str) -> Result<Option<DateTime<Utc>>, DbErr> {
    let row = db.query_one_raw(statement(sql, [])).await?;
    match row {
        Some(row) => row.try_get::<Option<DateTime<Utc>>>("", "at"),
        None => Ok(None),
    }
}

/// One run as `worker reconcile runs` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub trigger: String,
    pub holder: String,
    pub applied: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: String,
    pub counts: serde_json::Value,
    pub repaired: i64,
    pub deleted: i64,
    pub error: Option<String>,
    pub undone_at: Option<DateTime<Utc>>,
}

impl From<reconcile_runs::Model> for RunRow {
    fn from(run: reconcile_runs::Model) -> Self {
        Self {
            id: run.id,
            trigger: run.trigger,
            holder: run.holder,
            applied: run.applied,
            started_at: run.started_at.to_utc(),
            finished_at: run.finished_at.map(|at| at.to_utc()),
            result: run.result,
            counts: run.counts,
            repaired: run.repaired,
            deleted: run.deleted,
            error: run.error,
            undone_at: run.undone_at.map(|at| at.to_utc()),
        }
    }
}

/// The `limit` most recent runs, newest first.
pub async fn recent(db: &Pool, limit: u64) -> Result<Vec<RunRow>, DbErr> {
    let runs = reconcile_runs::Entity::find()
        .order_by_desc(reconcile_runs::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    Ok(runs.into_iter().map(RunRow::from).collect())
}

/// What `undo` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Undone {
    /// This many tombstones of the run were lifted.
    Lifted(u64),
    NoSuchRun,
    /// The lease was lost before the change could be made; nothing changed.
    LeaseLost,
}

/// Lifts the tombstones run `id` left, under `lease`, and marks the run undone: the next run
/// provisions again whichever of those users Clerk still has.
pub async fn undo(db: &Pool, lease: &Lease, id: i64) -> Result<Undone, DbErr> {
    if reconcile_runs::Entity::find_by_id(id)
        .one(db)
        .await?
        .is_none()
    {
        return Ok(Undone::NoSuchRun);
    }
    let txn = db.begin().await?;
    if txn.query_one_raw(lease.fence()).await?.is_none() {
        txn.rollback().await?;
        return Ok(Undone::LeaseLost);
    }
    let lifted = txn
        .execute_raw(statement(LIFT_TOMBSTONES, [id.into()]))
        .await?
        .rows_affected();
    txn.execute_raw(statement(MARK_UNDONE, [id.into()])).await?;
    txn.commit().await?;
    Ok(Undone::Lifted(lifted))
}
