//! One dead letter kept in the store: the event byte for byte, why it failed, and what operators
//! (or reconcile) did with it since; the console and `worker dlq` read it.

use sea_orm::entity::prelude::*;

/// One row of `dead_letters`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "dead_letters")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub svix_id: String,
    pub event_type: String,
    pub user_id: Option<String>,
    pub body: Vec<u8>,
    pub headers: Json,
    pub properties: Json,
    pub event_updated_at: Option<DateTimeWithTimeZone>,
    pub reason: String,
    pub detail: Option<String>,
    pub attempts: Option<i32>,
    pub first_failed_at: DateTimeWithTimeZone,
    pub last_failed_at: DateTimeWithTimeZone,
    /// `open`, `replayed`, `resolved` or `discarded`.
    pub status: String,
    pub replay_count: i32,
    pub arrived_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
