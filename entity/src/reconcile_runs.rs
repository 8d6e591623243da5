//! One reconcile run: who ran it, why, how it ended and what it found, for `worker reconcile runs`
//! and for the schedule (a run is due an interval after the last one started).

use sea_orm::entity::prelude::*;

/// One row of `reconcile_runs`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "reconcile_runs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `schedule` or `manual`.
    pub trigger: String,
    pub holder: String,
    /// The lease epoch the run held.
    pub epoch: i64,
    /// False for a dry run.
    pub applied: bool,
    pub started_at: DateTimeWithTimeZone,
    pub finished_at: Option<DateTimeWithTimeZone>,
    /// `running`, `succeeded`, `failed`, `lost_lease` or `abandoned`.
    pub result: String,
    /// Drift found per class.
    pub counts: Json,
    pub repaired: i64,
    pub deleted: i64,
    pub error: Option<String>,
    pub undone_at: Option<DateTimeWithTimeZone>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
