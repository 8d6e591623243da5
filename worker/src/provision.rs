//! Provisioning: one event, one PostgreSQL transaction, and the database ends with exactly one
//! correct `users` row and one workspace for it, however often and in whatever order events come.
//!
//! Concurrency relies on PostgreSQL, not on us: `INSERT ... ON CONFLICT (id) DO UPDATE` locks the
//! user's row even when its `WHERE` skips the update, so concurrent copies of one user's events
//! run their workspace step one after another and each sees the others' committed work.

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, QueryResult,
    Statement, TransactionTrait, Value,
};
use serde::Serialize;
use tracing::{debug, instrument};

use crate::domain::{Event, UserDeletion, UserId, UserProfile, UsernameChoice, WorkspaceName};
use crate::error::{FailureReason, ProvisionError};

/// What applying an event did. Every variant is a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The user's workspace did not exist and now does.
    Created,
    /// Nothing to do: the user and workspace already reflect this event (a duplicate).
    AlreadyExisted,
    /// The user's row changed; the workspace was already there.
    Updated,
    /// The user and, by the cascade, the workspace were removed.
    Deleted,
    /// A deletion for a user that is not there: the goal is met.
    AlreadyDeleted,
    /// The stored row reflects a newer Clerk event; this older one changed nothing.
    Stale,
    /// Not a user event; nothing to provision.
    Unsupported,
}

impl Outcome {
    /// The stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::AlreadyExisted => "already_existed",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::AlreadyDeleted => "already_deleted",
            Self::Stale => "stale",
            Self::Unsupported => "unsupported",
        }
    }
}

/// The result of provisioning one event, for callers to log, count and print.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Provisioned {
    pub outcome: Outcome,
    pub workspace_id: Option<String>,
}

/// Applies one validated Clerk event in one transaction.
#[instrument(skip_all, fields(event_type = event.event_type(), user_id = event.user_id().map(UserId::as_ref)))]
pub async fn provision(
    db: &DatabaseConnection,
    event: &Event,
) -> Result<Provisioned, ProvisionError> {
    match event {
        Event::UserChanged(profile) => provision_user(db, profile).await,
        Event::UserDeleted(deletion) => delete_user(db, deletion).await,
        Event::Unsupported { .. } => Ok(Provisioned {
            outcome: Outcome::Unsupported,
            workspace_id: None,
        }),
    }
}

async fn provision_user(
    db: &DatabaseConnection,
    profile: &UserProfile,
) -> Result<Provisioned, ProvisionError> {
    match provision_user_once(db, profile).await {
        // A concurrent sign-up took the derived username between our check and our insert. A
        // second attempt sees it committed and takes the fallback, so this is not a conflict yet.
        Err(ProvisionError::Permanent(rejected))
            if rejected.reason == FailureReason::UsernameConflict
                && matches!(profile.username, UsernameChoice::Derived(_)) =>
        {
            debug!("derived username taken concurrently; trying once more");
            provision_user_once(db, profile).await
        }
        other => other,
    }
}

async fn provision_user_once(
    db: &DatabaseConnection,
    profile: &UserProfile,
) -> Result<Provisioned, ProvisionError> {
    let txn = db.begin().await.map_err(ProvisionError::from_db)?;
    let result = upsert_user_and_workspace(&txn, profile).await;
    finish(txn, result).await
}

/// Commits when `result` is a success, rolls back otherwise; either way the error is classified.
async fn finish(
    txn: DatabaseTransaction,
    result: Result<Provisioned, DbErr>,
) -> Result<Provisioned, ProvisionError> {
    match result {
        Ok(provisioned) => {
            txn.commit().await.map_err(ProvisionError::from_db)?;
            Ok(provisioned)
        }
        Err(err) => {
            // The error that made us roll back is the one worth reporting.
            let _ = txn.rollback().await;
            Err(ProvisionError::from_db(err))
        }
    }
}

/// The user upsert. Parameters: $1 id, $2 email, $3 username (chosen, or the preferred derived
/// one), $4 fallback username (derived only), $5 whether the username is derived, $6 first name,
/// $7 last name, $8 avatar, $9 Clerk's `updated_at`.
///
/// - A derived username never replaces a stored one (the same user keeps the same name), and a
///   new user takes the fallback when someone else holds the preferred one.
/// - The row changes only for a strictly newer Clerk `updated_at`: a duplicate changes nothing,
///   not even `updated_at`, and an older event is stale.
/// - `xmax = 0` is true for a freshly inserted row, false for an updated one; no row comes back
///   when the `WHERE` skipped the update.
const UPSERT_USER: &str = r#"
INSERT INTO users AS u (id, email, username, first_name, last_name, avatar_url, clerk_updated_at)
VALUES (
    $1, $2,
    CASE WHEN $5 AND EXISTS (SELECT 1 FROM users WHERE username = $3 AND id <> $1)
         THEN $4 ELSE $3 END,
    $6, $7, $8, $9
)
ON CONFLICT (id) DO UPDATE SET
    email = EXCLUDED.email,
    username = CASE WHEN $5 THEN u.username ELSE EXCLUDED.username END,
    first_name = EXCLUDED.first_name,
    last_name = EXCLUDED.last_name,
    avatar_url = EXCLUDED.avatar_url,
    clerk_updated_at = EXCLUDED.clerk_updated_at,
    updated_at = now()
WHERE u.clerk_updated_at < EXCLUDED.clerk_updated_at
RETURNING (xmax = 0) AS inserted
"#;

/// Ensures the user's one workspace ($1 user id, $2 name) and returns it with whether it is new.
/// The second branch cannot see the first's insert (same statement), so exactly one row comes
/// back; the user-row lock taken by the upsert keeps a concurrent insert out.
const ENSURE_WORKSPACE: &str = r#"
WITH created AS (
    INSERT INTO workspaces (user_id, name) VALUES ($1, $2)
    ON CONFLICT ON CONSTRAINT unique_user_workspace DO NOTHING
    RETURNING id
)
SELECT id, TRUE AS created FROM created
UNION ALL
SELECT id, FALSE AS created FROM workspaces WHERE user_id = $1
"#;

/// Whether the stored row reflects a newer Clerk event than $2 (only asked when the upsert
/// changed nothing, to tell a stale event from a duplicate).
const STORED_IS_NEWER: &str = "SELECT clerk_updated_at > $2 AS newer FROM users WHERE id = $1";

/// Deletes the user ($1) unless the row reflects a Clerk event newer than the deletion ($2).
const DELETE_USER: &str = "DELETE FROM users WHERE id = $1 AND clerk_updated_at <= $2 RETURNING id";

const USER_EXISTS: &str = "SELECT TRUE AS present FROM users WHERE id = $1";

/// What the upsert did to the user's row.
enum UserWrite {
    Inserted,
    Updated,
    Unchanged,
}

async fn upsert_user_and_workspace(
    txn: &DatabaseTransaction,
    profile: &UserProfile,
) -> Result<Provisioned, DbErr> {
    let user_write = upsert_user(txn, profile).await?;
    let (workspace_id, workspace_created) =
        ensure_workspace(txn, &profile.id, &WorkspaceName::default()).await?;
    let outcome = match user_write {
        _ if workspace_created => Outcome::Created,
        UserWrite::Updated => Outcome::Updated,
        UserWrite::Inserted => Outcome::AlreadyExisted,
        UserWrite::Unchanged if stored_is_newer(txn, profile).await? => Outcome::Stale,
        UserWrite::Unchanged => Outcome::AlreadyExisted,
    };
    Ok(Provisioned {
        outcome,
        workspace_id: Some(workspace_id),
    })
}

async fn upsert_user(txn: &DatabaseTransaction, profile: &UserProfile) -> Result<UserWrite, DbErr> {
    let (username, fallback, derived) = match &profile.username {
        UsernameChoice::Chosen(name) => (name.as_ref(), None, false),
        UsernameChoice::Derived(pair) => {
            (pair.preferred.as_ref(), Some(pair.fallback.as_ref()), true)
        }
    };
    let values: [Value; 9] = [
        profile.id.as_ref().into(),
        profile.email.as_ref().into(),
        username.into(),
        fallback.map(str::to_owned).into(),
        derived.into(),
        text(profile.first_name.as_ref()),
        text(profile.last_name.as_ref()),
        text(profile.avatar_url.as_ref()),
        profile.updated_at.as_datetime().into(),
    ];
    let row = txn.query_one_raw(statement(UPSERT_USER, values)).await?;
    Ok(match row {
        None => UserWrite::Unchanged,
        Some(row) if row.try_get::<bool>("", "inserted")? => UserWrite::Inserted,
        Some(_) => UserWrite::Updated,
    })
}

async fn ensure_workspace(
    txn: &DatabaseTransaction,
    user_id: &UserId,
    name: &WorkspaceName,
) -> Result<(String, bool), DbErr> {
    let values = [user_id.as_ref().into(), name.as_ref().into()];
    let row = txn
        .query_one_raw(statement(ENSURE_WORKSPACE, values))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("workspace of {user_id} vanished")))?;
    Ok((row.try_get("", "id")?, row.try_get("", "created")?))
}

async fn stored_is_newer(txn: &DatabaseTransaction, profile: &UserProfile) -> Result<bool, DbErr> {
    let values = [
        profile.id.as_ref().into(),
        profile.updated_at.as_datetime().into(),
    ];
    let row = txn
        .query_one_raw(statement(STORED_IS_NEWER, values))
        .await?;
    row.as_ref()
        .map_or(Ok(false), |row| row.try_get("", "newer"))
}

async fn delete_user(
    db: &DatabaseConnection,
    deletion: &UserDeletion,
) -> Result<Provisioned, ProvisionError> {
    let txn = db.begin().await.map_err(ProvisionError::from_db)?;
    let result = delete_user_in(&txn, deletion).await;
    finish(txn, result).await
}

async fn delete_user_in(
    txn: &DatabaseTransaction,
    deletion: &UserDeletion,
) -> Result<Provisioned, DbErr> {
    let values = [
        deletion.id.as_ref().into(),
        deletion.deleted_at.as_datetime().into(),
    ];
    let deleted = txn
        .query_one_raw(statement(DELETE_USER, values))
        .await?
        .is_some();
    let outcome = if deleted {
        Outcome::Deleted
    } else if present(txn, &deletion.id).await? {
        Outcome::Stale
    } else {
        Outcome::AlreadyDeleted
    };
    Ok(Provisioned {
        outcome,
        workspace_id: None,
    })
}

async fn present(txn: &DatabaseTransaction, id: &UserId) -> Result<bool, DbErr> {
    let row: Option<QueryResult> = txn
        .query_one_raw(statement(USER_EXISTS, [id.as_ref().into()]))
        .await?;
    Ok(row.is_some())
}

fn statement<const N: usize>(sql: &str, values: [Value; N]) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

fn text<T: AsRef<str>>(value: Option<&T>) -> Value {
    value.map(|v| v.as_ref().to_owned()).into()
}
