-- provision_user v3: the rules of v2 exactly, in fewer statements. Each statement a PL/pgSQL
-- function runs costs its own executor start-up, snapshot and plan-cache checks, which were most
-- of the database's work per event: a sign-up now takes three (the lock, one read, one insert of
-- the user with its workspace) where v2 took six.
CREATE OR REPLACE FUNCTION provision_user(
    p_id TEXT, p_email TEXT, p_username TEXT, p_fallback TEXT, p_derived BOOLEAN,
    p_first_name TEXT, p_last_name TEXT, p_avatar_url TEXT, p_updated_at TIMESTAMPTZ,
    p_event_at TIMESTAMPTZ, p_digest BYTEA, p_workspace_name TEXT,
    OUT user_write TEXT, OUT workspace_id TEXT, OUT workspace_created BOOLEAN,
    OUT reassigned_user_id TEXT, OUT reassigned_username TEXT, OUT superseded BOOLEAN)
LANGUAGE plpgsql AS $fn$
DECLARE
    tombstoned BOOLEAN;
    known BOOLEAN;
    stored_updated_at TIMESTAMPTZ;
    stored_event_at TIMESTAMPTZ;
    stored_digest BYTEA;
    email_held_later BOOLEAN;
    username_held_later BOOLEAN;
    new_email TEXT := p_email;
    new_username TEXT := p_username;
    new_fallback TEXT := CASE WHEN p_derived THEN p_fallback END;
BEGIN
    superseded := FALSE;
    -- One user's events apply one at a time; different users never wait for each other. Every
    -- writer of a user's row holds this lock, so what is read below stays true until commit.
    PERFORM pg_advisory_xact_lock(hashtextextended(p_id, 0));

    -- Everything the rules read, in one statement: the tombstone, the stored ordering key, and
    -- whether another user holds the email (or the chosen username) as of a LATER Clerk time.
    SELECT
        EXISTS (SELECT 1 FROM user_tombstones t WHERE t.user_id = p_id),
        u.id IS NOT NULL, u.clerk_updated_at, u.clerk_event_at, u.clerk_data_digest,
        EXISTS (SELECT 1 FROM users o WHERE o.email = p_email AND o.id <> p_id
                AND o.clerk_updated_at > p_updated_at),
        NOT p_derived AND EXISTS (
            SELECT 1 FROM users o WHERE o.username = p_username AND o.id <> p_id
              AND o.username_fallback IS NULL AND o.clerk_updated_at > p_updated_at)
    INTO tombstoned, known, stored_updated_at, stored_event_at, stored_digest,
        email_held_later, username_held_later
    FROM (SELECT) AS one LEFT JOIN users u ON u.id = p_id;

    -- Deletion is final: Clerk never reuses an id, so nothing brings a deleted user back.
    IF tombstoned THEN
        user_write := 'deleted';
        RETURN;
    END IF;

    -- Events are ordered by Clerk's `updated_at`, then the envelope `timestamp`, then the digest
    -- of their content: a total order, so any delivery order ends in the same row.
    IF known AND (stored_updated_at, stored_event_at, stored_digest)
                 >= (p_updated_at, p_event_at, p_digest) THEN
        user_write := CASE
            WHEN (stored_updated_at, stored_event_at, stored_digest)
               = (p_updated_at, p_event_at, p_digest) THEN 'unchanged'
            ELSE 'stale' END;
    ELSE
        -- A holder as of a later Clerk time means this user gave the value up in between (Clerk
        -- keeps both unique among live users): a newer event of this user exists and will
        -- replace it. Waiting for the holder could wait for ever (a swap through a value someone
        -- took later), so the row takes a stand-in now: `<id>@superseded.invalid`, or the
        -- user's derived fallback username.
        IF email_held_later THEN
            new_email := p_id || '@superseded.invalid';
            superseded := TRUE;
        END IF;
        IF username_held_later THEN
            new_username := p_fallback;
            new_fallback := p_fallback;
            superseded := TRUE;
        END IF;

        -- A username chosen in Clerk takes it from a user who only has it derived; that user
        -- moves to their fallback. Chosen against chosen (held as of an earlier time) stays a
        -- unique violation: the holder's newer event will free it.
        IF NOT p_derived AND new_username = p_username THEN
            UPDATE users o SET username = o.username_fallback, updated_at = now()
            WHERE o.username = p_username AND o.id <> p_id
              AND o.username_fallback IS NOT NULL AND o.username_fallback <> o.username
            RETURNING o.id, o.username INTO reassigned_user_id, reassigned_username;
        END IF;

        IF NOT known THEN
            -- The user and its workspace in one statement (a new user has none yet). A derived
            -- username yields to anyone already holding it.
            WITH inserted AS (
                INSERT INTO users (id, email, username, username_fallback, first_name,
                    last_name, avatar_url, clerk_updated_at, clerk_event_at, clerk_data_digest)
                VALUES (p_id, new_email,
                    CASE WHEN p_derived AND EXISTS (
                        SELECT 1 FROM users o WHERE o.username = p_username AND o.id <> p_id)
                         THEN p_fallback ELSE new_username END,
                    new_fallback, p_first_name, p_last_name, p_avatar_url, p_updated_at,
                    p_event_at, p_digest)
                RETURNING id)
            INSERT INTO workspaces (user_id, name)
            SELECT inserted.id, p_workspace_name FROM inserted
            RETURNING id INTO workspace_id;
            user_write := 'inserted';
            workspace_created := TRUE;
            RETURN;
        END IF;

        -- A derived username never replaces the stored one: it keeps it, flagged as derived.
        UPDATE users u SET
            email = new_email,
            username = CASE WHEN p_derived THEN u.username ELSE new_username END,
            username_fallback = new_fallback,
            first_name = p_first_name,
            last_name = p_last_name,
            avatar_url = p_avatar_url,
            clerk_updated_at = p_updated_at,
            clerk_event_at = p_event_at,
            clerk_data_digest = p_digest,
            updated_at = now()
        WHERE u.id = p_id;
        user_write := 'updated';
    END IF;

    -- Even a stale or duplicate event ensures the workspace, so a lost creation heals.
    INSERT INTO workspaces (user_id, name) VALUES (p_id, p_workspace_name)
    ON CONFLICT ON CONSTRAINT unique_user_workspace DO NOTHING
    RETURNING id INTO workspace_id;
    workspace_created := FOUND;
    IF NOT workspace_created THEN
        SELECT w.id INTO workspace_id FROM workspaces w WHERE w.user_id = p_id;
    END IF;
END
$fn$;
