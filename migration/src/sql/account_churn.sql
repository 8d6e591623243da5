-- Whether a stored username was derived (Clerk had none), and the name it moves to when a user
-- chooses it in Clerk: NULL for a username the user chose.
ALTER TABLE users ADD COLUMN username_fallback TEXT;

-- The rest of an event's ordering key, after `clerk_updated_at`: the envelope's `timestamp`, then
-- a digest of the event's content, so two events with one `updated_at` converge in any order.
ALTER TABLE users
    ADD COLUMN clerk_event_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch',
    ADD COLUMN clerk_data_digest BYTEA NOT NULL DEFAULT '\x';

-- Deletion becomes final. Under the old rule a newer event could bring a deleted user back; such
-- a user's tombstone was overruled, so it goes rather than freeze a live user.
DELETE FROM user_tombstones t USING users u WHERE t.user_id = u.id;

DROP FUNCTION provision_user(TEXT, TEXT, TEXT, TEXT, BOOLEAN, TEXT, TEXT, TEXT, TIMESTAMPTZ, TEXT);
