//! `users` and `workspaces` exactly as the product's database design states them.
//!
//! Written as SQL rather than the schema builder because the CHECK constraints are regular
//! expressions and the design is specified in SQL: reviewing it against the spec is a diff.

use sea_orm_migration::prelude::*;

const UP: &str = include_str!("sql/users_and_workspaces.sql");
const DOWN: &str = include_str!("sql/users_and_workspaces_down.sql");

sql_migration!();
