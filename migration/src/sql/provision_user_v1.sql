CREATE FUNCTION provision_user(
    p_id TEXT, p_email TEXT, p_username TEXT, p_fallback TEXT, p_derived BOOLEAN,
    p_first_name TEXT, p_last_name TEXT, p_avatar_url TEXT, p_updated_at TIMESTAMPTZ,
    p_workspace_name TEXT,
    OUT user_write TEXT, OUT workspace_id TEXT, OUT workspace_created BOOLEAN)
LANGUAGE plpgsql AS $fn$
DECLARE
    inserted BOOLEAN;
    newer BOOLEAN;
BEGIN
    -- One user's events apply one at a time; different users never wait for each other.
    PERFORM pg_advisory_xact_lock(hashtextextended(p_id, 0));

    -- Nothing when a tombstone at least as new exists; a derived username never replaces a
    -- stored one and yields to someone else's; the row changes only for a newer Clerk time.
    INSERT INTO users AS u (id, email, username, first_name, last_name, avatar_url, clerk_updated_at)
    SELECT p_id, p_email,
        CASE WHEN p_derived AND EXISTS (SELECT 1 FROM users o WHERE o.username = p_username AND o.id <> p_id)
             THEN p_fallback ELSE p_username END,
        p_first_name, p_last_name, p_avatar_url, p_updated_at
    WHERE NOT EXISTS (SELECT 1 FROM user_tombstones t WHERE t.user_id = p_id AND t.deleted_at >= p_updated_at)
    ON CONFLICT (id) DO UPDATE SET
        email = EXCLUDED.email,
        username = CASE WHEN p_derived THEN u.username ELSE EXCLUDED.username END,
        first_name = EXCLUDED.first_name,
        last_name = EXCLUDED.last_name,
        avatar_url = EXCLUDED.avatar_url,
        clerk_updated_at = EXCLUDED.clerk_updated_at,
        updated_at = now()
    WHERE u.clerk_updated_at < EXCLUDED.clerk_updated_at
    RETURNING (xmax = 0) INTO inserted;

    IF FOUND THEN
        user_write := CASE WHEN inserted THEN 'inserted' ELSE 'updated' END;
    ELSE
        SELECT u.clerk_updated_at > p_updated_at INTO newer FROM users u WHERE u.id = p_id;
        IF NOT FOUND THEN
            -- A tombstone stopped the upsert: the user stays deleted, and has no workspace.
            user_write := 'deleted';
            RETURN;
        END IF;
        user_write := CASE WHEN newer THEN 'stale' ELSE 'unchanged' END;
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
