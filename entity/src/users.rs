//! A Clerk user as the product stores it.

use sea_orm::entity::prelude::*;

/// One row of `users`; `id` is the Clerk user id.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(unique)]
    pub email: String,
    #[sea_orm(unique)]
    pub username: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub avatar_url: Option<String>,
    pub subscription_tier: String,
    pub storage_used: i64,
    pub storage_limit: i64,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
    /// Clerk's `updated_at` of the last event applied to this row (ordering guard).
    pub clerk_updated_at: DateTimeWithTimeZone,
    /// Set when the username was derived (Clerk had none): the name it moves to if a user
    /// chooses this one in Clerk. `None` for a username the user chose.
    pub username_fallback: Option<String>,
    /// The envelope `timestamp` of that event: the ordering tie-break after `clerk_updated_at`.
    pub clerk_event_at: DateTimeWithTimeZone,
    /// Digest of that event's content: the last tie-break, so every delivery order converges.
    pub clerk_data_digest: Vec<u8>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_one = "super::workspaces::Entity")]
    Workspace,
}

impl Related<super::workspaces::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Workspace.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
