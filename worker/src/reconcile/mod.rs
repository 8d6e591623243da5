//! `worker reconcile`: compare every user of the Clerk instance with the database and, when
//! asked, repair the difference through the same provisioning code as the consumer.
//!
//! Memory is bounded: Clerk's pages are streamed (500 users each) and compared one page at a
//! time with one query; the ids Clerk listed go to a temporary table ([`seen`]), and orphans are
//! found by walking the `users` table in keyset-paged chunks against it. A row counts as an
//! orphan only when it is older than the run and `GET /v1/users/{id}` answers 404, because
//! offset paging skips users when others are deleted meanwhile. Repairs go through
//! [`provision::provision`], where Clerk's clock decides, so a webhook applied at the same time
//! cannot be overwritten by an older page, and a rerun changes nothing twice.

mod report;
mod seen;

use std::collections::HashMap;

use chrono::{DateTime, FixedOffset, Utc};
use entity::{users, workspaces};
use futures::{StreamExt, stream};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter};
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{info, warn};

use crate::clerk;
use crate::clerk_api::{ClerkApi, ClerkApiError, PAGE_LIMIT};
use crate::config::DatabaseSettings;
use crate::db::Pool;
use crate::domain::{ClerkTime, Event, UserDeletion, UserId, UserProfile};
use crate::error::ProvisionError;
use crate::outcome::Outcome;
use crate::provision;

pub use report::{Class, MAX_LISTED_IDS, Report, Unprovisionable};
use seen::Seen;

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

/// Runs the whole reconcile; the report says what differed and what was done.
pub async fn run(
    db: &Pool,
    settings: &DatabaseSettings,
    api: &ClerkApi,
    options: Options,
    progress: &dyn Progress,
) -> Result<Report, ReconcileError> {
    let seen = Seen::open(settings).await?;
    let result = run_with(db, &seen, api, options, progress).await;
    seen.close().await;
    result
}

async fn run_with(
    db: &Pool,
    seen: &Seen,
    api: &ClerkApi,
    options: Options,
    progress: &dyn Progress,
) -> Result<Report, ReconcileError> {
    let started = seen.now().await?;
    let mut report = Report {
        applied: options.apply,
        ..Report::default()
    };
    progress.total(api.count_users().await?);
    let mut offset = 0;
    loop {
        let page = api.list_users(offset).await?;
        let len = page.len() as u64;
        compare_page(db, seen, page, options, &mut report).await?;
        progress.advance(len);
        offset += len;
        if len < u64::from(PAGE_LIMIT) {
            break;
        }
    }
    progress.phase("orphans");
    find_orphans(seen, api, started, &mut report).await?;
    if options.apply && options.delete_orphans && report.orphaned.count > 0 {
        progress.phase("deleting orphans");
        delete_orphans(db, seen, options, &mut report).await?;
    }
    Ok(report)
}

/// A user from Clerk's list: its id (when it has one) and what the webhook parser made of it.
struct Listed {
    id: String,
    profile: Result<UserProfile, &'static str>,
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<String>,
}

fn parse_listed(raw: &RawValue) -> Listed {
    let id = serde_json::from_str::<IdOnly>(raw.get())
        .ok()
        .and_then(|user| user.id)
        .unwrap_or_default();
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
) -> Result<(), ReconcileError> {
    let listed: Vec<Listed> = page.iter().map(|raw| parse_listed(raw)).collect();
    let ids: Vec<String> = listed.iter().map(|user| user.id.clone()).collect();
    seen.record(&ids).await?;
    let rows = rows_of(db, &ids).await?;
    let mut to_fix = Vec::new();
    for user in listed {
        report.clerk_users += 1;
        match user.profile {
            Err(reason) => report.unprovisionable.add(&user.id, reason),
            Ok(profile) => {
                if classify(&profile, rows.get(&user.id), report) {
                    to_fix.push(profile);
                }
            }
        }
    }
    if options.apply {
        fix(db, to_fix, options.concurrency, report).await;
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

/// Counts the user in its class; true when provisioning would change something.
fn classify(
    profile: &UserProfile,
    row: Option<&(DateTime<FixedOffset>, bool)>,
    report: &mut Report,
) -> bool {
    let id = profile.id.as_ref();
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

/// Provisions the page's users that differ, `concurrency` at a time.
async fn fix(db: &Pool, profiles: Vec<UserProfile>, concurrency: usize, report: &mut Report) {
    let results: Vec<(UserId, Result<Outcome, ProvisionError>)> = stream::iter(profiles)
        .map(|profile| async move {
            let id = profile.id.clone();
            let event = Event::UserChanged(Box::new(profile));
            let result = provision::provision(db, &event).await.map(|p| p.outcome);
            (id, result)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    for (id, result) in results {
        record_fix(&id, result, report);
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

/// Walks the table's ids older than the run in keyset chunks; each id Clerk did not list is an
/// orphan only if Clerk answers 404 for it now.
async fn find_orphans(
    seen: &Seen,
    api: &ClerkApi,
    started: DateTime<Utc>,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    let mut after = String::new();
    loop {
        let chunk = seen.unseen(&after, started, ORPHAN_CHUNK).await?;
        let Some(last) = chunk.last().cloned() else {
            return Ok(());
        };
        for id in chunk {
            if is_orphan(api, &id).await? {
                seen.record_orphan(&id).await?;
                report.orphaned.add(&id);
            }
        }
        after = last;
    }
}

async fn is_orphan(api: &ClerkApi, id: &str) -> Result<bool, ClerkApiError> {
    match UserId::parse(id) {
        Ok(user_id) => Ok(!api.user_exists(&user_id).await?),
        // A row whose id Clerk could never have issued: report it, never call Clerk with it.
        Err(_) => Ok(true),
    }
}

/// Deletes the confirmed orphans like `user.deleted` events, unless they are too large a share
/// of the table and the run is not forced.
async fn delete_orphans(
    db: &Pool,
    seen: &Seen,
    options: Options,
    report: &mut Report,
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
            delete_one(db, &id, deleted_at, report).await;
        }
        after = last;
    }
}

async fn delete_one(db: &Pool, id: &str, deleted_at: ClerkTime, report: &mut Report) {
    let Ok(user_id) = UserId::parse(id) else {
        warn!(user_id = id, "not a Clerk id; left for an operator");
        report.failed.add(id);
        return;
    };
    let event = Event::UserDeleted(UserDeletion {
        id: user_id,
        deleted_at,
    });
    match provision::provision(db, &event).await {
        Ok(provisioned) => {
            info!(
                user_id = id,
                outcome = provisioned.outcome.as_str(),
                "orphan deleted"
            );
            report.deleted += 1;
        }
        Err(err) => {
            warn!(user_id = id, error = %err, "could not delete the orphan");
            report.failed.add(id);
        }
    }
}
