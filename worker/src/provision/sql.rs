//! The provisioning statements. Every one is a single round trip; parameters are documented
//! beside each.

/// Serialises every event of one user ($1) for the rest of the transaction. Ordering rules need
/// it: without it, an old update could pass the tombstone check just before a concurrent
/// deletion commits, and bring the user back. Different users never wait for each other (a hash
/// collision only makes two users queue).
pub const LOCK_USER: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

/// The user upsert. $1 id, $2 email, $3 username (chosen, or the preferred derived one), $4
/// fallback username (derived only), $5 whether the username is derived, $6 first name, $7 last
/// name, $8 avatar, $9 Clerk's `updated_at`.
///
/// - Nothing happens when a tombstone at least as new as the event exists: a deleted user does
///   not come back through an older event.
/// - A derived username never replaces a stored one (the same user keeps the same name), and a
///   new user takes the fallback when someone else holds the preferred one.
/// - The row changes only for a strictly newer Clerk `updated_at`: a duplicate changes nothing,
///   not even `updated_at`, and an older event is stale.
/// - `xmax = 0` is true for a freshly inserted row, false for an updated one; no row comes back
///   when nothing was written.
pub const UPSERT_USER: &str = r#"
INSERT INTO users AS u (id, email, username, first_name, last_name, avatar_url, clerk_updated_at)
SELECT
    $1, $2,
    CASE WHEN $5 AND EXISTS (SELECT 1 FROM users WHERE username = $3 AND id <> $1)
         THEN $4 ELSE $3 END,
    $6, $7, $8, $9
WHERE NOT EXISTS (SELECT 1 FROM user_tombstones WHERE user_id = $1 AND deleted_at >= $9)
ON CONFLICT (id) DO UPDATE SET
    email = EXCLUDED.email,
    username = CASE WHEN $5 THEN u.username ELSE EXCLUDED.username END,
    first_name = EXCLUDED.first_name,
    last_name = EXCLUDED.last_name,
    avatar_url = EXCLUDED.avatar_url,
    clerk_updated_at = EXCLUDED.clerk_updated_at,
    updated_at = now()
WHERE u.clerk_updated_at < EXCLUDED.clerk_updated_at
RETURNING (xmax = 0) AS inserted
"#;

/// Ensures the user's one workspace ($1 user id, $2 name) and returns it with whether it is new.
/// The second branch cannot see the first's insert (same statement), so exactly one row comes
/// back; the user lock keeps any concurrent insert out.
pub const ENSURE_WORKSPACE: &str = r#"
WITH created AS (
    INSERT INTO workspaces (user_id, name) VALUES ($1, $2)
    ON CONFLICT ON CONSTRAINT unique_user_workspace DO NOTHING
    RETURNING id
)
SELECT id, TRUE AS created FROM created
UNION ALL
SELECT id, FALSE AS created FROM workspaces WHERE user_id = $1
"#;

/// Whether the stored row ($1) reflects a Clerk event newer than $2; no row when the user is not
/// there (a tombstone stopped the upsert). Asked only when the upsert wrote nothing.
pub const STORED_IS_NEWER: &str = "SELECT clerk_updated_at > $2 AS newer FROM users WHERE id = $1";

/// Remembers the deletion of $1 at $2, keeping the newest deletion time.
pub const RECORD_TOMBSTONE: &str = r#"
INSERT INTO user_tombstones AS t (user_id, deleted_at) VALUES ($1, $2)
ON CONFLICT (user_id) DO UPDATE SET deleted_at = EXCLUDED.deleted_at
WHERE t.deleted_at < EXCLUDED.deleted_at
"#;

/// Deletes the user ($1) unless the row reflects a Clerk event newer than the deletion ($2).
pub const DELETE_USER: &str =
    "DELETE FROM users WHERE id = $1 AND clerk_updated_at <= $2 RETURNING id";

pub const USER_EXISTS: &str = "SELECT TRUE AS present FROM users WHERE id = $1";

/// Forgets deletions older than $1.
pub const PURGE_TOMBSTONES: &str = "DELETE FROM user_tombstones WHERE deleted_at < $1";
