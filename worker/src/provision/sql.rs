//! The provisioning statements. Every one is a single round trip; parameters are documented
//! beside each.

use std::sync::LazyLock;

use super::contract;

/// Serialises every event of one user ($1) for the rest of the transaction. Ordering rules need
/// it: without it, an old update could pass the tombstone check just before a concurrent
/// deletion commits, and bring the user back. Different users never wait for each other (a hash
/// collision only makes two users queue). `provision_user` takes the same lock.
pub static LOCK_USER: LazyLock<String> =
    LazyLock::new(|| format!("SELECT pg_advisory_xact_lock({})", contract::lock_key("$1")));

/// One user's `user.created`/`user.updated`, whole: the [`contract::ARGUMENTS`] as $1..$12
/// (`contract::Arguments::values`), answered by `provision_user`'s one row. The rules live with
/// the function, in the migration crate's `sql/provision_user_v3.sql`; the answer is read as an
/// `answer::ProvisionUserRow`.
pub static PROVISION_USER: LazyLock<String> = LazyLock::new(|| {
    let arguments: Vec<String> = contract::ARGUMENTS
        .iter()
        .zip(1..)
        .map(|((_, sql_type), n)| format!("${n}::{sql_type}"))
        .collect();
    format!(
        "SELECT p.* FROM {function}({arguments}) AS p",
        function = contract::FUNCTION,
        arguments = arguments.join(", "),
    )
});

/// Users' `user.created`/`user.updated`, whole: $1 a JSON array of [`contract::Arguments`]
/// (distinct users), each answered by one `provision_user` row after the user's id. Users go
/// through it in the order of their lock keys (the sorted subquery is not flattened), so two
/// batches never wait for each other's locks in a cycle. Each user goes through the function
/// [`PROVISION_USER`] calls, so the rules are the same by construction.
pub static PROVISION_USERS: LazyLock<String> = LazyLock::new(|| {
    let columns: Vec<String> = contract::ARGUMENTS
        .iter()
        .map(|(name, sql_type)| format!("{name} {sql_type}"))
        .collect();
    let arguments: Vec<String> = contract::ARGUMENTS
        .iter()
        .map(|(name, _)| format!("e.{name}"))
        .collect();
    format!(
        "SELECT e.id, p.* FROM (\
            SELECT * FROM jsonb_to_recordset($1::jsonb) AS r({columns}) ORDER BY {lock}\
         ) AS e CROSS JOIN LATERAL {function}({arguments}) AS p",
        columns = columns.join(", "),
        lock = contract::lock_key("r.id"),
        function = contract::FUNCTION,
        arguments = arguments.join(", "),
    )
});

/// Remembers the deletion of $1 at $2, keeping the newest deletion time and who made it ($3: the
/// reconcile run, or NULL for a `user.deleted` webhook). The tombstone is what makes deletion
/// final: `provision_user` writes nothing for an id that has one.
pub const RECORD_TOMBSTONE: &str = r#"
INSERT INTO user_tombstones AS t (user_id, deleted_at, reconcile_run) VALUES ($1, $2, $3)
ON CONFLICT (user_id) DO UPDATE SET deleted_at = EXCLUDED.deleted_at,
    reconcile_run = EXCLUDED.reconcile_run
WHERE t.deleted_at < EXCLUDED.deleted_at
"#;

/// Deletes the user ($1), whatever event the row reflects: Clerk never reuses a user id.
pub const DELETE_USER: &str = "DELETE FROM users WHERE id = $1 RETURNING id";

/// Forgets deletions older than $1.
pub const PURGE_TOMBSTONES: &str = "DELETE FROM user_tombstones WHERE deleted_at < $1";
