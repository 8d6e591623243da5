//! Remembers deletions, so an old `user.created` or `user.updated` that arrives after the
//! `user.deleted` (late, duplicated or replayed) cannot bring the user back.
//!
//! One row per deleted Clerk id with Clerk's deletion time; the worker purges rows older than its
//! retention (longer than Svix's retry window and any sane replay).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

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

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(UP).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(DOWN).await?;
        Ok(())
    }
}
