//! `worker reconcile`, and the same run on a timer inside `worker run` and `worker consume`:
//! compare every user of the Clerk instance with the database and, when asked, repair the
//! difference through the same provisioning code as the consumer.
//!
//! Memory is bounded: Clerk's pages are streamed (500 users each, walked with `starting_after`)
//! and compared one page at a time with one query; the ids Clerk listed go to a temporary table
//! ([`seen`]), and orphans are found by walking the `users` table in keyset-paged chunks against
//! it. A row counts as an orphan only when it is older than the run and Clerk confirms it gone
//! (a batch of ids at a time, `GET /v1/users?user_id=...`). Repairs go through
//! [`provision::provision_guarded`], where Clerk's clock decides, so a webhook applied at the
//! same time cannot be overwritten by an older page, and a rerun changes nothing twice.
//!
//! One run at a time across replicas: every run holds the [`lease`], records itself in
//! [`runs`], and each of its writes is fenced by the lease's epoch ([`job`] ties them together;
//! [`timer`] runs it on the schedule).

pub mod job;
pub mod lease;
mod report;
pub mod runs;
mod seen;
pub mod settings;
pub mod timer;

use std::collections::HashMap;

use chrono::{DateTime, FixedOffset, Utc};
use entity::{users, workspaces};
use futures::{StreamExt, stream};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::value::RawValue;
use tracing::{Instrument, info, warn};

use crate::clerk;
use crate::clerk_api::{ClerkApi, ClerkApiError, MAX_USER_IDS, UserPages, id_of};
use crate::config::DatabaseSettings;
use crate::db::Pool;
use crate::domain::{ClerkTime, Event, UserDeletion, UserId, UserProfile};
use crate::error::ProvisionError;
use crate::outcome::Outcome;
use crate::provision::{self, Guard, Provisioned};
use crate::traces::spans;

pub use lease::Lease;
pub use report::{Class, DRIFT_CLASSES, MAX_LISTED_IDS, Report, Unprovisionable};
pub use runs::{RunResult, Trigger};
use seen::Seen;

/// How long after a change in Clerk its webhook may still be on its way (a queue backlog, Svix's
/// retries after 5 s and 5 min): a difference that young is repaired but not counted as drift.
const DRIFT_GRACE: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// Rows of `users` checked per keyset chunk when looking for orphans.
const ORPHAN_CHUNK: u64 = 1000;

/// What the run may change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    /// Provision missing, workspace-less and stale users (otherwise: a dry run).
    pub apply: bool,
    /// Delete confirmed orphans (with `apply`), leaving tombstones.
    pub delete_orphans: bool,
    /// Most orphans deleted in one run, as a fraction of the table, unless `force`.
    pub max_delete_fraction: f64,
    pub force: bool,
    /// Users provisioned at once.
    pub concurrency: usize,
}

/// Why a reconcile stopped before the end.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    ClerkApi(#[from] ClerkApiError),
    #[error("database: {0}")]
    Database(#[from] DbErr),
    /// The lease went to another holder (or expired): this run writes nothing more.
    #[error("the reconcile lease was lost; another replica may hold it now")]
    LeaseLost,
}

impl ReconcileError {
    /// A stable code for the failure, for a span's `error.type`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ClerkApi(_) => "clerk_api",
            Self::Database(_) => "database",
            Self::LeaseLost => "lease_lost",
        }
    }
}

/// The run's right to write: its lease, checked before each step and fenced in each write, and
/// its id in `reconcile_runs`, recorded on the tombstones of the users it deletes.
#[derive(Clone, Copy)]
pub struct Writer<'a> {
    pub lease: &'a Lease,
    pub run_id: i64,
}

impl Writer<'_> {
    fn guard(&self) -> Guard {
        Guard {
            check: self.lease.fence(),
            reconcile_run: self.run_id,
        }
    }

    fn still_held(&self) -> Result<(), ReconcileError> {
        match self.lease.is_held() {
            true => Ok(()),
            false => Err(ReconcileError::LeaseLost),
        }
    }
}

/// Where the run is, for a progress bar or log lines.
pub trait Progress: Sync {
    /// Clerk's user count is known.
    fn total(&self, users: u64);
    /// `users` more Clerk users were compared.
    fn advance(&self, users: u64);
    /// A new phase starts (orphans, deletion).
    fn phase(&self, name: &'static str);
}

/// How the page's users stand in the database: Clerk time applied, and whether a workspace exists.
type Rows = HashMap<String, (DateTime<FixedOffset>, bool)>;

/// Runs the whole reconcile under `writer`'s lease; the report says what differed and what was
/// done.
pub async fn run(
    db: &Pool,
    settings: &DatabaseSettings,
    api: &ClerkApi,
    options: Options,
    progress: &dyn Progress,
    writer: Writer<'_>,
) -> Result<Report, ReconcileError> {
    let span = spans::reconcile_run();
    let run = async {
        let seen = Seen::open(settings).await?;
        let result = run_with(db, &seen, api, options, progress, writer).await;
        seen.close().await;
        result
    };
    let result = run.instrument(span.clone()).await;
    if let Err(err) = &result {
        spans::record_error(&span, err.as_str());
    }
    result
}

async fn run_with(
    db: &Pool,
    seen: &Seen,
    api: &ClerkApi,
    options: Options,
    progress: &dyn Progress,
    writer: Writer<'_>,
) -> Result<Report, ReconcileError> {
    let mut report = Report {
        applied: options.apply,
        ..Report::default()
    };
    progress.total(api.count_users().await?);
    let mut pages = UserPages::default();
    while let Some(page) = pages.next(api).await? {
        writer.still_held()?;
        let len = page.len() as u64;
        compare_page(db, seen, page, options, &mut report, writer).await?;
        progress.advance(len);
    }
    progress.phase("orphans");
    find_orphans(seen, api, &mut report).await?;
    if options.apply && options.delete_orphans && report.orphaned.count > 0 {
        progress.phase("deleting orphans");
        delete_orphans(db, seen, options, &mut report, writer).await?;
    }
    Ok(report)
}

/// A user from Clerk's list: its id (when it has one) and what the webhook parser made of it.
struct Listed {
    id: String,
    profile: Result<UserProfile, &'static str>,
}

fn parse_listed(raw: &RawValue) -> Listed {
    let id = id_of(raw).unwrap_or_default();
    let profile =
        clerk::parse_user(raw.get().as_bytes()).map_err(|rejected| rejected.reason.as_str());
    Listed { id, profile }
}

async fn compare_page(
    db: &Pool,
    seen: &Seen,
    page: Vec<Box<RawValue>>,
    options: Options,
    report: &mut Report,
    writer: Writer<'_>,
) -> Result<(), ReconcileError> {
    let listed: Vec<Listed> = page.iter().map(|raw| parse_listed(raw)).collect();
    let ids: Vec<String> = listed.iter().map(|user| user.id.clone()).collect();
    seen.record(&ids).await?;
    let rows = rows_of(db, &ids).await?;
    let recent_after = seen.started() - DRIFT_GRACE;
    let mut to_fix = Vec::new();
    for user in listed {
        report.clerk_users += 1;
        match user.profile {
            Err(reason) => report.unprovisionable.add(&user.id, reason),
            Ok(profile) => {
                if classify(&profile, rows.get(&user.id), recent_after, report) {
                    to_fix.push(profile);
                }
            }
        }
    }
    if options.apply {
        fix(db, to_fix, options.concurrency, report, writer).await?;
    }
    Ok(())
}

/// The page's rows and whether each has a workspace: one JOIN through the entities.
async fn rows_of(db: &Pool, ids: &[String]) -> Result<Rows, DbErr> {
    let found = users::Entity::find()
        .filter(users::Column::Id.is_in(ids.iter().map(String::as_str)))
        .find_also_related(workspaces::Entity)
        .all(db)
        .await?;
    Ok(found
        .into_iter()
        .map(|(user, workspace)| (user.id, (user.clerk_updated_at, workspace.is_some())))
        .collect())
}

/// Counts the user in its class; true when provisioning would change something. A user Clerk
/// changed after `recent_after` is repaired like the others but counted apart, as `recent`: its
/// webhook may still be on its way, so it says nothing about lost webhooks.
fn classify(
    profile: &UserProfile,
    row: Option<&(DateTime<FixedOffset>, bool)>,
    recent_after: DateTime<Utc>,
    report: &mut Report,
) -> bool {
    let id = profile.id.as_ref();
    let differs = match row {
        None => true,
        Some((applied, has_workspace)) => {
            !has_workspace || profile.updated_at.as_datetime() > *applied
        }
    };
    if differs && profile.updated_at.as_datetime() > recent_after {
        report.recent.add(id);
        return true;
    }
    match row {
        None => report.missing.add(id),
        Some((_, false)) => report.no_workspace.add(id),
        Some((applied, true)) if profile.updated_at.as_datetime() > *applied => {
            report.stale.add(id)
        }
        Some(_) => {
            report.in_sync += 1;
            return false;
        }
    }
    true
}

/// Provisions the page's users that differ, `concurrency` at a time, each write fenced by the
/// lease.
async fn fix(
    db: &Pool,
    profiles: Vec<UserProfile>,
    concurrency: usize,
    report: &mut Report,
    writer: Writer<'_>,
) -> Result<(), ReconcileError> {
    let guard = &writer.guard();
    let results: Vec<(UserId, Result<Option<Provisioned>, ProvisionError>)> =
        stream::iter(profiles)
            .map(|profile| async move {
                let id = profile.id.clone();
                let event = Event::UserChanged(Box::new(profile));
                (id, provision::provision_guarded(db, &event, guard).await)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    let mut fenced_off = false;
    for (id, result) in results {
        match result {
            Ok(None) => fenced_off = true,
            Ok(Some(provisioned)) => record_fix(&id, Ok(provisioned.outcome), report),
            Err(err) => record_fix(&id, Err(err), report),
        }
    }
    match fenced_off {
        true => Err(ReconcileError::LeaseLost),
        false => Ok(()),
    }
}

fn record_fix(id: &UserId, result: Result<Outcome, ProvisionError>, report: &mut Report) {
    match result {
        Ok(_) => report.provisioned += 1,
        // A conflict here is with Clerk's current state: the operator has to look.
        Err(ProvisionError::Permanent(rejected) | ProvisionError::Conflict(rejected)) => {
            report
                .unprovisionable
                .add(id.as_ref(), rejected.reason.as_str());
        }
        Err(err) => {
            warn!(user_id = %id, error = %err, "could not provision; a rerun will try again");
            report.failed.add(id.as_ref());
        }
    }
}

/// Walks the table's ids older than the run in keyset chunks; the ids Clerk did not list are
/// orphans only if Clerk confirms them gone now, [`MAX_USER_IDS`] per request.
async fn find_orphans(
    seen: &Seen,
    api: &ClerkApi,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    let mut after = String::new();
    loop {
        let chunk = seen.unseen(&after, seen.started(), ORPHAN_CHUNK).await?;
        let Some(last) = chunk.last().cloned() else {
            return Ok(());
        };
        for batch in chunk.chunks(MAX_USER_IDS) {
            for id in gone_from_clerk(api, batch).await? {
                seen.record_orphan(&id).await?;
                report.orphaned.add(&id);
            }
        }
        after = last;
    }
}

/// Which of `ids` Clerk no longer has; an id Clerk could never have issued is one, and Clerk is
/// never called with it.
async fn gone_from_clerk(api: &ClerkApi, ids: &[String]) -> Result<Vec<String>, ClerkApiError> {
    let (valid, invalid): (Vec<_>, Vec<_>) = ids
        .iter()
        .map(|id| (id, UserId::parse(id)))
        .partition(|(_, parsed)| parsed.is_ok());
    let valid: Vec<UserId> = valid.into_iter().filter_map(|(_, id)| id.ok()).collect();
    let existing = match valid.is_empty() {
        true => Default::default(),
        false => api.existing_users(&valid).await?,
    };
    let gone = valid
        .iter()
        .map(|id| id.as_ref().to_owned())
        .filter(|id| !existing.contains(id));
    Ok(invalid
        .into_iter()
        .map(|(id, _)| id.clone())
        .chain(gone)
        .collect())
}

/// Deletes the confirmed orphans like `user.deleted` events, unless they are too large a share
/// of the table and the run is not forced.
async fn delete_orphans(
    db: &Pool,
    seen: &Seen,
    options: Options,
    report: &mut Report,
    writer: Writer<'_>,
) -> Result<(), ReconcileError> {
    let rows = users::Entity::find().count(db).await?;
    let allowed = options.max_delete_fraction * rows as f64;
    if report.orphaned.count as f64 > allowed && !options.force {
        warn!(
            orphans = report.orphaned.count,
            rows,
            max_delete_fraction = options.max_delete_fraction,
            "refusing to delete orphans: more than --max-delete-fraction of the table (--force to override)"
        );
        report.deletion_refused = true;
        return Ok(());
    }
    let deleted_at = ClerkTime::from_millis(Utc::now().timestamp_millis())
        .map_err(|err| DbErr::Custom(err.to_string()))?;
    let mut after = String::new();
    loop {
        let chunk = seen.orphans(&after, ORPHAN_CHUNK).await?;
        let Some(last) = chunk.last().cloned() else {
            return Ok(());
        };
        for id in chunk {
            writer.still_held()?;
            delete_one(db, &id, deleted_at, report, writer).await?;
        }
        after = last;
    }
}

async fn delete_one(
    db: &Pool,
    id: &str,
    deleted_at: ClerkTime,
    report: &mut Report,
    writer: Writer<'_>,
) -> Result<(), ReconcileError> {
    let Ok(user_id) = UserId::parse(id) else {
        // Reported as an orphan; not a failure, or every run would fail over one odd row.
        warn!(user_id = id, "not a Clerk id; left for an operator");
        return Ok(());
    };
    let event = Event::UserDeleted(UserDeletion {
        id: user_id,
        deleted_at,
    });
    match provision::provision_guarded(db, &event, &writer.guard()).await {
        Ok(Some(provisioned)) => {
            info!(
                user_id = id,
                outcome = provisioned.outcome.as_str(),
                run_id = writer.run_id,
                "orphan deleted"
            );
            report.deleted += 1;
        }
        Ok(None) => return Err(ReconcileError::LeaseLost),
        Err(err) => {
            warn!(user_id = id, error = %err, "could not delete the orphan");
            report.failed.add(id);
        }
    }
    Ok(())
}
