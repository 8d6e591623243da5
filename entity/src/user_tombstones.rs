//! A deleted user, remembered so that older events cannot resurrect them.

use sea_orm::entity::prelude::*;

/// One row of `user_tombstones`: the Clerk id, Clerk's deletion time, and the reconcile run that
/// deleted the user (none for a `user.deleted` webhook).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user_tombstones")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    pub deleted_at: DateTimeWithTimeZone,
    pub reconcile_run: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
