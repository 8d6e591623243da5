//! Remembers deletions, so an old `user.created` or `user.updated` that arrives after the
//! `user.deleted` (late, duplicated or replayed) cannot bring the user back.
//!
//! One row per deleted Clerk id with Clerk's deletion time; the worker purges rows older than its
//! retention (longer than Svix's retry window and any sane replay).

use sea_orm_migration::prelude::*;

const UP: &str = include_str!("sql/user_tombstones.sql");
const DOWN: &str = include_str!("sql/user_tombstones_down.sql");

sql_migration!();
