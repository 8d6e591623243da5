//! Remembers Clerk's own `updated_at` of the last event applied to each user.
//!
//! Clerk delivers at least once and only roughly in order; comparing against this column lets the
//! provisioning upsert apply an event only when it is newer than what the row already reflects.
//! Rows that predate the column get the epoch, so any real event supersedes them.

use sea_orm_migration::prelude::*;

const UP: &str = include_str!("sql/users_clerk_updated_at.sql");
const DOWN: &str = include_str!("sql/users_clerk_updated_at_down.sql");

sql_migration!();
