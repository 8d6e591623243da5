//! `provision_user(...)`: the whole single-event change of a user (per-user lock, tombstone-aware
//! upsert, the one workspace) as one server-side function, so that one event costs one round trip
//! and, called on its own, is exactly one transaction. The rules are those documented in the
//! worker's `provision` module; a batch calls this same function once per user, in one statement.
//!
//! Every statement of a PL/pgSQL function takes a fresh snapshot (READ COMMITTED), so the upsert
//! sees whatever a concurrent event of the same user committed before the lock was granted.
//!
//! The SQL is `sql/provision_user_v1.sql`, frozen: a change to the function is a new migration
//! with a `provision_user_v2.sql` that replaces it, since migrated databases never rerun this one.

use sea_orm_migration::prelude::*;

const UP: &str = include_str!("sql/provision_user_v1.sql");
const DOWN: &str = include_str!("sql/provision_user_v1_down.sql");

sql_migration!();
