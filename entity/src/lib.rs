//! sea-orm entities for the provisioning schema; they mirror `migration/` column for column.

pub mod dead_letters;
pub mod reconcile_runs;
pub mod user_tombstones;
pub mod users;
pub mod workspaces;
