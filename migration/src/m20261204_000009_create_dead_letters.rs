//! The dead-letter store: `dead_letters` (every letter moved from the dead-letter queue, with
//! its status), `dead_letter_actions` (who replayed or discarded what, with which filter) and
//! `dead_letter_history` (each letter's failures, replays, resolves and discards).

use sea_orm_migration::prelude::*;

const UP: &str = include_str!("sql/dead_letters.sql");
const DOWN: &str = include_str!("sql/dead_letters_down.sql");

sql_migration!();
