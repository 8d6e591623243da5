//! Remembers Clerk's own `updated_at` of the last event applied to each user.
//!
//! Clerk delivers at least once and only roughly in order; comparing against this column lets the
//! provisioning upsert apply an event only when it is newer than what the row already reflects.
//! Rows that predate the column get the epoch, so any real event supersedes them.

use sea_orm_migration::prelude::*;

const UP: &str = r#"
ALTER TABLE users
    ADD COLUMN clerk_updated_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch';
"#;

const DOWN: &str = r#"
ALTER TABLE users DROP COLUMN clerk_updated_at;
"#;

sql_migration!();
