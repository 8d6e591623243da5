//! Account churn: records which usernames were derived (so a username chosen in Clerk can take
//! one back), completes the ordering key of an event (envelope `timestamp`, content digest), makes
//! deletion final, and drops `provision_user` v1 so the next migration can create v2.
//!
//! Existing rows count as chosen usernames (nothing is reassigned that might have been chosen)
//! and get the epoch and an empty digest, so any real event supersedes them.

use sea_orm_migration::prelude::*;

const UP: &str = include_str!("sql/account_churn.sql");
/// Down drops the columns and brings `provision_user` v1 back (v2 is gone by then).
const DOWN: &str = concat!(
    include_str!("sql/account_churn_down.sql"),
    include_str!("sql/provision_user_v1.sql")
);

sql_migration!();
