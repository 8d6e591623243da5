//! Remembers deletions, so an old `user.created` or `user.updated` that arrives after the
//! `user.deleted` (late, duplicated or replayed) cannot bring the user back.
//!
//! One row per deleted Clerk id with Clerk's deletion time; the worker purges rows older than its
//! retention (longer than Svix's retry window and any sane replay).

use sea_orm_migration::prelude::*;

const UP: &str = r#"
CREATE TABLE user_tombstones (
    user_id    TEXT PRIMARY KEY,
    deleted_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX idx_user_tombstones_deleted_at ON user_tombstones (deleted_at);
"#;

const DOWN: &str = r#"
DROP TABLE user_tombstones;
"#;

sql_migration!();
