//! `provision_user` v2: the rules of v1, with account churn handled: deletion is final, events
//! are totally ordered (`updated_at`, envelope `timestamp`, content digest), and a username chosen
//! in Clerk takes a derived one from its holder, who moves to their fallback (the answer names
//! them, so the worker can log and count it).
//!
//! Frozen like v1: a change is a new migration with a `provision_user_v3.sql`.

use sea_orm_migration::prelude::*;

const UP: &str = include_str!("sql/provision_user_v2.sql");
const DOWN: &str = include_str!("sql/provision_user_v2_down.sql");

sql_migration!();
