//! Provisioning: one event, one PostgreSQL transaction, and the database ends with exactly one
//! correct `users` row and one workspace for it, however often and in whatever order events come.
//!
//! Order does not matter because Clerk's clock decides: an event changes a user only when its
//! ordering key is greater than the one the row reflects (Clerk's `updated_at`, then the envelope
//! `timestamp`, then a digest of the content: a total order). Deletion is final: it leaves a
//! tombstone nothing gets past, since Clerk never reuses a user id. Every transaction first takes
//! a per-user lock, so one user's events apply one at a time, each seeing the committed work of
//! the others; different users proceed in parallel.
//!
//! Usernames: one chosen in Clerk wins over one we derived for another user (who moves to their
//! fallback, see [`Reassigned`]); chosen against chosen is a conflict, like a contested email.

mod answer;
mod batch;
mod classify;
pub mod contract;
mod deadline;
mod sql;

pub use batch::provision_batch;
pub use deadline::within;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, FromQueryResult, Statement};
use serde::Serialize;
use tracing::{Instrument, debug, instrument};

use self::answer::ProvisionUserRow;
use self::contract::Arguments;
use crate::db::{Pool, sqlstate, statement};
use crate::domain::{
    ClerkTime, DerivedUsername, Event, UserDeletion, UserId, UserProfile, UsernameChoice,
    WorkspaceName,
};
use crate::error::{FailureReason, ProvisionError};
use crate::outcome::Outcome;
use crate::traces::spans;

/// The result of provisioning one event, for callers to log, count and print.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Provisioned {
    pub outcome: Outcome,
    pub workspace_id: Option<String>,
    /// Another user lost their derived username to this event's chosen one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reassigned: Option<Reassigned>,
}

/// A user whose derived username someone chose in Clerk, moved to their fallback in the same
/// transaction. Operators see it logged and counted (`usernames_reassigned_total`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reassigned {
    pub user_id: String,
    /// Their username now.
    pub username: String,
}

/// Applies one validated Clerk event in one transaction.
#[instrument(skip_all, fields(event_type = event.event_type(), user_id = event.user_id().map(UserId::as_ref)))]
pub async fn provision(db: &Pool, event: &Event) -> Result<Provisioned, ProvisionError> {
    match event {
        Event::UserChanged(profile) => provision_user(db, profile).await,
        Event::UserDeleted(deletion) => in_transaction_span(delete_user(db, deletion)).await,
        Event::Unsupported { .. } => Ok(unsupported()),
    }
}

/// Runs a provisioning transaction in its span, marked with the error's code if it fails.
async fn in_transaction_span<T>(
    transaction: impl Future<Output = Result<T, ProvisionError>>,
) -> Result<T, ProvisionError> {
    let span = spans::transaction();
    let result = transaction.instrument(span.clone()).await;
    if let Err(err) = &result {
        spans::record_error(&span, err.as_str());
    }
    result
}

/// Runs one statement in its span, marked with the SQLSTATE if it fails.
async fn traced<T>(
    operation: &'static str,
    summary: &'static str,
    statement: impl Future<Output = Result<T, DbErr>>,
) -> Result<T, DbErr> {
    let span = spans::statement(operation, summary);
    let result = statement.instrument(span.clone()).await;
    if let Err(err) = &result {
        let code = sqlstate(err);
        spans::record_error(&span, code.as_deref().unwrap_or("database_error"));
    }
    result
}

async fn provision_user(db: &Pool, profile: &UserProfile) -> Result<Provisioned, ProvisionError> {
    let first = provision_user_once(db, profile).await;
    if !lost_derived_username_race(&first, profile) {
        return first;
    }
    provision_user_once(db, profile).await
}

/// A concurrent sign-up took the derived username between our check and our insert. A second
/// attempt sees it committed and takes the fallback, so this is not a conflict yet.
fn lost_derived_username_race<T>(
    result: &Result<T, ProvisionError>,
    profile: &UserProfile,
) -> bool {
    let lost = matches!(result, Err(ProvisionError::Conflict(rejected))
        if rejected.reason == FailureReason::UsernameConflict)
        && matches!(profile.username, UsernameChoice::Derived(_));
    if lost {
        debug!("derived username taken concurrently; trying once more");
    }
    lost
}

/// What an event of a type provisioning ignores comes to.
fn unsupported() -> Provisioned {
    Provisioned {
        outcome: Outcome::Unsupported,
        workspace_id: None,
        reassigned: None,
    }
}

/// One round trip: the `provision_user` function (see its migration) does the whole change, and
/// on its own the statement is exactly one transaction (an explicit one through PgBouncer: see
/// [`Pool`]).
async fn provision_user_once(
    db: &Pool,
    profile: &UserProfile,
) -> Result<Provisioned, ProvisionError> {
    let call = async {
        call_provision_user(db, profile)
            .await
            .map_err(ProvisionError::from_db)
    };
    in_transaction_span(call).await
}

async fn call_provision_user(
    db: &impl ConnectionTrait,
    profile: &UserProfile,
) -> Result<Provisioned, DbErr> {
    let values = with_arguments(profile, |arguments| arguments.values());
    let call = ProvisionUserRow::find_by_statement(statement(&sql::PROVISION_USER, values)).one(db);
    traced("SELECT", "SELECT provision_user", call)
        .await
        .and_then(|row| {
            row.ok_or_else(|| DbErr::RecordNotFound("provision_user returned no row".into()))
        })
        .and_then(Provisioned::try_from)
}

/// Calls `use_them` with `profile`'s `provision_user` arguments: the one place a profile becomes
/// them, for one event and for a batch.
fn with_arguments<R>(profile: &UserProfile, use_them: impl FnOnce(Arguments) -> R) -> R {
    let (username, fallback, derived) = username_parameters(profile);
    let digest = profile.content_digest();
    let workspace_name = WorkspaceName::default();
    use_them(Arguments {
        id: profile.id.as_ref(),
        email: profile.email.as_ref(),
        username,
        fallback: &fallback,
        derived,
        first_name: profile.first_name.as_ref().map(AsRef::as_ref),
        last_name: profile.last_name.as_ref().map(AsRef::as_ref),
        avatar_url: profile.avatar_url.as_ref().map(AsRef::as_ref),
        updated_at: profile.updated_at.as_datetime(),
        event_at: event_at(profile),
        digest: digest.as_ref(),
        workspace_name: workspace_name.as_ref(),
    })
}

/// The envelope time in the ordering key; the epoch when there is none (a user read from
/// Clerk's API), so any webhook with the same `updated_at` wins the tie.
fn event_at(profile: &UserProfile) -> DateTime<Utc> {
    profile
        .event_at
        .map_or(DateTime::UNIX_EPOCH, ClerkTime::as_datetime)
}

/// `provision_user`'s username, fallback username and whether the name is derived. A chosen
/// username has a fallback too: the stand-in when a newer holder has it (see [`Outcome`]).
fn username_parameters(profile: &UserProfile) -> (&str, String, bool) {
    match &profile.username {
        UsernameChoice::Chosen(name) => {
            let pair = DerivedUsername::derive(&profile.email, &profile.id);
            (name.as_ref(), pair.fallback.as_ref().to_owned(), false)
        }
        UsernameChoice::Derived(pair) => (
            pair.preferred.as_ref(),
            pair.fallback.as_ref().to_owned(),
            true,
        ),
    }
}

/// Commits when `result` is a success, rolls back otherwise; either way the error is classified.
async fn finish<T>(
    txn: DatabaseTransaction,
    result: Result<T, DbErr>,
) -> Result<T, ProvisionError> {
    match result {
        Ok(provisioned) => {
            traced("COMMIT", "COMMIT", txn.commit())
                .await
                .map_err(ProvisionError::from_db)?;
            Ok(provisioned)
        }
        Err(err) => {
            // The error that made us roll back is the one worth reporting.
            let _ = traced("ROLLBACK", "ROLLBACK", txn.rollback()).await;
            Err(ProvisionError::from_db(err))
        }
    }
}

/// Starts an explicit transaction, in its statement's span.
async fn begin(db: &Pool) -> Result<DatabaseTransaction, ProvisionError> {
    traced("BEGIN", "BEGIN", db.begin())
        .await
        .map_err(ProvisionError::from_db)
}

async fn lock_user(txn: &DatabaseTransaction, id: &UserId) -> Result<(), DbErr> {
    let lock = txn.execute_raw(statement(&sql::LOCK_USER, [id.as_ref().into()]));
    traced("SELECT", "SELECT pg_advisory_xact_lock", lock).await?;
    Ok(())
}

async fn delete_user(db: &Pool, deletion: &UserDeletion) -> Result<Provisioned, ProvisionError> {
    let txn = begin(db).await?;
    let result = delete_user_in(&txn, deletion, None).await;
    finish(txn, result).await
}

/// Deletes the user and leaves its tombstone, crediting the deletion to the reconcile run that
/// made it, if one did (so `worker reconcile undo` can lift exactly those).
async fn delete_user_in(
    txn: &DatabaseTransaction,
    deletion: &UserDeletion,
    reconcile_run: Option<i64>,
) -> Result<Provisioned, DbErr> {
    lock_user(txn, &deletion.id).await?;
    let tombstone = [
        deletion.id.as_ref().into(),
        deletion.deleted_at.as_datetime().into(),
        reconcile_run.into(),
    ];
    let record = txn.execute_raw(statement(sql::RECORD_TOMBSTONE, tombstone));
    traced("INSERT", "INSERT user_tombstones", record).await?;
    let delete = txn.query_one_raw(statement(sql::DELETE_USER, [deletion.id.as_ref().into()]));
    let deleted = traced("DELETE", "DELETE users", delete).await?.is_some();
    Ok(Provisioned {
        outcome: if deleted {
            Outcome::Deleted
        } else {
            Outcome::AlreadyDeleted
        },
        workspace_id: None,
        reassigned: None,
    })
}

/// A write allowed only while a check holds, made in the write's own transaction: reconcile's
/// lease fence (a statement that returns a row while the lease is still the run's).
pub struct Guard {
    pub check: Statement,
    /// The reconcile run the write belongs to, recorded on a deletion's tombstone.
    pub reconcile_run: i64,
}

/// Applies `event` like [`provision`], in one transaction that first runs the guard's check:
/// `Ok(None)` when the check returns no row, and then nothing was written.
pub async fn provision_guarded(
    db: &Pool,
    event: &Event,
    guard: &Guard,
) -> Result<Option<Provisioned>, ProvisionError> {
    let first = in_transaction_span(provision_guarded_once(db, event, guard)).await;
    match event {
        Event::UserChanged(profile) if lost_derived_username_race(&first, profile) => {
            in_transaction_span(provision_guarded_once(db, event, guard)).await
        }
        _ => first,
    }
}

async fn provision_guarded_once(
    db: &Pool,
    event: &Event,
    guard: &Guard,
) -> Result<Option<Provisioned>, ProvisionError> {
    let txn = begin(db).await?;
    let check = txn.query_one_raw(guard.check.clone());
    let allowed = traced("SELECT", "SELECT reconcile lease", check).await;
    let result = match allowed {
        Err(err) => Err(err),
        Ok(None) => {
            let _ = traced("ROLLBACK", "ROLLBACK", txn.rollback()).await;
            return Ok(None);
        }
        Ok(Some(_)) => match event {
            Event::UserChanged(profile) => call_provision_user(&txn, profile).await,
            Event::UserDeleted(deletion) => {
                delete_user_in(&txn, deletion, Some(guard.reconcile_run)).await
            }
            Event::Unsupported { .. } => Ok(unsupported()),
        },
    };
    finish(txn, result).await.map(Some)
}

/// Forgets deletions older than `before`; returns how many. Run periodically by the worker.
pub async fn purge_tombstones(
    db: &Pool,
    before: chrono::DateTime<chrono::Utc>,
) -> Result<u64, DbErr> {
    let result = db
        .execute_raw(statement(sql::PURGE_TOMBSTONES, [before.into()]))
        .await?;
    Ok(result.rows_affected())
}
