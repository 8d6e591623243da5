//! The self-healing reconcile's tables: `job_leases` (one row per job; the `reconcile` row elects
//! the one replica that runs it, with an epoch as fencing token), `reconcile_runs` (every run, for
//! `worker reconcile runs` and the schedule), and `user_tombstones.reconcile_run` (which run
//! deleted the user, for `worker reconcile undo`).

use sea_orm_migration::prelude::*;

const UP: &str = include_str!("sql/reconcile_runs.sql");
const DOWN: &str = include_str!("sql/reconcile_runs_down.sql");

sql_migration!();
