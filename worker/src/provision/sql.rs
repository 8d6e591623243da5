//! The provisioning statements. Every one is a single round trip; parameters are documented
//! beside each.

/// Serialises every event of one user ($1) for the rest of the transaction. Ordering rules need
/// it: without it, an old update could pass the tombstone check just before a concurrent
/// deletion commits, and bring the user back. Different users never wait for each other (a hash
/// collision only makes two users queue). `provision_user` takes the same lock.
pub const LOCK_USER: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

/// One user's `user.created`/`user.updated`, whole: $1 id, $2 email, $3 username (chosen, or the
/// preferred derived one), $4 fallback username, $5 whether the username is
/// derived, $6 first name, $7 last name, $8 avatar, $9 Clerk's `updated_at`, $10 the envelope
/// `timestamp`, $11 the content digest, $12 workspace name.
/// The rules live with the function, in the migration crate's `sql/provision_user_v3.sql`; the
/// answer is read as an `answer::ProvisionUserRow`.
pub const PROVISION_USER: &str = "SELECT user_write, workspace_id, workspace_created, reassigned_user_id, reassigned_username, superseded FROM provision_user($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// Remembers the deletion of $1 at $2, keeping the newest deletion time. The tombstone is what
/// makes deletion final: `provision_user` writes nothing for an id that has one.
pub const RECORD_TOMBSTONE: &str = r#"
INSERT INTO user_tombstones AS t (user_id, deleted_at) VALUES ($1, $2)
ON CONFLICT (user_id) DO UPDATE SET deleted_at = EXCLUDED.deleted_at
WHERE t.deleted_at < EXCLUDED.deleted_at
"#;

/// Deletes the user ($1), whatever event the row reflects: Clerk never reuses a user id.
pub const DELETE_USER: &str = "DELETE FROM users WHERE id = $1 RETURNING id";

/// Forgets deletions older than $1.
pub const PURGE_TOMBSTONES: &str = "DELETE FROM user_tombstones WHERE deleted_at < $1";
