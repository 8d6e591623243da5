//! Reading one user back for operators (`worker user show`): the row and its workspace in one
//! JOIN through the entities, or the tombstone a deletion left.

use chrono::{DateTime, FixedOffset};
use entity::{user_tombstones, users, workspaces};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter};
use serde::Serialize;

use crate::db::Pool;

/// Which unique key an operator looks a user up by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserKey {
    /// The Clerk user id: the only key a deleted user is still found by.
    Id(String),
    Email(String),
    Username(String),
}

/// What the database knows about a user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Found {
    /// A provisioned user, with the workspace when it exists.
    Live(Box<UserView>),
    /// A deleted user: only the id and Clerk's deletion time remain.
    Deleted {
        id: String,
        deleted_at: DateTime<FixedOffset>,
    },
}

/// A user row and its workspace, as operators read them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub username: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub avatar_url: Option<String>,
    pub subscription_tier: String,
    pub storage_used: i64,
    pub storage_limit: i64,
    pub created_at: DateTime<FixedOffset>,
    pub updated_at: DateTime<FixedOffset>,
    /// Clerk's `updated_at` of the last event applied (the ordering guard).
    pub clerk_updated_at: DateTime<FixedOffset>,
    pub workspace: Option<WorkspaceView>,
}

/// The user's workspace, as operators read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkspaceView {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<FixedOffset>,
}

/// Finds the user by `key`: one JOIN for a live user; a tombstone lookup only for an id.
pub async fn find(db: &Pool, key: &UserKey) -> Result<Option<Found>, DbErr> {
    let filter = match key {
        UserKey::Id(id) => users::Column::Id.eq(id.as_str()),
        UserKey::Email(email) => users::Column::Email.eq(email.as_str()),
        UserKey::Username(name) => users::Column::Username.eq(name.as_str()),
    };
    let row = users::Entity::find()
        .filter(filter)
        .find_also_related(workspaces::Entity)
        .one(db)
        .await?;
    if let Some((user, workspace)) = row {
        return Ok(Some(Found::Live(Box::new(UserView::from_rows(
            user, workspace,
        )))));
    }
    match key {
        UserKey::Id(id) => find_tombstone(db, id).await,
        UserKey::Email(_) | UserKey::Username(_) => Ok(None),
    }
}

async fn find_tombstone(db: &Pool, id: &str) -> Result<Option<Found>, DbErr> {
    let tombstone = user_tombstones::Entity::find_by_id(id).one(db).await?;
    Ok(tombstone.map(|t| Found::Deleted {
        id: t.user_id,
        deleted_at: t.deleted_at,
    }))
}

impl UserView {
    fn from_rows(user: users::Model, workspace: Option<workspaces::Model>) -> Self {
        Self {
            id: user.id,
            email: user.email,
            username: user.username,
            first_name: user.first_name,
            last_name: user.last_name,
            avatar_url: user.avatar_url,
            subscription_tier: user.subscription_tier,
            storage_used: user.storage_used,
            storage_limit: user.storage_limit,
            created_at: user.created_at,
            updated_at: user.updated_at,
            clerk_updated_at: user.clerk_updated_at,
            workspace: workspace.map(|w| WorkspaceView {
                id: w.id,
                name: w.name,
                created_at: w.created_at,
            }),
        }
    }
}
