//! `provision_user` v3: the rules of v2 exactly, in fewer statements per call (a sign-up runs
//! three instead of six), since each statement inside the function was most of the database's
//! work per event. Same signature and answer, so it replaces v2 in place.
//!
//! Frozen like v1 and v2: a change is a new migration with a `provision_user_v4.sql`. Down
//! brings v2 back from its own frozen files (drop, then create).

use sea_orm_migration::prelude::*;

const UP: &str = include_str!("sql/provision_user_v3.sql");
const DOWN: &str = concat!(
    include_str!("sql/provision_user_v2_down.sql"),
    include_str!("sql/provision_user_v2.sql")
);

sql_migration!();
